"""Stage: write the bundle's parameter archive, with the mmt4d weights pre-packed (in rvdeploy.layout's tiles).

Streams: each weight is read from the importer's archive with pread, packed, and appended to a scratch
file; the new archive is then assembled by IREE from file ranges (the scratch file and the untouched
entries of the source archive). Peak memory is about two copies of the largest weight, not of the model.
"""

from __future__ import annotations

import os
from pathlib import Path

import iree.runtime as rt
import numpy as np

from .errors import RvdeployError
from .layout import column_sums, pack_q4, pack_q4_panels, pack_q4_scales, pack_weight
from .mmt4d import LoweredModule

_NUMPY = {"f32": np.float32, "f16": np.float16, "bf16": np.uint16, "i8": np.int8, "i32": np.int32}
_ALIGN = 64


def _entries(source: Path) -> dict[str, tuple[int, int]]:
    """key -> (offset in the source file, length) for every stored (non-splat) entry."""
    index = rt.ParameterIndex()
    index.load(str(source))
    out = {}
    for key, entry in index.items():
        if not entry.is_file:
            raise RvdeployError(f"{source.name}: parameter {key!r} is not stored in the file (splat?)")
        out[key] = (entry.file_storage[1], entry.length)
    return out


def _read(fd: int, offset: int, length: int) -> bytes:
    data = bytearray()
    while len(data) < length:  # pread may return less than asked for big reads
        chunk = os.pread(fd, min(length - len(data), 1 << 30), offset + len(data))
        if not chunk:
            raise RvdeployError(f"parameter archive truncated at offset {offset + len(data)}")
        data += chunk
    return bytes(data)


def is_transposed_copy(source: Path, w_key: str, e_key: str, k: int, n: int, elt: str = "f32") -> bool:
    """Whether weight w (KxN) holds exactly table e (NxK) transposed; compared a block of rows at a time."""
    entries = _entries(source)
    if w_key not in entries or e_key not in entries or entries[w_key][1] != entries[e_key][1]:
        return False
    dtype = np.dtype(_NUMPY[elt])
    fd = os.open(source, os.O_RDONLY)
    try:
        w = np.frombuffer(_read(fd, *entries[w_key]), dtype=dtype).reshape(k, n)
        rows = max(1, (64 << 20) // (k * dtype.itemsize))
        e_off = entries[e_key][0]
        for r in range(0, n, rows):
            m = min(rows, n - r)
            block = np.frombuffer(
                _read(fd, e_off + r * k * dtype.itemsize, m * k * dtype.itemsize), dtype=dtype
            ).reshape(m, k)
            if not np.array_equal(block, w[:, r : r + m].T):
                return False
        return True
    finally:
        os.close(fd)


def write_params(source: Path, lowered: LoweredModule | None, out: Path) -> Path:
    """The archive a module reads: the source as is (baseline), or packed + untouched weights (mmt4d)."""
    if lowered is None:
        return source
    entries = _entries(source)
    scratch = out.with_name(out.name + ".packed-scratch")
    src_fd = os.open(source, os.O_RDONLY)
    try:
        result = rt.ParameterIndex()
        placed: list[tuple[str, int, int]] = []
        with open(scratch, "wb") as f:
            for pw in lowered.packed:
                if pw.data is None and pw.source_key not in entries:
                    raise RvdeployError(f"parameter {pw.source_key!r} missing from {source.name}")
                offset, length = entries[pw.source_key] if pw.data is None else (0, len(pw.data))
                if pw.kind or pw.elt == "i4":  # 4-bit blocks (not tiled): for the RVV kernels, or as they are
                    data = _read(src_fd, offset, length) if pw.data is None else pw.data
                    if pw.kind == "q4w":
                        raw = pack_q4_panels(np.frombuffer(data, dtype=np.uint8), pw)
                    elif pw.kind == "q4s":
                        raw = pack_q4_scales(
                            np.frombuffer(
                                data, dtype=np.float32 if length == 4 * pw.n * (pw.k // pw.k0) else np.float16
                            ),
                            pw,
                        )
                    else:
                        raw = pack_q4(np.frombuffer(data, dtype=np.uint8))
                    f.seek(-f.tell() % _ALIGN, os.SEEK_CUR)
                    placed.append((pw.key, f.tell(), raw.nbytes))
                    f.write(raw.tobytes())
                    continue
                w = np.frombuffer(_read(src_fd, offset, length), dtype=_NUMPY[pw.elt])
                w = w.reshape(pw.n, pw.k).T if pw.transposed else w.reshape(pw.k, pw.n)
                packed = pack_weight(w, pw)
                f.seek(-f.tell() % _ALIGN, os.SEEK_CUR)
                placed.append((pw.key, f.tell(), packed.nbytes))
                f.write(packed.tobytes())
                if pw.colsum_key:  # int8: column sums for the activation zero-point correction
                    colsum = column_sums(w)
                    f.seek(-f.tell() % _ALIGN, os.SEEK_CUR)
                    placed.append((pw.colsum_key, f.tell(), colsum.nbytes))
                    f.write(colsum.tobytes())
                del w, packed
        scratch_fd = os.open(scratch, os.O_RDONLY)
        try:
            scratch_handle = rt.FileHandle.wrap_fd(scratch_fd)
            source_handle = rt.FileHandle.wrap_fd(src_fd)
            for key, offset, length in placed:
                result.add_from_file_handle(key, scratch_handle, length, offset)
            for key in lowered.plain_keys:
                offset, length = entries[key]
                result.add_from_file_handle(key, source_handle, length, offset)
            result.create_archive_file(str(out))
        finally:
            os.close(scratch_fd)
    finally:
        os.close(src_fd)
        scratch.unlink(missing_ok=True)
    return out
