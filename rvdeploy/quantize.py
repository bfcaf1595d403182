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
      `model_q4.onnx` exports use. rvdeploy.qgraph then rewrites it into standard ONNX for IREE.

int8 also stores the embedding tables as int8 rows with a scale per row (dequantized on lookup), shared with a
tied lm_head. q4 stores them as 4-bit blocks of 32 along the row with an f16 scale each, in Q4_0's nibble
order, looked up by rvdeploy.q4_lookup; a table tied to the lm_head is the lm_head's MatMulNBits quantization
(q4_lookup.TIED_TABLE), which rvdeploy.mmt4d reads from the RVV kernels' panels, so it is stored once. Norms and
everything else that is not a weight matmul or a table stay fp32.

The source is read one initializer at a time (loaded without its external data, each weight read from the
file when it is quantized), so a 6 GB export never sits in memory whole.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, external_data_helper, helper, numpy_helper

from .errors import RvdeployError
from .q4_lookup import TIED_SCALES, TIED_TABLE, lookup_nodes, pack_q0_order, q0_table_from_matmulnbits

FORMATS = ("int8", "q4")
Q4_BLOCK = 32
CHUNK_BYTES = 64 << 20  # fp32 bytes quantized at a time


class _Weights:
    """Initializer values, each read when asked: inline ones from the model, external ones from their file
    (the model is loaded without external data)."""

    def __init__(self, model: onnx.ModelProto, base: Path | None = None):
        self.inits = {i.name: i for i in model.graph.initializer}
        self.base = base

    def array(self, name: str) -> np.ndarray:
        t = self.inits[name]
        if t.data_location != TensorProto.EXTERNAL:
            return numpy_helper.to_array(t)
        info = {e.key: e.value for e in t.external_data}
        if self.base is None:
            raise RvdeployError(f"initializer {name!r} is external data, but where the model lies is not known")
        with open(self.base / info["location"], "rb") as f:
            f.seek(int(info.get("offset", 0)))
            count = int(np.prod(t.dims, dtype=np.int64))
            a = np.fromfile(f, dtype=helper.tensor_dtype_to_np_dtype(t.data_type), count=count)
        if a.size != count:
            raise RvdeployError(f"initializer {name!r}: its external data file {info['location']} is too short")
        return a.reshape(tuple(t.dims))


def _weight_matmuls(model: onnx.ModelProto, weights: _Weights):
    """(index, MatMul node, W [K, N] as numpy, weight name) for every MatMul on an fp32 weight: an
    initializer, or a Transpose of one (a tied lm_head reading the embedding table, which stays fp32 for
    the Gather: the lm_head gets its own quantized copy). Each W is read when its turn comes."""
    inits = weights.inits
    producers = {o: n for n in model.graph.node for o in n.output}
    found = []
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
        if b in inits and len(inits[b].dims) == 2 and inits[b].data_type == TensorProto.FLOAT:
            found.append((i, node, b, transposed))
    for i, node, b, transposed in found:
        arr = weights.array(b)
        yield i, node, (np.ascontiguousarray(arr.T) if transposed else arr), b + (".T" if transposed else "")


