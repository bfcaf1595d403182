"""Stage: onnxruntime's fused ops (onnxruntime-genai exports) rewritten into standard ONNX before import.

IREE 3.13 imports GroupQueryAttention and friends but lowers none of them usefully, so each node becomes the
standard ops an optimum export would hold, and the rest of the pipeline (import, entry points, mmt4d) takes
the graph unchanged: the weight MatMuls (the packed QKV one included) are untouched and land on mmt4d.

  GroupQueryAttention  packed or separate Q/K/V -> heads; rotary (do_rotary, interleaved or half-split,
                       partial rotary_dim = 2 x cos_cache width) at positions past_len + arange(S), or at the
                       position_ids input when given; present = Concat(past, new) on the sequence axis (the KV
                       cache design of the optimum graphs); Q regrouped [B, Nkv, rep x S, H] so that
                       grouped heads read the KV cache in place (no repeated copy of it); scale, softcap,
                       causal mask with local_window_size; Softmax; back to [B, S, N x H].
  (Skip)SimplifiedLayerNormalization  (x [+ skip [+ bias]]) * 1/sqrt(mean(x^2) + eps) * gamma, in f32.
  RotaryEmbedding      the same rotary as above on [B, S, hidden] or [B, N, S, H].
  GatherBlockQuantized a 4-bit table (block size dividing the row) stays 4-bit, looked up and dequantized
                       row by row (rvdeploy.q4_lookup, as `--quantize q4` writes its tables); an 8-bit one
                       is dequantized here to the activation dtype, then Gather. MatMulNBits stays for
                       rvdeploy.qgraph.

Positions: the graphs rvdeploy builds run one unpadded sequence (B = 1, attention_mask all ones), so a
query's position is the past length plus its index. seqlens_k / total_sequence_length (derived from the
mask by the exporter's subgraph) then say the same thing and are not read; the subgraph is dropped.
What the rewrite does not take is listed in fused_ops.toml and refused by `check` before any work.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import RvdeployError
from .q4_lookup import lookup_nodes

PREFIX = "rvd_fused"
_TABLE = Path(__file__).with_name("fused_ops.toml")


# ------------------------------------------------------------------------------------------ support table


@dataclass(frozen=True)
class FusedOp:
    key: str  # "domain::OpType"
    any_value: tuple[str, ...]
    attributes: dict  # name -> allowed values
    defaults: dict
    absent_inputs: dict  # index -> name
    unused_outputs: dict  # index -> name
    hint: str


@lru_cache(maxsize=1)
def fused_ops() -> dict[str, FusedOp]:
    data = tomllib.loads(_TABLE.read_text())
    return {
        key: FusedOp(
            key,
            tuple(e.get("any_value", ())),
            e.get("attributes", {}),
            e.get("defaults", {}),
            {int(k): v for k, v in e.get("absent_inputs", {}).items()},
            {int(k): v for k, v in e.get("unused_outputs", {}).items()},
            e["hint"],
        )
        for key, e in data["ops"].items()
    }


def op_key(node: onnx.NodeProto) -> str:
    domain = "" if node.domain in ("", "ai.onnx") else node.domain
    return f"{domain}::{node.op_type}"


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def refusal(node: onnx.NodeProto, consumed: set[str]) -> tuple[str, str] | None:
    """(what is wrong, what to do) for a fused node the rewrite does not take, else None. `consumed`: the
    names some node or graph output reads."""
    spec = fused_ops().get(op_key(node))
    if spec is None:
        return None
    what = f"{node.domain or 'ai.onnx'} {node.op_type} node {node.name!r}"
    for a in node.attribute:
        if a.name in spec.any_value:
            continue
        if a.name not in spec.attributes:
            return f"{what}: attribute {a.name} is not supported", spec.hint
        value = helper.get_attribute_value(a)
        if value not in spec.attributes[a.name]:
            allowed = ", ".join(str(v) for v in spec.attributes[a.name])
            return f"{what}: attribute {a.name}={value} is not supported (supported: {allowed})", spec.hint
    for i, name in spec.absent_inputs.items():
        if len(node.input) > i and node.input[i]:
            return f"{what}: input {i} ({name}) is not supported", spec.hint
    for i, name in spec.unused_outputs.items():
        if len(node.output) > i and node.output[i] and node.output[i] in consumed:
            return f"{what}: output {i} ({name}) is read, which the rewrite does not produce", spec.hint
    return None


# ------------------------------------------------------------------------------------------ graph building


class _Builder:
    """New nodes and constant initializers, named after the fused node they replace."""

    def __init__(self, base: str):
        self.base = base
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self._n = 0

    def name(self, stem: str) -> str:
        self._n += 1
        return f"{self.base}.{stem}{self._n}"

    def const(self, value, dtype=None) -> str:
        name = self.name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def i64(self, *values) -> str:
        return self.const(list(values), np.int64)

    def op(self, op_type: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        out = out or self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def dim(self, x: str, axis: int) -> str:
        """Shape(x)[axis] as a 1-element int64 tensor."""
        return self.op("Shape", [x], start=axis, end=axis + 1)

    def scalar(self, one_elem: str) -> str:
        return self.op("Squeeze", [one_elem, self.i64(0)])


def _np_dtype(elem_type: int, where: str):
    dt = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16}.get(elem_type)
    if dt is None:
        raise RvdeployError(
            f"{where}: KV cache of type {TensorProto.DataType.Name(elem_type).lower()}; rvdeploy handles f32 and f16",
            "export with -p fp32 (or fp16)",
        )
    return dt


# ------------------------------------------------------------------------------------------ rotary


def _rotate(b: _Builder, x: str, cos: str, sin: str, half: int, head: int, interleaved: bool) -> str:
    """Rotary on the last axis of x (width `head`), first 2*half channels rotated; cos/sin broadcast
    against x[..., :half]."""
    rd = 2 * half
    if rd < head:
        rot = b.op("Slice", [x, b.i64(0), b.i64(rd), b.i64(-1)])
        rest = b.op("Slice", [x, b.i64(rd), b.i64(head), b.i64(-1)])
    else:
        rot, rest = x, None
    if interleaved:  # channel pairs (2i, 2i+1)
        # [..., rd] -> [..., half, 2], the leading axes as they are
        shape = b.op("Concat", [b.op("Shape", [rot], end=-1), b.i64(half, 2)], axis=0)
        pairs = b.op("Reshape", [rot, shape])
        x1 = b.op("Squeeze", [b.op("Slice", [pairs, b.i64(0), b.i64(1), b.i64(-1)]), b.i64(-1)])
        x2 = b.op("Squeeze", [b.op("Slice", [pairs, b.i64(1), b.i64(2), b.i64(-1)]), b.i64(-1)])
    else:  # halves
        x1 = b.op("Slice", [rot, b.i64(0), b.i64(half), b.i64(-1)])
        x2 = b.op("Slice", [rot, b.i64(half), b.i64(rd), b.i64(-1)])
    y1 = b.op("Sub", [b.op("Mul", [x1, cos]), b.op("Mul", [x2, sin])])
    y2 = b.op("Add", [b.op("Mul", [x2, cos]), b.op("Mul", [x1, sin])])
    if interleaved:
        both = b.op("Concat", [b.op("Unsqueeze", [y1, b.i64(-1)]), b.op("Unsqueeze", [y2, b.i64(-1)])], axis=-1)
        y = b.op("Reshape", [both, b.op("Shape", [rot])])
    else:
        y = b.op("Concat", [y1, y2], axis=-1)
    return b.op("Concat", [y, rest], axis=-1) if rest else y


def _cos_sin_at(b: _Builder, cos_cache: str, sin_cache: str, positions: str) -> tuple[str, str]:
    return b.op("Gather", [cos_cache, positions], axis=0), b.op("Gather", [sin_cache, positions], axis=0)


# ------------------------------------------------------------------------------------------ the rewrites


@dataclass
class _Ctx:
    inits: dict  # name -> TensorProto (the model's initializers)
    types: dict  # value name -> elem_type, where known (graph inputs, value_info, initializers)
    ranks: dict  # value name -> rank, where known
    last_dims: dict  # value name -> static size of the last axis, where known
    producers: dict  # value name -> the node writing it
    head_dim: int


def _init_array(ctx: _Ctx, name: str, where: str) -> np.ndarray:
    if name not in ctx.inits:
        raise RvdeployError(f"{where}: {name} must be a constant initializer")
    return numpy_helper.to_array(ctx.inits[name])


def _gqa(node, ctx: _Ctx, b: _Builder) -> None:
    where = f"com.microsoft GroupQueryAttention node {node.name!r}"
    n_heads, n_kv = _attr(node, "num_heads"), _attr(node, "kv_num_heads")
    if not n_heads or not n_kv or n_heads % n_kv:
        raise RvdeployError(f"{where}: num_heads {n_heads} is not a multiple of kv_num_heads {n_kv}")
    rep = n_heads // n_kv
    inp = list(node.input) + [""] * (12 - len(node.input))
    query, key, value, past_k, past_v = inp[0:5]
    cos_cache, sin_cache, position_ids = inp[7], inp[8], inp[9]
    do_rotary = bool(_attr(node, "do_rotary", 0))
    if not past_k or not past_v:
        raise RvdeployError(f"{where}: past_key and past_value inputs are required (a KV-cache graph)")
    head = ctx.head_dim
    q_width = ctx.last_dims.get(query)
    if not key and q_width and q_width != (n_heads + 2 * n_kv) * head:
        raise RvdeployError(
            f"{where}: packed QKV width {q_width} is not (num_heads {n_heads} + 2 x kv_num_heads "
            f"{n_kv}) x head size {head}",
            "check genai_config.json's head_size",
        )
    dtype = ctx.types.get(past_k, TensorProto.FLOAT)
    npdt = _np_dtype(dtype, where)
    scale = _attr(node, "scale", 0.0) or 1.0 / np.sqrt(head)
    softcap = _attr(node, "softcap", 0.0)
    window = _attr(node, "local_window_size", -1)

    if key:  # separate Q, K, V [B, S, heads x H]
        q3, k3, v3 = query, key, value
    else:  # packed [B, S, (N + 2 Nkv) x H]
        q3, k3, v3 = b.name("q"), b.name("k"), b.name("v")
        b.nodes.append(
            helper.make_node(
                "Split",
                [query, b.i64(n_heads * head, n_kv * head, n_kv * head)],
                [q3, k3, v3],
                axis=-1,
                name=b.name("split"),
            )
        )

    def heads(x, n):  # [B, S, n x H] -> [B, n, S, H]
        return b.op("Transpose", [b.op("Reshape", [x, b.i64(0, 0, n, head)])], perm=[0, 2, 1, 3])

    q, k, v = heads(q3, n_heads), heads(k3, n_kv), heads(v3, n_kv)
    s_len = b.dim(q3, 1)
    p_len = b.dim(past_k, 2)
    if do_rotary:
        half = int(_init_array(ctx, cos_cache, where).shape[-1])
        if position_ids:  # [B, S] -> cos [B, S, half] -> [B, 1, S, half]
            cos, sin = _cos_sin_at(b, cos_cache, sin_cache, position_ids)
            cos, sin = (b.op("Unsqueeze", [t, b.i64(1)]) for t in (cos, sin))
        else:
            p0, s0 = b.scalar(p_len), b.scalar(s_len)
            pos = b.op("Range", [p0, b.op("Add", [p0, s0]), b.const(1, np.int64)])
            cos, sin = _cos_sin_at(b, cos_cache, sin_cache, pos)
        inter = bool(_attr(node, "rotary_interleaved", 0))
        q = _rotate(b, q, cos, sin, half, head, inter)
        k = _rotate(b, k, cos, sin, half, head, inter)
    present_k = b.op("Concat", [past_k, k], node.output[1] or None, axis=2)
    present_v = b.op("Concat", [past_v, v], node.output[2] or None, axis=2)

    # grouped heads read their KV head in place: Q [B, N, S, H] -> [B, Nkv, rep x S, H]
    qg = b.op("Reshape", [q, b.i64(0, n_kv, -1, head)]) if rep > 1 else q
    kt = b.op("Transpose", [present_k], perm=[0, 1, 3, 2])
    scores = b.op("Mul", [b.op("MatMul", [qg, kt]), b.const(scale, npdt)])
    if softcap and softcap > 0:
        cap = b.const(softcap, npdt)
        scores = b.op("Mul", [b.op("Tanh", [b.op("Div", [scores, cap])]), cap])
    # causal mask (+ local window): query i at position P + i sees key j iff P + i - window < j <= P + i
    # (the window holds local_window_size keys, the query's own included, as onnxruntime's kernel counts)
    t_len = b.op("Add", [p_len, s_len])
    qpos = b.op("Unsqueeze", [b.op("Range", [b.scalar(p_len), b.scalar(t_len), b.const(1, np.int64)]), b.i64(1)])
    kpos = b.op("Unsqueeze", [b.op("Range", [b.const(0, np.int64), b.scalar(t_len), b.const(1, np.int64)]), b.i64(0)])
    allowed = b.op("LessOrEqual", [kpos, qpos])
    if window is not None and window > 0:
        allowed = b.op("And", [allowed, b.op("Greater", [kpos, b.op("Sub", [qpos, b.const(window, np.int64)])])])
    if rep > 1:  # rows r x S + i of the regrouped scores are query i
        allowed = b.op("Tile", [allowed, b.i64(rep, 1)])
    scores = b.op("Where", [allowed, scores, b.const(-np.inf, npdt)])
    probs = b.op("Softmax", [scores], axis=-1)
    ctx_v = b.op("MatMul", [probs, present_v])
    if rep > 1:
        ctx_v = b.op("Reshape", [ctx_v, b.i64(0, n_heads, -1, head)])
    out = b.op("Transpose", [ctx_v], perm=[0, 2, 1, 3])
    b.op("Reshape", [out, b.i64(0, 0, n_heads * head)], node.output[0])


def _rms(b: _Builder, x: str, gamma: str, eps: float, dtype: int, out: str) -> None:
    """x * 1/sqrt(mean(x^2) + eps) * gamma, computed in f32 (onnxruntime's stash_type 1) for f16 graphs."""
    xf = b.op("Cast", [x], to=TensorProto.FLOAT) if dtype == TensorProto.FLOAT16 else x
    ms = b.op("ReduceMean", [b.op("Mul", [xf, xf]), b.i64(-1)], keepdims=1)
    inv = b.op("Reciprocal", [b.op("Sqrt", [b.op("Add", [ms, b.const(eps, np.float32)])])])
    y = b.op("Mul", [xf, inv])
    if dtype == TensorProto.FLOAT16:
        y = b.op("Cast", [y], to=TensorProto.FLOAT16)
    b.op("Mul", [y, gamma], out)


def _simplified_ln(node, ctx: _Ctx, b: _Builder) -> None:
    dtype = ctx.types.get(node.input[1], TensorProto.FLOAT)
    _rms(b, node.input[0], node.input[1], _attr(node, "epsilon", 1e-5), dtype, node.output[0])


def _skip_simplified_ln(node, ctx: _Ctx, b: _Builder) -> None:
    dtype = ctx.types.get(node.input[2], TensorProto.FLOAT)
    total = b.op("Add", [node.input[0], node.input[1]])
    if len(node.input) > 3 and node.input[3]:
        total = b.op("Add", [total, node.input[3]])
    if len(node.output) > 3 and node.output[3]:
        total = b.op("Identity", [total], node.output[3])
    _rms(b, total, node.input[2], _attr(node, "epsilon", 1e-5), dtype, node.output[0])


def _rotary_embedding(node, ctx: _Ctx, b: _Builder) -> None:
    where = f"com.microsoft RotaryEmbedding node {node.name!r}"
    x, pos_ids, cos_cache, sin_cache = node.input[:4]
    half = int(_init_array(ctx, cos_cache, where).shape[-1])
    rank = ctx.ranks.get(x)
    n_heads = _attr(node, "num_heads", 0)
    rd = _attr(node, "rotary_embedding_dim", 0) or 2 * half
    if rd != 2 * half:
        raise RvdeployError(f"{where}: rotary_embedding_dim {rd} differs from the cos cache's width x 2 ({2 * half})")
    if rank not in (3, 4):
        raise RvdeployError(f"{where}: input rank unknown or not 3/4; rvdeploy needs [B, S, hidden] or [B, N, S, H]")
    head = ctx.head_dim if rank == 3 else ctx.last_dims.get(x) or ctx.head_dim
    inter = bool(_attr(node, "interleaved", 0))
    s_axis = 1 if rank == 3 else 2
    pos_rank = ctx.ranks.get(pos_ids)
    if pos_rank == 2:
        positions = pos_ids
    else:  # one start offset: positions offset + arange(S)
        p0 = b.scalar(b.op("Reshape", [pos_ids, b.i64(1)]))
        positions = b.op("Range", [p0, b.op("Add", [p0, b.scalar(b.dim(x, s_axis))]), b.const(1, np.int64)])
        positions = b.op("Unsqueeze", [positions, b.i64(0)])
    cos, sin = _cos_sin_at(b, cos_cache, sin_cache, positions)  # [B, S, half]
    if rank == 3:  # [B, S, N x H] -> [B, S, N, H]; cos [B, S, 1, half]
        heads = n_heads or None
        xs = (
            b.op("Reshape", [x, b.i64(0, 0, -1, head)])
            if heads is None
            else b.op("Reshape", [x, b.i64(0, 0, heads, head)])
        )
        cos, sin = (b.op("Unsqueeze", [t, b.i64(2)]) for t in (cos, sin))
        y = _rotate(b, xs, cos, sin, half, head, inter)
        b.op("Reshape", [y, b.op("Shape", [x])], node.output[0])
    else:  # [B, N, S, H]; cos [B, 1, S, half]
        cos, sin = (b.op("Unsqueeze", [t, b.i64(1)]) for t in (cos, sin))
        b.op("Identity", [_rotate(b, x, cos, sin, half, head, inter)], node.output[0])


def dequantize_blocks(
    data: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, bits: int, block: int, signed: bool
) -> np.ndarray:
    """A block-quantized [R, C] table as GatherBlockQuantized reads it: data uint8 (4-bit: two per byte,
    low nibble first), scales [R, C / block], zero points like data (default 8 / 128 unsigned, 0 signed)."""
    rows = data.shape[0]
    flat = data.reshape(rows, -1)
    if bits == 4:
        q = np.empty((rows, flat.shape[1] * 2), np.int16)
        q[:, 0::2], q[:, 1::2] = flat & 15, flat >> 4
        if signed:
            q = np.where(q > 7, q - 16, q)
    else:
        q = flat.astype(np.int8 if signed else np.uint8).astype(np.int16)
    cols = scales.shape[1] * block
    q = q[:, :cols]
    g = scales.shape[1]
    if zero_points is None:
        zp = np.zeros((rows, g), np.int16) if signed else np.full((rows, g), 1 << (bits - 1), np.int16)
    elif bits == 4:
        zflat = zero_points.reshape(rows, -1)
        zz = np.empty((rows, zflat.shape[1] * 2), np.int16)
        zz[:, 0::2], zz[:, 1::2] = zflat & 15, zflat >> 4
        zp = zz[:, :g]
        if signed:
            zp = np.where(zp > 7, zp - 16, zp)
    else:
        zp = zero_points.reshape(rows, g).astype(np.int16)
    w = (q.reshape(rows, g, block) - zp[..., None]).astype(np.float32) * scales.astype(np.float32)[..., None]
    return w.reshape(rows, cols)


def _constant(name: str, ctx: _Ctx) -> np.ndarray | None:
    """An initializer or a Constant node's value."""
    if name in ctx.inits:
        return numpy_helper.to_array(ctx.inits[name])
    p = ctx.producers.get(name)
    if p is not None and p.op_type == "Constant" and p.attribute and p.attribute[0].name == "value":
        return numpy_helper.to_array(p.attribute[0].t)
    return None


def _constant_through_reshape(name: str, ctx: _Ctx) -> np.ndarray | None:
    """A constant, or a Reshape of one by a constant shape (onnxruntime-genai reshapes the lm_head's 4-bit
    bytes for the tied embedding)."""
    value = _constant(name, ctx)
    if value is not None:
        return value
    p = ctx.producers.get(name)
    if p is not None and p.op_type == "Reshape":
        data, shape = _constant(p.input[0], ctx), _constant(p.input[1], ctx)
        if data is not None and shape is not None:
            return data.reshape(shape)
    return None


def _gather_block_quantized(node, ctx: _Ctx, b: _Builder) -> None:
    where = f"com.microsoft GatherBlockQuantized node {node.name!r}"
    data = _constant_through_reshape(node.input[0], ctx)
    scales = _constant_through_reshape(node.input[2], ctx)
    zps = _constant_through_reshape(node.input[3], ctx) if len(node.input) > 3 and node.input[3] else None
    if data is None or scales is None or (len(node.input) > 3 and node.input[3] and zps is None):
        raise RvdeployError(
            f"{where}: data, scales and zero points must be constant initializers",
            "export the embedding table unquantized",
        )
    if data.dtype != np.uint8:  # INT4 / UINT4-typed tables: not what onnxruntime-genai writes
        raise RvdeployError(
            f"{where}: data of type {data.dtype} is not supported (uint8-packed only)", fused_ops()[op_key(node)].hint
        )
    bits, block = _attr(node, "bits", 4), _attr(node, "block_size", 128)
    rows, groups = scales.shape[0], scales.shape[1]
    if bits == 4 and data.size == rows * groups * block // 2:  # stays 4-bit: looked up as rvdeploy.q4_lookup does
        out_type = TensorProto.FLOAT16 if scales.dtype == np.float16 else TensorProto.FLOAT
        table, scale, zero = b.name("table"), b.name("scales"), None
        b.inits += [
            numpy_helper.from_array(np.ascontiguousarray(data.reshape(rows, groups, block // 2, 1)), table),
            numpy_helper.from_array(np.ascontiguousarray(scales.reshape(rows, groups, 1, 1)), scale),
        ]
        if zps is not None:
            zflat = zps.reshape(rows, -1)
            zz = np.empty((rows, zflat.shape[1] * 2), np.uint8)
            zz[:, 0::2], zz[:, 1::2] = zflat & 15, zflat >> 4
            zero = b.name("zero")
            b.inits.append(numpy_helper.from_array(zz[:, :groups].reshape(rows, groups, 1, 1), zero))
        cols = groups * block
        nodes, consts = lookup_nodes(
            b.name("q4"), table, scale, node.input[1], node.output[0], cols, False, zero, out_type
        )
        b.nodes += nodes
        b.inits += consts
        return
    table = dequantize_blocks(data, scales, zps, bits, block, signed=False).astype(scales.dtype)
    name = b.name("table")
    b.inits.append(numpy_helper.from_array(table, name))
    b.op("Gather", [name, node.input[1]], node.output[0], axis=0)


_REWRITES = {
    "com.microsoft::GroupQueryAttention": _gqa,
    "com.microsoft::SkipSimplifiedLayerNormalization": _skip_simplified_ln,
    "::SimplifiedLayerNormalization": _simplified_ln,
    "com.microsoft::SimplifiedLayerNormalization": _simplified_ln,
    "com.microsoft::RotaryEmbedding": _rotary_embedding,
    "com.microsoft::GatherBlockQuantized": _gather_block_quantized,
}


# ------------------------------------------------------------------------------------------ driver


def _types_and_ranks(model: onnx.ModelProto) -> tuple[dict, dict, dict]:
    types, ranks, last = {}, {}, {}
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        tt = vi.type.tensor_type
        types[vi.name] = tt.elem_type
        if tt.HasField("shape"):
            ranks[vi.name] = len(tt.shape.dim)
            if tt.shape.dim and tt.shape.dim[-1].HasField("dim_value"):
                last[vi.name] = tt.shape.dim[-1].dim_value
    for t in model.graph.initializer:
        types[t.name] = t.data_type
        ranks[t.name] = len(t.dims)
    return types, ranks, last


def _drop_dead(model: onnx.ModelProto) -> int:
    """Nodes whose outputs nothing reads (the mask subgraph feeding seqlens_k), repeatedly."""
    dropped = 0
    while True:
        used = {x for n in model.graph.node for x in n.input} | {o.name for o in model.graph.output}
        keep = [n for n in model.graph.node if any(o and o in used for o in n.output)]
        if len(keep) == len(model.graph.node):
            break
        dropped += len(model.graph.node) - len(keep)
        del model.graph.node[:]
        model.graph.node.extend(keep)
    used = {x for n in model.graph.node for x in n.input}
    inits = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)
    return dropped


def has_fused(model: onnx.ModelProto) -> bool:
    return any(op_key(n) in _REWRITES for n in model.graph.node)


def rewrite_model(model: onnx.ModelProto, head_dim: int) -> dict:
    """Rewrite every fused node of `model` in place (initializers loaded); returns counts per op type."""
    consumed = {x for n in model.graph.node for x in n.input} | {o.name for o in model.graph.output}
    for n in model.graph.node:
        bad = refusal(n, consumed)
        if bad:
            raise RvdeployError(*bad)
    types, ranks, last = _types_and_ranks(model)
    ctx = _Ctx(
        {i.name: i for i in model.graph.initializer},
        types,
        ranks,
        last,
        {o: n for n in model.graph.node for o in n.output},
        head_dim,
    )
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 18:
        raise RvdeployError(
            f"fused onnxruntime ops in an ai.onnx opset {opset} graph: rvdeploy rewrites them for opset 18 or later",
            "re-export with onnxruntime-genai's builder (opset 21+)",
        )
    nodes, inits, counts = [], [], {}
    for i, node in enumerate(model.graph.node):
        fn = _REWRITES.get(op_key(node))
        if fn is None:
            nodes.append(node)
            continue
        b = _Builder(f"{PREFIX}.{node.name or i}".replace("/", "_"))
        fn(node, ctx, b)
        nodes += b.nodes
        inits += b.inits
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    if counts:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        model.graph.initializer.extend(inits)
        counts["dead_nodes_dropped"] = _drop_dead(model)
        # stale value_info of the replaced nodes' outputs (e.g. genai's symbolic dims) is re-inferred
        del model.graph.value_info[:]
    return counts
