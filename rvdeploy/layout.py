"""The mmt4d data layout: which tile a target's kernels use (tiles.toml), the shape a weight takes once packed
into those tiles, and the packing itself. Change a tile here (or in tiles.toml); rvdeploy.mmt4d (the lowering),
rvdeploy.mmt4d_helpers (the MLIR it calls), rvdeploy.params (the packed archive) and `inspect`'s padding
figures all read it from here.

Layout: a KxN weight is stored as N1 x K1 x N0 x K0 tiles (N1 = ceil(N / N0), K1 = K / K0; N zero-padded to
whole tiles), the right-hand side linalg.mmt4d reads. Activations are packed to M0 x K0 tiles at run time
(decode: M0 = 1).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .targets import Target

TILES = Path(__file__).with_name("tiles.toml")


@dataclass(frozen=True)
class Tile:
    m0: int  # prefill rows per tile (decode always uses 1)
    n0: int
    k0: int


def tile_for(target: Target, elt: str, library: str = "upstream") -> Tile | None:
    """The tile for `elt` on `target` with the given microkernel library (rvdeploy.ukernels): tiles.toml's
    [ARCH.project.ELT] for the project's kernels when it has one, else [ARCH.ELT] (IREE's)."""
    table = tomllib.loads(TILES.read_text())
    arch = table.get("host" if target.is_host else target.arch, {})
    entry = arch.get(library, {}).get(elt) if library != "upstream" else None
    entry = entry or arch.get(elt)
    if entry is None or (not target.is_host and not target.has_vector):
        return None
    n0 = entry["n0"] if "n0" in entry else target.vlen // entry["n0_vlen_divisor"]
    return Tile(m0=entry["prefill_m0"], n0=n0, k0=entry["k0"])


def tiles_of(size: int, tile: int) -> int:
    """Whole tiles covering `size` (the last one padded)."""
    return -(-size // tile)


def padded(size: int, tile: int) -> int:
    """`size` rounded up to whole tiles."""
    return tiles_of(size, tile) * tile


def packed_shape(k: int, n: int, n0: int, k0: int) -> tuple[int, int, int, int]:
    """N1 x K1 x N0 x K0: a KxN weight in N0 x K0 tiles (K is a multiple of K0; N padded up to N0)."""
    return (tiles_of(n, n0), k // k0, n0, k0)


def tensor_type(shape: tuple[int, ...], elt: str) -> str:
    """The MLIR tensor type of a packed weight."""
    return "tensor<" + "".join(f"{d}x" for d in shape) + f"{elt}>"


@dataclass(frozen=True)
class PackedWeight:
    key: str  # parameter key of the packed tensor
    source_key: str  # parameter key of the KxN original
    k: int
    n: int
    elt: str
    n0: int
    k0: int
    transposed: bool = False  # the source is stored NxK (a tied embedding used through Transpose)
    colsum_key: str | None = None  # int8 weights: parameter key of the i32 column sums (zero-point correction)
    shape: tuple[int, ...] | None = None  # stored as is in this shape (4-bit blocks: N x G x block), not tiled
    kind: str = ""  # "q4w" / "q4s": 4-bit weights / their f16 scales in the RVV kernels' panels (pack_q4_panels)
    data: bytes | None = None  # the source's bytes when it is not a parameter (scales the importer left inline)

    @property
    def packed_shape(self) -> tuple[int, ...]:
        if self.shape is not None:
            return self.shape
        return packed_shape(self.k, self.n, self.n0, self.k0)

    @property
    def tensor_type(self) -> str:
        return tensor_type(self.packed_shape, self.elt)


def pack_weight(w: np.ndarray, pw: PackedWeight) -> np.ndarray:
    """KxN row-major -> N1xK1xN0xK0 (N zero-padded to whole tiles): the layout linalg.mmt4d's RHS reads."""
    n1, k1, n0, k0 = pw.packed_shape
    if n1 * n0 != pw.n:
        wide = np.zeros((pw.k, n1 * n0), w.dtype)
        wide[:, : pw.n] = w
        w = wide
    return np.ascontiguousarray(w.reshape(k1, k0, n1, n0).transpose(2, 0, 3, 1))


def pack_q4(raw: np.ndarray) -> np.ndarray:
    """4-bit blocks are stored as they are, each nibble q in 0..15 turned into the signed q - 8 the
    contraction reads (rvdeploy.mmt4d_helpers.q4_matmul_fn): flipping the top bit of both nibbles."""
    return raw ^ np.uint8(0x88)


def pack_q4_panels(raw: np.ndarray, pw: PackedWeight) -> np.ndarray:
    """MatMulNBits bytes [N, G, 16] (nibbles q in 0..15, consecutive K values low first) -> the RVV 4-bit kernel's
    panels (ukernels/rvd_q4.c): [N1, G, 16, N0] bytes with byte (r, c) = q[c][32g + r] | q[c][32g + 16 + r] << 4,
    N zero-padded to whole panels."""
    n1, g, _, n0 = pw.packed_shape
    b = raw.reshape(pw.n, g, 16)
    q = np.empty((n1 * n0, g, 32), np.uint8)
    q[pw.n :] = 0
    q[: pw.n, :, 0::2] = b & 0x0F
    q[: pw.n, :, 1::2] = b >> 4
    panels = q[:, :, :16] | (q[:, :, 16:] << 4)  # [N1 N0, G, 16]
    return np.ascontiguousarray(panels.reshape(n1, n0, g, 16).transpose(0, 2, 3, 1))


def pack_q4_scales(scales: np.ndarray, pw: PackedWeight) -> np.ndarray:
    """Block scales [N, G] (f32 or f16) -> f16 [N1, G, N0], N zero-padded to whole panels."""
    n1, g, n0 = pw.packed_shape
    s = np.zeros((n1 * n0, g), np.float16)
    s[: pw.n] = scales.reshape(pw.n, g).astype(np.float16)
    return np.ascontiguousarray(s.reshape(n1, n0, g).transpose(0, 2, 1))


def column_sums(w: np.ndarray) -> np.ndarray:
    """int8 KxN weights: the i32 column sums the activation zero-point correction multiplies."""
    return w.astype(np.int32).sum(axis=0, dtype=np.int32)
