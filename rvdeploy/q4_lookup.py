"""A 4-bit embedding lookup in standard ONNX: the table stays 4-bit, only the looked-up rows are dequantized.

The table is blocks of `block` values along the row, two 4-bit values a byte, one scale per block (and an
optional zero point per block, else 8). Stored as uint8 [V, G, 1, block/2] when a byte holds values j and
j + block/2 of its block (llama.cpp's Q4_0 order, what `--quantize q4` writes), or [V, G, block/2, 1] when it
holds values 2j and 2j+1 (MatMulNBits / GatherBlockQuantized order); scales (and zero points) [V, G, 1, 1].
The lookup, all elementwise after the Gather so that IREE fuses it into the gather's dispatch:

    b = Gather(table, ids)                                  [B, S, G, 1, h] or [B, S, G, h, 1]
    q = BitShift(BitShift(b, [[4], [0]] or [[4, 0]], LEFT), 4, RIGHT)     both nibbles, broadcast: no Concat
    y = Reshape((Cast(q) - z) * Cast(Gather(scales, ids)), [0, 0, V_cols])
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

# A table tied to a 4-bit lm_head is the lm_head's own quantization, stored under the MatMulNBits weight's name
# plus these suffixes: the RVV 4-bit kernels' panels (rvdeploy.q4kernel) hold the same bytes in the same order,
# so rvdeploy.mmt4d reads the lookup from them and the table is not stored a second time.
TIED_TABLE, TIED_SCALES = ".table", ".table_scales"


def q0_table_from_matmulnbits(b: np.ndarray, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MatMulNBits B [N, G, 16] (byte j = values 2j | 2j+1 << 4) and scales [N * G] -> the lookup's table
    [N, G, 1, 16] in Q0 order and f16 scales [N, G, 1, 1] (the values are f16's: rvdeploy.quantize rounds them)."""
    n, g, _ = b.shape
    q = np.empty((n, g, 32), np.uint8)
    q[:, :, 0::2], q[:, :, 1::2] = b & 0x0F, b >> 4
    return pack_q0_order(q), scales.reshape(n, g, 1, 1).astype(np.float16)


def pack_q0_order(q: np.ndarray) -> np.ndarray:
    """q uint8 [V, G, block] in 0..15 -> [V, G, 1, block/2], byte j = q[j] | q[j + block/2] << 4."""
    h = q.shape[-1] // 2
    return (q[..., :h] | (q[..., h:] << 4)).astype(np.uint8)[:, :, None, :]


def lookup_nodes(
    base: str,
    table: str,
    scales: str,
    ids: str,
    out: str,
    cols: int,
    q0_order: bool,
    zero: str | None = None,
    out_type: int = TensorProto.FLOAT,
) -> tuple[list, list]:
    """(nodes, constant initializers) computing out = the rows `ids` of the dequantized table, [B, S, cols]."""
    v = lambda name: f"{base}.{name}"  # noqa: E731
    left = np.array([[4], [0]] if q0_order else [[4, 0]], np.uint8)
    inits = [
        numpy_helper.from_array(left, v("left")),
        numpy_helper.from_array(np.array(4, np.uint8), v("four")),
        numpy_helper.from_array(np.array([0, 0, cols], np.int64), v("shape")),
    ]
    nodes = [
        helper.make_node("Gather", [table, ids], [v("b")], axis=0, name=v("GatherQ4")),
        helper.make_node("BitShift", [v("b"), v("left")], [v("shl")], direction="LEFT", name=v("shl")),
        helper.make_node("BitShift", [v("shl"), v("four")], [v("q")], direction="RIGHT", name=v("q")),
        helper.make_node("Cast", [v("q")], [v("qf")], to=out_type, name=v("qf")),
        helper.make_node("Gather", [scales, ids], [v("s")], axis=0, name=v("GatherScale")),
        helper.make_node("Cast", [v("s")], [v("sf")], to=out_type, name=v("sf")),
    ]
    if zero is None:
        dtype = np.float16 if out_type == TensorProto.FLOAT16 else np.float32
        inits.append(numpy_helper.from_array(np.array(8, dtype), v("zero")))
    else:
        nodes += [
            helper.make_node("Gather", [zero, ids], [v("z")], axis=0, name=v("GatherZero")),
            helper.make_node("Cast", [v("z")], [v("zf")], to=out_type, name=v("zf")),
        ]
    nodes += [
        helper.make_node("Sub", [v("qf"), v("zero") if zero is None else v("zf")], [v("qz")], name=v("qz")),
        helper.make_node("Mul", [v("qz"), v("sf")], [v("w")], name=v("w")),
        helper.make_node("Reshape", [v("w"), v("shape")], [out], name=v("rows")),
    ]
    return nodes, inits
