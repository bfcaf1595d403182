"""Stage: the project's own weight quantizer (`rvdeploy build --quantize int8|q4`), numpy + onnx only.

Both formats are what the hub's quantized exports contain, so one lowering path serves both:

int8  per-output-channel symmetric int8 weights, dynamic activations, as onnxruntime's `quantize_dynamic`
      writes them (onnx-community `model_int8.onnx` / `model_quantized.onnx`): every MatMul(X, W) on an fp32
      weight initializer W [K, N] becomes
          DynamicQuantizeLinear(X) -> Xq (uint8), Xs, Xzp
          MatMulInteger(Xq, Wq, Xzp) -> i32        Wq = round(W / ws) int8, ws[n] = max_k |W[k, n]| / 127
          Cast(to float) * (Xs * ws)
      One DynamicQuantizeLinear per distinct activation (q/k/v and gate/up share theirs).

q4    4-bit symmetric blocks of 32 along K like llama.cpp's Q4_0 (one f32 scale per block, q in 0..15 with
      an implicit zero point of 8, d = the block's signed max-abs value / -8), written as com.microsoft
      MatMulNBits (bits 4, block_size 32), the node onnxruntime's `MatMulNBitsQuantizer` and the hub's
      `model_q4.onnx` exports use. rvdeploy.q4 then rewrites it into standard ONNX for IREE.

Embedding Gathers, norms and everything that is not a weight matmul stay fp32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import RvdeployError

FORMATS = ("int8", "q4")
Q4_BLOCK = 32


def _weight_matmuls(model: onnx.ModelProto):
    """(index, MatMul node, W [K, N] as numpy, weight name) for every MatMul on an fp32 weight: an
    initializer, or a Transpose of one (a tied lm_head reading the embedding table, which stays fp32 for
    the Gather: the lm_head gets its own quantized copy)."""
    inits = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    for i, node in enumerate(model.graph.node):
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
            continue
        b, transposed = node.input[1], False
        p = producers.get(b)
        if p is not None and p.op_type == "Transpose" and p.input[0] in inits:
            perm = [a.ints for a in p.attribute if a.name == "perm"]
            if perm and list(perm[0]) != [1, 0]:
                continue
            b, transposed = p.input[0], True
        if b not in inits:
            continue
        w = inits[b]
        if len(w.dims) == 2 and w.data_type == TensorProto.FLOAT:
            arr = numpy_helper.to_array(w)
            yield i, node, (np.ascontiguousarray(arr.T) if transposed else arr), b + (".T" if transposed else "")


def quantize_int8_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """W [K, N] f32 -> (Wq [K, N] int8, scale [N] f32), symmetric per output channel."""
    amax = np.abs(w).max(axis=0)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
    return q, scale


def quantize_q4_weight(w: np.ndarray, block: int = Q4_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """W [K, N] f32 -> (packed [N, K/block, block/2] uint8, scales [N, K/block] f32), Q4_0 style:
    d = (the block's value of largest magnitude) / -8, q = clamp(round(w / d) + 8, 0, 15), low nibble first."""
    k, n = w.shape
    if k % block:
        raise RvdeployError(f"q4: K = {k} is not a multiple of the block size {block}")
    wb = w.T.reshape(n, k // block, block)
    idx = np.abs(wb).argmax(axis=2)
    vmax = np.take_along_axis(wb, idx[..., None], axis=2)[..., 0]
    d = (vmax / -8.0).astype(np.float32)
    inv = np.where(d != 0, 1.0 / np.where(d != 0, d, 1.0), 0.0)
    q = np.clip(np.rint(wb * inv[..., None]) + 8, 0, 15).astype(np.uint8)
    packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
    return packed, d


def dequantize_q4(packed: np.ndarray, scales: np.ndarray, k: int, zero_point: int = 8) -> np.ndarray:
    """Inverse of quantize_q4_weight: W [K, N] f32 (for checks)."""
    n, nb, half = packed.shape
    q = np.empty((n, nb, half * 2), np.int32)
    q[..., 0::2] = packed & 0x0F
    q[..., 1::2] = packed >> 4
    w = (q - zero_point).astype(np.float32) * scales.reshape(n, nb)[..., None]
    return w.reshape(n, nb * half * 2)[:, :k].T


def _replace_nodes(model: onnx.ModelProto, new_nodes: dict[int, list]) -> None:
    nodes = []
    for i, node in enumerate(model.graph.node):
        nodes.extend(new_nodes.get(i, [node]))
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _drop_dead_nodes(model: onnx.ModelProto) -> None:
    outputs = {o.name for o in model.graph.output}
    while True:
        used = {x for n in model.graph.node for x in n.input} | outputs
        keep = [n for n in model.graph.node if any(o in used for o in n.output)]
        if len(keep) == len(model.graph.node):
            return
        del model.graph.node[:]
        model.graph.node.extend(keep)


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {x for n in model.graph.node for x in n.input} | {o.name for o in model.graph.output}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def quantize_int8(model: onnx.ModelProto) -> int:
    new_nodes: dict[int, list] = {}
    dql: dict[str, tuple[str, str, str]] = {}  # activation -> (Xq, Xs, Xzp)
    count = 0
    for i, node, w, w_name in list(_weight_matmuls(model)):
        x, y = node.input[0], node.output[0]
        base = (node.name or y).replace("/", "_").strip("_")
        q, scale = quantize_int8_weight(w)
        wq, ws = f"{w_name}.int8", f"{w_name}.int8_scale"
        model.graph.initializer.extend([numpy_helper.from_array(q, wq), numpy_helper.from_array(scale, ws)])
        out = []
        if x not in dql:
            dql[x] = (f"{base}.xq", f"{base}.xs", f"{base}.xzp")
            out.append(helper.make_node("DynamicQuantizeLinear", [x], list(dql[x]), name=f"{base}.DynamicQuantizeLinear"))
        xq, xs, xzp = dql[x]
        out += [
            helper.make_node("MatMulInteger", [xq, wq, xzp], [f"{base}.acc"], name=f"{base}.MatMulInteger"),
            helper.make_node("Cast", [f"{base}.acc"], [f"{base}.accf"], to=TensorProto.FLOAT, name=f"{base}.Cast"),
            helper.make_node("Mul", [xs, ws], [f"{base}.scale"], name=f"{base}.ScaleMul"),
            helper.make_node("Mul", [f"{base}.accf", f"{base}.scale"], [y], name=f"{base}.OutMul"),
        ]
        new_nodes[i] = out
        count += 1
    _replace_nodes(model, new_nodes)
    return count


def quantize_q4(model: onnx.ModelProto, block: int = Q4_BLOCK) -> int:
    new_nodes: dict[int, list] = {}
    count = 0
    for i, node, w, w_name in list(_weight_matmuls(model)):
        k, n = w.shape
        if k % block:
            continue  # stays fp32
        packed, d = quantize_q4_weight(w, block)
        bq, bs = f"{w_name}.q4", f"{w_name}.q4_scales"
        model.graph.initializer.extend([numpy_helper.from_array(packed, bq),
                                        numpy_helper.from_array(d.reshape(-1), bs)])
        base = (node.name or node.output[0]).replace("/", "_").strip("_")
        new_nodes[i] = [helper.make_node(
            "MatMulNBits", [node.input[0], bq, bs], [node.output[0]], name=f"{base}.MatMulNBits",
            domain="com.microsoft", K=k, N=n, bits=4, block_size=block)]
        count += 1
    _replace_nodes(model, new_nodes)
    if count and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return count


def quantize_file(src: Path, dst: Path, fmt: str) -> int:
    """Quantize src (an fp32 ONNX, external data allowed) into dst; returns the matmuls quantized."""
    if fmt not in FORMATS:
        raise RvdeployError(f"unknown quantization {fmt!r}", hint="known: " + ", ".join(FORMATS))
    model = onnx.load(str(src))
    count = quantize_int8(model) if fmt == "int8" else quantize_q4(model)
    if count == 0:
        raise RvdeployError(f"--quantize {fmt}: {src.name} has no fp32 MatMul on a weight to quantize",
                            hint="quantize an fp32 export (fp16 and already-quantized graphs are not supported)")
    _drop_dead_nodes(model)
    _drop_unused_initializers(model)
    dst.parent.mkdir(parents=True, exist_ok=True)
    # protobuf cannot serialize 2 GB: (ByteSize overflows there too, so count the initializer bytes)
    large = sum(len(i.raw_data) or i.ByteSize() for i in model.graph.initializer) > 1_500_000_000
    onnx.save(model, str(dst), save_as_external_data=large, location=dst.name + ".data" if large else None)
    return count
