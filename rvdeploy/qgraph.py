"""Stage: put quantized graphs into the forms rvdeploy.mmt4d lowers, in standard ONNX, before import.

MatMulInteger (int8 / uint8 / quantized exports, and `--quantize int8`):
  - a weight zero point that is all zeros is dropped (MatMulInteger's default is 0);
  - uint8 weights whose zero point is all 128 become int8 weights (w - 128, zero point dropped).
  Anything else (asymmetric uint8 weights) is left as it is: IREE compiles it with generated code.

com.microsoft MatMulNBits (q4 / q4f16 exports, and `--quantize q4`), which IREE 3.13 cannot compile
(it imports as an untyped torch.operator), becomes standard ONNX:
    hi = BitShift(B, 4, RIGHT); lo = BitShift(BitShift(B, 4, LEFT), 4, RIGHT)      B: uint8 [N, G, bs/2]
    q  = Reshape(Concat(Unsqueeze(lo, -1), Unsqueeze(hi, -1), -1), [N, G, bs])      nibbles, low first
    W  = Transpose(Reshape((Cast(q) - Z) * S, [N, K]))                             S, Z: [N, G, 1] or Z scalar 8
    Y  = MatMul(A, W)
  The 4-bit bytes are kept as they are (one initializer, 4 bits a weight). rvdeploy.mmt4d recognizes this
  chain and replaces it with the RVV 4-bit kernels' dispatches (riscv64, rvdeploy.q4kernel: weights repacked
  with f16 scales at build time) or one dispatch reading the weights as i4, dequantizing in registers; without
  that lowering (`--pipeline baseline`) IREE evaluates the chain as written. (The direct standard form,
  DequantizeLinear opset 21 with block_size on an INT4 initializer, imports in IREE 3.13 but does not
  compile: "failed to legalize ... onnx.DequantizeLinear" with block_size.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import RvdeployError

Q4_NODE_PREFIX = "rvd_q4"


def _zero_point_dropping(model, inits) -> int:
    count = 0
    replaced: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type != "MatMulInteger" or len(node.input) < 4 or not node.input[3]:
            continue
        w_name, zp_name = node.input[1], node.input[3]
        if w_name not in inits or zp_name not in inits:
            continue
        w = inits[w_name]
        zp = numpy_helper.to_array(inits[zp_name])
        if w.data_type == TensorProto.INT8 and not zp.any():
            del node.input[3]
            count += 1
        elif w.data_type == TensorProto.UINT8 and (zp.astype(np.int32) == 128).all():
            if w_name not in replaced:
                s8 = (numpy_helper.to_array(w).astype(np.int16) - 128).astype(np.int8)
                replaced[w_name] = w_name + ".s8"
                model.graph.initializer.append(numpy_helper.from_array(s8, replaced[w_name]))
            node.input[1] = replaced[w_name]
            del node.input[3]
            count += 1
    return count


def _dequantized_tables(model, inits) -> int:
    """Gather / Transpose of a quantized initializer followed by DequantizeLinear (onnxruntime's quantizer
    does this to the embedding table and the tied lm_head) -> the same op on the table dequantized here, in
    fp32: IREE 3.13 fails on that DequantizeLinear with a dynamic batch ("dequantize_affine ... same shape"),
    and an fp32 table is what the tied-embedding lowering of rvdeploy.mmt4d reads."""
    producers = {o: n for n in model.graph.node for o in n.output}
    uses: dict[str, int] = {}
    for n in model.graph.node:
        for x in n.input:
            uses[x] = uses.get(x, 0) + 1
    drop, tables, count = set(), {}, 0
    for dq in model.graph.node:
        if dq.op_type != "DequantizeLinear" or dq.domain not in ("", "ai.onnx"):
            continue
        p = producers.get(dq.input[0])
        if p is None or p.op_type not in ("Gather", "Transpose") or p.input[0] not in inits or uses[p.output[0]] != 1:
            continue
        if any(x not in inits for x in dq.input[1:] if x):
            continue
        key = (p.input[0], *dq.input[1:])
        if key not in tables:
            q = numpy_helper.to_array(inits[p.input[0]]).astype(np.float32)
            scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float32)
            zp = (
                numpy_helper.to_array(inits[dq.input[2]]).astype(np.float32)
                if len(dq.input) > 2 and dq.input[2]
                else np.zeros_like(scale)
            )
            if scale.size != 1:
                continue  # per-axis tables: left as they are
            name = p.input[0] + ".dequantized"
            model.graph.initializer.append(numpy_helper.from_array(((q - zp) * scale).astype(np.float32), name))
            tables[key] = name
        p.input[0] = tables[key]
        p.output[0] = dq.output[0]
        drop.add(id(dq))
        count += 1
    if count:
        keep = [n for n in model.graph.node if id(n) not in drop]
        del model.graph.node[:]
        model.graph.node.extend(keep)
    return count


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _matmulnbits(model, inits) -> int:
    nodes = []
    count = 0
    new_inits = []
    for node in model.graph.node:
        if node.op_type != "MatMulNBits" or node.domain != "com.microsoft":
            nodes.append(node)
            continue
        k, n, bits, bs = _attr(node, "K"), _attr(node, "N"), _attr(node, "bits", 4), _attr(node, "block_size")
        where = f"MatMulNBits node {node.name!r}"
        if bits != 4:
            raise RvdeployError(f"{where}: {bits}-bit weights are not supported (4-bit only)")
        extra = [x for x in node.input[4:] if x]
        if extra:
            raise RvdeployError(f"{where}: g_idx / bias inputs are not supported")
        b_name, s_name = node.input[1], node.input[2]
        zp_name = node.input[3] if len(node.input) > 3 and node.input[3] else None
        if b_name not in inits or s_name not in inits or (zp_name and zp_name not in inits):
            raise RvdeployError(f"{where}: weights, scales and zero points must be initializers")
        g = -(-k // bs)
        if g * bs != k:
            raise RvdeployError(f"{where}: K = {k} is not a multiple of block_size {bs}")
        b = numpy_helper.to_array(inits[b_name]).reshape(n, g, bs // 2)
        s = numpy_helper.to_array(inits[s_name]).reshape(n, g, 1)
        base = f"{Q4_NODE_PREFIX}.{node.name or node.output[0]}".replace("/", "_")
        b_key, s_key = f"{b_name}.nib", f"{s_name}.q4s"
        new_inits += [
            numpy_helper.from_array(np.ascontiguousarray(b), b_key),
            numpy_helper.from_array(np.ascontiguousarray(s), s_key),
        ]
        if zp_name is None:
            zp = None
        else:
            zraw = numpy_helper.to_array(inits[zp_name])
            if zraw.dtype == np.uint8 and zraw.size != n * g:  # packed nibbles, [N, ceil(G/2)]
                zraw = zraw.reshape(n, -1)
                zz = np.empty((n, zraw.shape[1] * 2), np.uint8)
                zz[:, 0::2], zz[:, 1::2] = zraw & 15, zraw >> 4
                zraw = zz[:, :g]
            zp = zraw.reshape(n, g).astype(s.dtype)
            if (zp == 8).all():
                zp = None
        z_key = f"{base}.zero"
        if zp is None:
            new_inits.append(numpy_helper.from_array(np.array(8, s.dtype), z_key))
        else:
            new_inits.append(numpy_helper.from_array(zp.reshape(n, g, 1), z_key))
        c = {name: f"{base}.{name}" for name in ("four", "shape3", "shape2", "axis")}
        new_inits += [
            numpy_helper.from_array(np.array(4, np.uint8), c["four"]),
            numpy_helper.from_array(np.array([n, g, bs], np.int64), c["shape3"]),
            numpy_helper.from_array(np.array([n, k], np.int64), c["shape2"]),
            numpy_helper.from_array(np.array([-1], np.int64), c["axis"]),
        ]
        t = TensorProto.FLOAT16 if s.dtype == np.float16 else TensorProto.FLOAT
        v = lambda name: f"{base}.{name}"  # noqa: E731
        nodes += [
            helper.make_node("BitShift", [b_key, c["four"]], [v("hi")], direction="RIGHT", name=v("hi")),
            helper.make_node("BitShift", [b_key, c["four"]], [v("shl")], direction="LEFT", name=v("shl")),
            helper.make_node("BitShift", [v("shl"), c["four"]], [v("lo")], direction="RIGHT", name=v("lo")),
            helper.make_node("Unsqueeze", [v("lo"), c["axis"]], [v("lo1")], name=v("lo1")),
            helper.make_node("Unsqueeze", [v("hi"), c["axis"]], [v("hi1")], name=v("hi1")),
            helper.make_node("Concat", [v("lo1"), v("hi1")], [v("q4")], axis=-1, name=v("q4")),
            helper.make_node("Reshape", [v("q4"), c["shape3"]], [v("q")], name=v("q")),
            helper.make_node("Cast", [v("q")], [v("qf")], to=t, name=v("qf")),
            helper.make_node("Sub", [v("qf"), z_key], [v("qz")], name=v("qz")),
            helper.make_node("Mul", [v("qz"), s_key], [v("w3")], name=v("w3")),
            helper.make_node("Reshape", [v("w3"), c["shape2"]], [v("w2")], name=v("w2")),
            helper.make_node("Transpose", [v("w2")], [v("wt")], perm=[1, 0], name=v("wt")),
            helper.make_node("MatMul", [node.input[0], v("wt")], [node.output[0]], name=v("matmul")),
        ]
        count += 1
    if count:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        model.graph.initializer.extend(new_inits)
        used = {x for nd in model.graph.node for x in nd.input}
        keep = [i for i in model.graph.initializer if i.name in used]
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
        for imp in model.opset_import:
            if imp.domain in ("", "ai.onnx") and imp.version < 13:
                raise RvdeployError("MatMulNBits rewrite needs ai.onnx opset >= 13")
    return count


def normalize(onnx_path: Path, workdir: Path) -> tuple[Path, dict]:
    """Returns (graph to import, what was rewritten). The source is not modified; a rewritten copy is
    written to workdir only when something changed."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    kinds = {(n.domain, n.op_type) for n in model.graph.node}
    if not kinds & {("", "MatMulInteger"), ("com.microsoft", "MatMulNBits"), ("", "DequantizeLinear")}:
        return onnx_path, {}
    onnx.load_external_data_for_model(model, str(Path(onnx_path).parent))
    inits = {i.name: i for i in model.graph.initializer}
    done = {
        "matmulinteger_zero_points_dropped": _zero_point_dropping(model, inits),
        "matmulnbits_rewritten": _matmulnbits(model, inits),
        "quantized_tables_dequantized": _dequantized_tables(model, inits),
    }
    # onnxruntime's quantizer leaves value_info for DynamicQuantizeLinear outputs less static than their input
    # ([?, ?, K] for [1, ?, K]): IREE then rejects the dequantize op it builds. Shape inference redoes them.
    dql = {o for n in model.graph.node if n.op_type == "DynamicQuantizeLinear" for o in n.output}
    stale = [vi for vi in model.graph.value_info if vi.name in dql]
    for vi in stale:
        model.graph.value_info.remove(vi)
    done["value_info_dropped"] = len(stale)
    if not any(done.values()):
        return onnx_path, done
    used = {x for nd in model.graph.node for x in nd.input}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "model.onnx"
    large = sum(i.ByteSize() for i in model.graph.initializer) > 1_500_000_000
    onnx.save(model, str(out), save_as_external_data=large, location="model.onnx.data" if large else None)
    return out, done
