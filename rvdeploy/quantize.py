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

int8 also stores the embedding tables as int8 rows with a scale per row (dequantized on lookup), shared with a
tied lm_head. Norms and everything else that is not a weight matmul stay fp32.
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
    d = (the block's value of largest magnitude) / -8 rounded to f16 (Q4_0 stores f16 scales, and so do the RVV
    4-bit kernels: the f32 scales MatMulNBits holds are then exactly theirs), q = clamp(round(w / d) + 8, 0, 15),
    low nibble first."""
    k, n = w.shape
    if k % block:
        raise RvdeployError(f"q4: K = {k} is not a multiple of the block size {block}")
    wb = w.T.reshape(n, k // block, block)
    idx = np.abs(wb).argmax(axis=2)
    vmax = np.take_along_axis(wb, idx[..., None], axis=2)[..., 0]
    d = (vmax / -8.0).astype(np.float16).astype(np.float32)
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


def _embedding_tables(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Embedding tables: fp32 2-D initializers [vocab, hidden] read by a Gather on axis 0 (token ids)."""
    inits = {i.name: i for i in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type != "Gather" or node.domain not in ("", "ai.onnx") or node.input[0] not in inits:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        t = inits[node.input[0]]
        if axis == 0 and len(t.dims) == 2 and t.data_type == TensorProto.FLOAT and node.input[0] not in out:
            out[node.input[0]] = numpy_helper.to_array(t)
    return out


def quantize_int8(model: onnx.ModelProto) -> int:
    """Weight MatMuls as described above. Embedding tables too: int8 rows with one scale per row, dequantized
    on lookup (Gather -> Cast -> Mul by the row's scale), so no fp32 table stays in the model. A tied lm_head
    (a MatMul reading the table through a Transpose, or a stored transposed copy of it, as optimum exports
    without `accelerate` write it) reads the same int8 table through a Transpose: its per-output-channel
    scales are the table's per-row scales, so the table is stored once."""
    new_nodes: dict[int, list] = {}
    dql: dict[str, tuple[str, str, str]] = {}  # activation -> (Xq, Xs, Xzp)
    tables = _embedding_tables(model)
    table_q: dict[str, tuple[str, str]] = {}  # table -> (int8 table [vocab, hidden], row scales [vocab])

    def quantized_table(name: str) -> tuple[str, str]:
        if name not in table_q:
            q, scale = quantize_int8_weight(tables[name].T)  # per vocab row = per lm_head output channel
            table_q[name] = (f"{name}.int8", f"{name}.int8_scale")
            model.graph.initializer.extend(
                [
                    numpy_helper.from_array(np.ascontiguousarray(q.T), table_q[name][0]),
                    numpy_helper.from_array(scale, table_q[name][1]),
                ]
            )
        return table_q[name]

    count = 0
    for i, node, w, w_name in list(_weight_matmuls(model)):
        x, y = node.input[0], node.output[0]
        base = (node.name or y).replace("/", "_").strip("_")
        tied = w_name[:-2] if w_name.endswith(".T") and w_name[:-2] in tables else None
        if tied is None:  # a stored copy of a table, transposed
            tied = next((t for t, a in tables.items() if a.shape == w.shape[::-1] and np.array_equal(a.T, w)), None)
        out = []
        if tied is not None:
            tq, ws = quantized_table(tied)
            wq = f"{tq}.T"
            if not any(n.output[0] == wq for nodes in new_nodes.values() for n in nodes):
                out.append(helper.make_node("Transpose", [tq], [wq], perm=[1, 0], name=f"{base}.TableTranspose"))
        else:
            q, scale = quantize_int8_weight(w)
            wq, ws = f"{w_name}.int8", f"{w_name}.int8_scale"
            model.graph.initializer.extend([numpy_helper.from_array(q, wq), numpy_helper.from_array(scale, ws)])
        if x not in dql:
            dql[x] = (f"{base}.xq", f"{base}.xs", f"{base}.xzp")
            out.append(
                helper.make_node("DynamicQuantizeLinear", [x], list(dql[x]), name=f"{base}.DynamicQuantizeLinear")
            )
        xq, xs, xzp = dql[x]
        out += [
            helper.make_node("MatMulInteger", [xq, wq, xzp], [f"{base}.acc"], name=f"{base}.MatMulInteger"),
            helper.make_node("Cast", [f"{base}.acc"], [f"{base}.accf"], to=TensorProto.FLOAT, name=f"{base}.Cast"),
            helper.make_node("Mul", [xs, ws], [f"{base}.scale"], name=f"{base}.ScaleMul"),
            helper.make_node("Mul", [f"{base}.accf", f"{base}.scale"], [y], name=f"{base}.OutMul"),
        ]
        new_nodes[i] = out
        count += 1
    if count:
        for i, node in enumerate(model.graph.node):
            if node.op_type != "Gather" or node.input[0] not in tables or i in new_nodes:
                continue
            tq, ts = quantized_table(node.input[0])
            base = (node.name or node.output[0]).replace("/", "_").strip("_")
            ts_col = f"{ts}.col"  # [vocab, 1]: the gathered scales broadcast over the row
            if not any(init.name == ts_col for init in model.graph.initializer):
                scale = numpy_helper.to_array(next(init for init in model.graph.initializer if init.name == ts))
                model.graph.initializer.append(numpy_helper.from_array(scale.reshape(-1, 1), ts_col))
            new_nodes[i] = [
                helper.make_node("Gather", [tq, node.input[1]], [f"{base}.q"], axis=0, name=f"{base}.GatherInt8"),
                helper.make_node("Cast", [f"{base}.q"], [f"{base}.qf"], to=TensorProto.FLOAT, name=f"{base}.Cast"),
                helper.make_node("Gather", [ts_col, node.input[1]], [f"{base}.s"], axis=0, name=f"{base}.GatherScale"),
                helper.make_node("Mul", [f"{base}.qf", f"{base}.s"], [node.output[0]], name=f"{base}.Dequantize"),
            ]
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
        model.graph.initializer.extend(
            [numpy_helper.from_array(packed, bq), numpy_helper.from_array(d.reshape(-1), bs)]
        )
        base = (node.name or node.output[0]).replace("/", "_").strip("_")
        new_nodes[i] = [
            helper.make_node(
                "MatMulNBits",
                [node.input[0], bq, bs],
                [node.output[0]],
                name=f"{base}.MatMulNBits",
                domain="com.microsoft",
                K=k,
                N=n,
                bits=4,
                block_size=block,
            )
        ]
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
        raise RvdeployError(
            f"--quantize {fmt}: {src.name} has no fp32 MatMul on a weight to quantize",
            hint="quantize an fp32 export (fp16 and already-quantized graphs are not supported)",
        )
    _drop_dead_nodes(model)
    _drop_unused_initializers(model)
    dst.parent.mkdir(parents=True, exist_ok=True)
    # protobuf cannot serialize 2 GB: (ByteSize overflows there too, so count the initializer bytes)
    large = sum(len(i.raw_data) or i.ByteSize() for i in model.graph.initializer) > 1_500_000_000
    onnx.save(model, str(dst), save_as_external_data=large, location=dst.name + ".data" if large else None)
    return count