def quantize_int8_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """W [K, N] f32 -> (Wq [K, N] int8, scale [N] f32), symmetric per output channel. A few MB of columns at a
    time: the temporaries of a 1 GB lm_head would otherwise cost several GB."""
    k, n = w.shape
    q, scale = np.empty((k, n), np.int8), np.empty(n, np.float32)
    step = max(1, CHUNK_BYTES // (4 * max(k, 1)))
    for c in range(0, n, step):
        wc = w[:, c : c + step]
        amax = np.abs(wc).max(axis=0)
        scale[c : c + step] = np.where(amax > 0, amax / 127.0, 1.0)
        q[:, c : c + step] = np.clip(np.rint(wc / scale[c : c + step]), -127, 127)
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


def _embedding_tables(model: onnx.ModelProto) -> dict[str, tuple[int, int]]:
    """Embedding tables: fp32 2-D initializers [vocab, hidden] read by a Gather on axis 0 (token ids) -> shape."""
    inits = {i.name: i for i in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type != "Gather" or node.domain not in ("", "ai.onnx") or node.input[0] not in inits:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        t = inits[node.input[0]]
        if axis == 0 and len(t.dims) == 2 and t.data_type == TensorProto.FLOAT:
            out.setdefault(node.input[0], tuple(t.dims))
    return out


def quantize_int8(model: onnx.ModelProto, weights: _Weights | None = None) -> int:
    """Weight MatMuls as described above. Embedding tables too: int8 rows with one scale per row, dequantized
    on lookup (Gather -> Cast -> Mul by the row's scale), so no fp32 table stays in the model. A tied lm_head
    (a MatMul reading the table through a Transpose, or a stored transposed copy of it, as optimum exports
    without `accelerate` write it) reads the same int8 table through a Transpose: its per-output-channel
    scales are the table's per-row scales, so the table is stored once."""
    weights = weights or _Weights(model)
    new_nodes: dict[int, list] = {}
    dql: dict[str, tuple[str, str, str]] = {}  # activation -> (Xq, Xs, Xzp)
    tables = _embedding_tables(model)
    table_q: dict[str, tuple[str, str]] = {}  # table -> (int8 table [vocab, hidden], row scales [vocab])
    arrays: dict[str, np.ndarray] = {}  # the tables' values, read once

    def table(name: str) -> np.ndarray:
        if name not in arrays:
            arrays[name] = weights.array(name)
        return arrays[name]

    def quantized_table(name: str) -> tuple[str, str]:
        if name not in table_q:
            q, scale = quantize_int8_weight(table(name).T)  # per vocab row = per lm_head output channel
            table_q[name] = (f"{name}.int8", f"{name}.int8_scale")
            model.graph.initializer.extend(
                [
                    numpy_helper.from_array(np.ascontiguousarray(q.T), table_q[name][0]),
                    numpy_helper.from_array(scale, table_q[name][1]),
                ]
            )
        return table_q[name]

    count = 0
    for i, node, w, w_name in _weight_matmuls(model, weights):
        x, y = node.input[0], node.output[0]
        base = (node.name or y).replace("/", "_").strip("_")
        tied = w_name[:-2] if w_name.endswith(".T") and w_name[:-2] in tables else None
        if tied is None:  # a stored copy of a table, transposed
            tied = next((t for t, s in tables.items() if s == w.shape[::-1] and np.array_equal(table(t).T, w)), None)
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


def quantize_q4_table(table: np.ndarray, block: int = Q4_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """An embedding table [V, H] f32 -> (4-bit rows uint8 [V, H/block, 1, block/2] in Q4_0's nibble order,
    f16 scales [V, H/block, 1, 1]): Q4_0's d = max / -8, with q computed from the f16 d that is stored."""
    v, h = table.shape
    packed, d = np.empty((v, h // block, 1, block // 2), np.uint8), np.empty((v, h // block, 1, 1), np.float16)
    step = max(1, CHUNK_BYTES // (4 * max(h, 1)))
    for r in range(0, v, step):  # a few MB of rows at a time (see quantize_int8_weight)
        rows = table[r : r + step].reshape(-1, h // block, block)
        idx = np.abs(rows).argmax(axis=2)
        dc = (np.take_along_axis(rows, idx[..., None], axis=2)[..., 0] / -8.0).astype(np.float16)
        df = dc.astype(np.float32)
        inv = np.where(df != 0, 1.0 / np.where(df != 0, df, 1.0), 0.0).astype(np.float32)
        packed[r : r + step] = pack_q0_order(np.clip(np.rint(rows * inv[..., None]) + 8, 0, 15).astype(np.uint8))
        d[r : r + step, :, 0, 0] = dc
    return packed, d


def _q4_tables(
    model: onnx.ModelProto, weights: _Weights, new_nodes: dict[int, list], block: int, tied: dict[str, tuple]
) -> int:
    """Every Gather of an fp32 embedding table -> the 4-bit lookup of rvdeploy.q4_lookup (table stored once).
    `tied`: table -> (its lm_head's MatMulNBits B name, B, scales): that table is the lm_head's quantization."""
    tables = _embedding_tables(model)
    stored: dict[str, tuple[str, str]] = {}
    count = 0
    for i, node in enumerate(model.graph.node):
        name = node.input[0] if node.op_type == "Gather" and node.input else None
        if name not in tables or i in new_nodes or tables[name][1] % block:
            continue
        if name not in stored and name in tied:
            bq, b, d = tied[name]
            q, d = q0_table_from_matmulnbits(b, d)
            stored[name] = (bq + TIED_TABLE, bq + TIED_SCALES)
            model.graph.initializer.extend(
                [numpy_helper.from_array(q, stored[name][0]), numpy_helper.from_array(d, stored[name][1])]
            )
        elif name not in stored:
            q, d = quantize_q4_table(weights.array(name), block)
            stored[name] = (f"{name}.q4", f"{name}.q4_scales")
            model.graph.initializer.extend(
                [numpy_helper.from_array(q, stored[name][0]), numpy_helper.from_array(d, stored[name][1])]
            )
        base = (node.name or node.output[0]).replace("/", "_").strip("_") + ".q4"
        nodes, consts = lookup_nodes(base, *stored[name], node.input[1], node.output[0], tables[name][1], True)
        model.graph.initializer.extend(consts)
        new_nodes[i] = nodes
        count += 1
    return count


def quantize_q4(model: onnx.ModelProto, block: int = Q4_BLOCK, weights: _Weights | None = None) -> int:
    weights = weights or _Weights(model)
    new_nodes: dict[int, list] = {}
    count = 0
    tables = {t: s for t, s in _embedding_tables(model).items() if s[1] % block == 0}
    tied: dict[str, tuple] = {}  # table -> (lm_head's B name, B, scales), see _q4_tables
    for i, node, w, w_name in _weight_matmuls(model, weights):
        k, n = w.shape
        if k % block:
            continue  # stays fp32
        packed, d = quantize_q4_weight(w, block)
        bq, bs = f"{w_name}.q4", f"{w_name}.q4_scales"
        table = w_name[:-2] if w_name.endswith(".T") and w_name[:-2] in tables else None
        if table is None:  # a stored copy of a table, transposed (optimum without `accelerate`)
            table = next(
                (
                    t
                    for t, s in tables.items()
                    if s == (n, k) and t not in tied and np.array_equal(weights.array(t).T, w)
                ),
                None,
            )
        if table is not None and table not in tied:
            tied[table] = (bq, packed, d)
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
    if count:
        _q4_tables(model, weights, new_nodes, block, tied)
    _replace_nodes(model, new_nodes)
    if count and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return count


def _inline_external(model: onnx.ModelProto, base: Path) -> None:
    """The source's external tensors that stay unquantized (norms, Constant nodes' values) read into the model."""
    for t in external_data_helper._get_all_tensors(model):  # initializers and node attributes, subgraphs too
        if t.data_location == TensorProto.EXTERNAL:
            external_data_helper.load_external_data_for_tensor(t, str(base))
            t.ClearField("data_location")  # (as an inline tensor has it: unset)
            del t.external_data[:]


def quantize_file(src: Path, dst: Path, fmt: str) -> int:
    """Quantize src (an fp32 ONNX, external data allowed) into dst; returns the matmuls quantized. The source is
    loaded without its external data and each weight read when it is quantized (see _Weights), so memory holds
    the graph, one fp32 weight (the tables) and the quantized output, never the whole fp32 model."""
    if fmt not in FORMATS:
        raise RvdeployError(f"unknown quantization {fmt!r}", hint="known: " + ", ".join(FORMATS))
    src = Path(src)
    model = onnx.load(str(src), load_external_data=False)
    weights = _Weights(model, src.parent)
    count = quantize_int8(model, weights) if fmt == "int8" else quantize_q4(model, weights=weights)
    if count == 0:
        raise RvdeployError(
            f"--quantize {fmt}: {src.name} has no fp32 MatMul on a weight to quantize",
            hint="quantize an fp32 export (fp16 and already-quantized graphs are not supported)",
        )
    _drop_dead_nodes(model)
    _drop_unused_initializers(model)
    _inline_external(model, src.parent)
    dst.parent.mkdir(parents=True, exist_ok=True)
    # protobuf cannot serialize 2 GB: (ByteSize overflows there too, so count the initializer bytes)
    large = sum(len(i.raw_data) or i.ByteSize() for i in model.graph.initializer) > 1_500_000_000
    onnx.save(model, str(dst), save_as_external_data=large, location=dst.name + ".data" if large else None)
    return count
