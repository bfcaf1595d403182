"""Stage: write the bundle's parameter archive, with the mmt4d weights pre-packed.

Reads the importer's archive through a memory map (IREE's ParameterIndex) and writes one tensor at a
time, so a 5 GB model costs its packed copy in memory, not two copies.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import iree.runtime as rt

from .errors import RvdeployError
from .mmt4d import LoweredModule, PackedWeight

_NUMPY = {"f32": np.float32, "f16": np.float16, "bf16": np.uint16, "i8": np.int8, "i32": np.int32}


def pack_weight(w: np.ndarray, pw: PackedWeight) -> np.ndarray:
    """KxN row-major -> N1xK1xN0xK0 (N zero-padded to whole tiles): the layout linalg.mmt4d's RHS reads."""
    n1, k1, n0, k0 = pw.packed_shape
    if n1 * n0 != pw.n:
        padded = np.zeros((pw.k, n1 * n0), w.dtype)
        padded[:, : pw.n] = w
        w = padded
    return np.ascontiguousarray(w.reshape(k1, k0, n1, n0).transpose(2, 0, 3, 1))


def write_params(source: Path, lowered: LoweredModule | None, out: Path) -> Path:
    """The archive a module reads: the source as is (baseline), or packed + untouched weights (mmt4d)."""
    if lowered is None:
        return source
    index = rt.ParameterIndex()
    index.load(str(source))
    entries = {key: entry for key, entry in index.items()}
    result = rt.ParameterIndex()
    keep = []  # buffers must stay alive until the archive is written
    for pw in lowered.packed:
        if pw.source_key not in entries:
            raise RvdeployError(f"parameter {pw.source_key!r} missing from {source.name}")
        raw = rt.parameter_index_entry_as_numpy_flat_ndarray(entries[pw.source_key])
        w = raw.view(_NUMPY[pw.elt])
        w = w.reshape(pw.n, pw.k).T if pw.transposed else w.reshape(pw.k, pw.n)
        packed = pack_weight(w, pw)
        keep.append(packed)
        result.add_buffer(pw.key, packed)
    for key in lowered.plain_keys:
        raw = rt.parameter_index_entry_as_numpy_flat_ndarray(entries[key])
        keep.append(raw)
        result.add_buffer(key, raw)
    result.create_archive_file(str(out))
    return out
