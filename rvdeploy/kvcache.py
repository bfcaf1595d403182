"""The decode step's KV cache at a fixed capacity, updated in place (the graph side).

Exports carry the cache as growing tensors: each decode step concatenates the past keys and values with the
new ones (a new allocation and a copy of every layer's cache per token), repeats them over the query heads
(grouped-query attention: another copy), and multiplies the queries by keys stored as [context, head_dim]
rows, which IREE's generated code reads across rows. Measured on the 16M Llama (spacemit-k1, one thread),
that attention costs about 21K instructions per token of context against llama.cpp's 4.8K.

This rewrite of the static decode graph keeps, per layer, one key cache stored transposed
[1, kv_heads, head_dim, capacity] and one value cache [1, kv_heads, capacity, head_dim]. The past's
`Concat` becomes an `rvdeploy.RvdKVAppend` node (lowered by rvdeploy.kvstate to an in-place
`tensor.insert_slice` plus a view of the filled part), and the two attention MatMuls read the caches
directly: the queries are grouped per KV head (a reshape, no repeat), scores = Q[g, d] x K^T[d, t] runs
along the context, output = P[g, t] x V[t, d] along the head dimension; the keys' constant scale is applied
to the queries. Everything between the two MatMuls (mask, softmax) is left as exported. Graphs that don't
match the pattern are left alone (the build keeps the growing-cache interface for them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DOMAIN = "rvdeploy"
APPEND = "RvdKVAppend"
DEFAULT_CAPACITY = 4096  # tokens, when the build is not given --max-context
PAST_LENGTH = "past_length"  # the new int64 scalar input: tokens already in the cache
_PAST = re.compile(r"past_key_values\.(\d+)\.(key|value)")


def cache_input(layer: int, kind: str) -> str:
    """The rewritten decode graph's input for a layer's key or value cache (its output: cache_out.N.kind)."""
    return f"cache.{layer}.{kind}"


# ops between a cache and the attention MatMul that reads it: repeat over query heads, transpose, scale
_K_CHAIN = {"Unsqueeze", "Expand", "Reshape", "Transpose", "Mul", "Div", "Cast"}
_V_CHAIN = {"Unsqueeze", "Expand", "Reshape"}


@dataclass(frozen=True)
class CacheLayout:
    """How the module keeps the cache: per layer, keys [1, kv_heads, head_dim, capacity] and values
    [1, kv_heads, capacity, head_dim] (`elt` as exported)."""

    layers: int
    kv_heads: int
    head_dim: int
    capacity: int
    elt: str

    def key_dims(self) -> tuple[int, ...]:
        return (1, self.kv_heads, self.head_dim, self.capacity)

    def value_dims(self) -> tuple[int, ...]:
        return (1, self.kv_heads, self.capacity, self.head_dim)

    def to_dict(self) -> dict:
        return {
            "layout": "keys [1, kv_heads, head_dim, capacity], values [1, kv_heads, capacity, head_dim]",
            "layers": self.layers,
            "kv_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "capacity": self.capacity,
            "element_type": self.elt,
            "updated": "in place",
        }


class _NoMatch(Exception):
    """The graph is not the attention this rewrite knows; the caller keeps the exported interface."""


_ELT = {TensorProto.FLOAT: "f32", TensorProto.FLOAT16: "f16"}


class _Graph:
    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.g = model.graph
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        self.producer: dict[str, onnx.NodeProto] = {}
        for n in self.g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
            for o in n.output:
                self.producer[o] = n
        self.inits = {t.name: t for t in self.g.initializer}
        self._n = 0

    def name(self, stem: str) -> str:
        self._n += 1
        return f"/rvdeploy/kv/{stem}_{self._n}"

    def const(self, stem: str, values, dtype=np.int64) -> str:
        name = self.name(stem)
        self.g.initializer.append(numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
        return name

    def scalar_const(self, name: str) -> bool:
        """Whether `name` is a one-element constant (an initializer or a Constant node)."""
        if name in self.inits:
            return int(np.prod(self.inits[name].dims)) == 1
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            t = next((a.t for a in node.attribute if a.name == "value"), None)
            return t is not None and int(np.prod(t.dims)) == 1
        return False

    def only_consumer(self, name: str) -> onnx.NodeProto:
        users = self.consumers.get(name, [])
        if len(users) != 1:
            raise _NoMatch(f"{name} has {len(users)} consumers")
        return users[0]


def _chain_to_matmul(gr: _Graph, start: str, allowed: set) -> tuple[onnx.NodeProto, list[onnx.NodeProto]]:
    """Follow single consumers from `start` through `allowed` ops to the MatMul that reads it as its
    right operand: (the MatMul, the ops on the way)."""
    path = []
    value = start
    while True:
        users = [u for u in gr.consumers.get(value, []) if u.op_type != "Shape"]
        if len(users) != 1:
            raise _NoMatch(f"{value}: {len(users)} non-Shape consumers")
        node = users[0]
        if node.op_type == "MatMul":
            if node.input[1] != value:
                raise _NoMatch(f"{node.name}: the cache is its left operand")
            return node, path
        if node.op_type not in allowed or list(node.input).index(value) != 0:
            raise _NoMatch(f"{node.name}: {node.op_type} between the cache and attention")
        if node.op_type in ("Mul", "Div") and not gr.scalar_const(node.input[1]):
            raise _NoMatch(f"{node.name}: scaled by a non-constant")
        path.append(node)
        value = node.output[0]


def _inferred_dims(model: onnx.ModelProto) -> dict[str, list]:
    """Every value's dims (int, or None where symbolic) by ONNX shape inference on the original graph."""
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)  # resolves Reshape targets
    dims = {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        t = v.type.tensor_type
        if t.HasField("shape"):
            dims[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return dims


def _shapes_of(gr: _Graph, path: list[onnx.NodeProto], shape_fix: dict, length: str) -> None:
    """Shape nodes reading the removed repeat/transpose ops get their value computed instead."""
    for n in path:
        for u in gr.consumers.get(n.output[0], []):
            if u.op_type == "Shape":
                shape_fix[u.output[0]] = (u, n.output[0], length)


def _computed_shape(gr: _Graph, node: onnx.NodeProto, dims: list | None, length: str) -> onnx.NodeProto:
    """`Shape(x)` of a removed cache tensor x rebuilt from its static dims, its one dynamic dim (the context)
    taken from `length` ([1] int64); honours Shape's start/end."""
    if dims is None or sum(d is None for d in dims) != 1:
        raise _NoMatch(f"{node.name}: shape of {node.input[0]} not static but for the context")
    attrs = {a.name: a.i for a in node.attribute}
    dims = dims[slice(attrs.get("start", 0), attrs.get("end"))]
    parts = [length if d is None else gr.const("dim", [d]) for d in dims]
    if len(parts) == 1:
        return helper.make_node("Identity", parts, [node.output[0]])
    return helper.make_node("Concat", parts, [node.output[0]], axis=0)


@dataclass(frozen=True)
class _Shapes:
    group_q: str  # [1, kv_heads, group, d]
    scores: str  # [1, A, B, total]
    group_p: str  # [1, kv_heads, group, total]
    out: str  # [1, A, B, d]
    ab: tuple[int, int] | None = None  # (A, B) when static


def _attention_shapes(
    gr: _Graph, added: list, q: str, q_dims: list | None, heads: int | None, kv_heads: int, head_dim: int, total_1d: str
) -> _Shapes:
    """The reshape targets around the grouped attention. Static but for the context when the query head count
    is known (decode has one position, so A * B = heads): IREE then sees static head dims and vectorizes the
    softmax; otherwise computed from the queries' shape at run time. Never 0 (copy) or -1 dims: IREE 3.13
    mis-sized Reshapes with those."""
    a = q_dims[1] if q_dims and len(q_dims) == 4 else None
    if heads and a and heads % a == 0 and heads % kv_heads == 0:
        b, group = heads // a, heads // kv_heads
        scores, group_p = gr.name("scores_shape"), gr.name("group_p")
        added.append(helper.make_node("Concat", [gr.const("ab", [1, a, b]), total_1d], [scores], axis=0))
        added.append(
            helper.make_node("Concat", [gr.const("kv_group", [1, kv_heads, group]), total_1d], [group_p], axis=0)
        )
        return _Shapes(
            gr.const("group_q", [1, kv_heads, group, head_dim]),
            scores,
            group_p,
            gr.const("out", [1, a, b, head_dim]),
            (a, b),
        )
    q_shape, ab, rows, group = gr.name("q_shape"), gr.name("q_ab"), gr.name("q_rows"), gr.name("group")
    added.append(helper.make_node("Shape", [q], [q_shape]))
    added.append(helper.make_node("Slice", [q_shape, gr.const("one", [1]), gr.const("three", [3])], [ab]))
    added.append(helper.make_node("ReduceProd", [ab], [rows], keepdims=1))
    added.append(helper.make_node("Div", [rows, gr.const("kv_heads", [kv_heads])], [group]))
    heads_1d = gr.const("kv_heads", [1, kv_heads])
    group_q, lead, scores, group_p = gr.name("group_q"), gr.name("q_lead"), gr.name("scores_shape"), gr.name("group_p")
    added.append(helper.make_node("Concat", [heads_1d, group, gr.const("head_dim", [head_dim])], [group_q], axis=0))
    added.append(helper.make_node("Slice", [q_shape, gr.const("zero", [0]), gr.const("three", [3])], [lead]))
    added.append(helper.make_node("Concat", [lead, total_1d], [scores], axis=0))
    added.append(helper.make_node("Concat", [heads_1d, group, total_1d], [group_p], axis=0))
    return _Shapes(group_q, scores, group_p, q_shape)


_BOOLEAN = {"IsNaN", "IsInf", "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Not", "And", "Or"}


def _between(gr: _Graph, start: str, end: str) -> list[tuple[str, int | None]]:
    """The values on every path from `start` to `end` (both excluded), with TensorProto.BOOL for comparisons'
    outputs and None (the graph's float type) for the rest."""
    forward, todo = set(), [start]
    while todo:
        for n in gr.consumers.get(todo.pop(), []):
            for o in n.output:
                if o not in forward and o != end:
                    forward.add(o)
                    todo.append(o)
    backward, todo = set(), [end]
    while todo:
        n = gr.producer.get(todo.pop())
        for i in n.input if n is not None else ():
            if i not in backward and i != start:
                backward.add(i)
                todo.append(i)
    return [(v, TensorProto.BOOL if gr.producer[v].op_type in _BOOLEAN else None) for v in sorted(forward & backward)]


def _perm(node: onnx.NodeProto) -> list[int] | None:
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), None)


def rewrite_decode(
    src: Path, dst: Path, capacity: int, kv_heads: int, head_dim: int, heads: int | None = None
) -> CacheLayout | None:
    """Rewrite the static decode graph `src` to the fixed-capacity cache; write it to `dst` and return the
    layout, or None (nothing written) when the graph's attention is not the pattern this knows. `heads`: the
    query head count (config.json's num_attention_heads), which lets the attention shapes be static."""
    model = onnx.load(str(src), load_external_data=False)
    try:
        layout, dynamic = _rewrite(model, capacity, kv_heads, head_dim, heads)
    except _NoMatch:
        return None
    if dynamic:
        # the importer's own inference does not propagate shape values, and the shapes computed at run time
        # feed Reshapes downstream (onnxruntime-genai exports): record the types inferred with them (less
        # precise elsewhere, hence only here)
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    onnx.save(model, str(dst))
    return layout


def _rewrite(
    model: onnx.ModelProto, capacity: int, kv_heads: int, head_dim: int, heads: int | None
) -> tuple[CacheLayout, bool]:
    gr = _Graph(model)
    g = gr.g
    inputs = {v.name: v for v in g.input}
    pasts = {}
    for name, v in inputs.items():
        m = _PAST.fullmatch(name)
        if m:
            pasts[(int(m.group(1)), m.group(2))] = v
    layers = sorted({i for i, _ in pasts})
    if not layers or layers != list(range(len(layers))) or len(pasts) != 2 * len(layers):
        raise _NoMatch("no past_key_values.N.key/value pairs")
    elts = {pasts[k].type.tensor_type.elem_type for k in pasts}
    if len(elts) != 1 or next(iter(elts)) not in _ELT:
        raise _NoMatch("cache element type")
    elem = next(iter(elts))
    removed: list[onnx.NodeProto] = []
    added: list[onnx.NodeProto] = []
    new_inputs, new_outputs, value_info = [], [], []
    shape_fix: dict[str, tuple] = {}  # a Shape node's output -> (the node, the value it reads, its length)

    plen = helper.make_tensor_value_info(PAST_LENGTH, TensorProto.INT64, [])
    plen_1d = gr.name("past_length_1d")
    added.append(helper.make_node("Reshape", [PAST_LENGTH, gr.const("shape_1", [1])], [plen_1d]))
    total_1d = gr.name("total_1d")
    added.append(helper.make_node("Add", [plen_1d, gr.const("one", [1])], [total_1d]))
    dims = _inferred_dims(model)

    outputs = {v.name for v in g.output}
    dynamic = False  # some attention shape known only at run time
    for layer in layers:
        views = {}
        for kind in ("key", "value"):
            past = f"past_key_values.{layer}.{kind}"
            present = f"present.{layer}.{kind}"
            concat = [u for u in gr.consumers.get(past, []) if u.op_type == "Concat"]
            others = [u for u in gr.consumers.get(past, []) if u.op_type not in ("Concat", "Shape")]
            if len(concat) != 1 or others or list(concat[0].output) != [present] or concat[0].input[0] != past:
                raise _NoMatch(f"{past}: not one Concat into {present}")
            axis = next((a.i for a in concat[0].attribute if a.name == "axis"), None)
            if axis not in (2, -2) or present not in outputs:
                raise _NoMatch(f"{concat[0].name}: axis {axis}")
            new = concat[0].input[1]
            for u in gr.consumers.get(past, []):
                if u.op_type == "Shape":
                    shape_fix[u.output[0]] = (u, past, plen_1d)
            for u in gr.consumers.get(present, []):
                if u.op_type == "Shape":
                    shape_fix[u.output[0]] = (u, present, total_1d)
            removed.append(concat[0])
            cache_dims = (1, kv_heads, head_dim, capacity) if kind == "key" else (1, kv_heads, capacity, head_dim)
            cache_in, cache_out = cache_input(layer, kind), f"cache_out.{layer}.{kind}"
            view = gr.name(f"{kind}_view")
            added.append(
                helper.make_node(
                    APPEND,
                    [cache_in, new, PAST_LENGTH],
                    [cache_out, view],
                    domain=DOMAIN,
                    name=f"/rvdeploy/kv/append.{layer}.{kind}",
                    transpose=1 if kind == "key" else 0,
                )
            )
            new_inputs.append(helper.make_tensor_value_info(cache_in, elem, cache_dims))
            new_outputs.append(helper.make_tensor_value_info(cache_out, elem, cache_dims))
            view_dims = (1, kv_heads, head_dim, "total") if kind == "key" else (1, kv_heads, "total", head_dim)
            value_info.append(helper.make_tensor_value_info(view, elem, view_dims))
            views[kind] = view

        # scores: the MatMul reading the repeated, transposed (and maybe scaled) keys
        score, kpath = _chain_to_matmul(gr, f"present.{layer}.key", _K_CHAIN)
        transposes = [n for n in kpath if n.op_type == "Transpose"]
        if len(transposes) != 1 or _perm(transposes[0]) != [0, 1, 3, 2]:
            raise _NoMatch(f"{score.name}: keys not read transposed")
        keys, scales = views["key"], []
        for n in kpath:  # the export's scale on the keys (sqrt of 1/sqrt(d) on each side) goes on the queries:
            if n.op_type in ("Mul", "Div"):  # the same product, without a pass over the cache
                scales.append(n)
            elif n.op_type == "Cast":
                out = gr.name("key_cast")
                added.append(
                    helper.make_node(
                        "Cast", [keys], [out], **{a.name: helper.get_attribute_value(a) for a in n.attribute}
                    )
                )
                keys = out
        removed += kpath + [score]
        _shapes_of(gr, kpath, shape_fix, total_1d)
        # queries [1, A, B, d]: A heads of one position (optimum) or A kv heads of B grouped rows (the genai
        # rewrite), regrouped as [1, kv_heads, A*B/kv_heads, d] (query head h reads kv head h // group)
        shapes = _attention_shapes(
            gr, added, score.input[0], dims.get(score.input[0]), heads, kv_heads, head_dim, total_1d
        )
        qg, s = gr.name("q_grouped"), gr.name("scores_grouped")
        added.append(helper.make_node("Reshape", [score.input[0], shapes.group_q], [qg]))
        for n in scales:
            out = gr.name("q_scaled")
            added.append(helper.make_node(n.op_type, [qg, n.input[1]], [out]))
            qg = out
        added.append(helper.make_node("MatMul", [qg, keys], [s]))
        added.append(helper.make_node("Reshape", [s, shapes.scores], [score.output[0]]))  # the export's [1, A, B, t]
        if shapes.ab:  # the importer infers no shape through a computed Reshape target: give it
            value_info.append(helper.make_tensor_value_info(score.output[0], elem, (1, *shapes.ab, "total")))
        else:
            dynamic = True

        # output: the MatMul reading the repeated values
        pv, vpath = _chain_to_matmul(gr, f"present.{layer}.value", _V_CHAIN)
        removed += vpath + [pv]
        _shapes_of(gr, vpath, shape_fix, total_1d)
        pg, o = gr.name("probs_grouped"), gr.name("attn_grouped")
        # [1, A, B, total] -> [1, kv_heads, group, total]; the output [1, kv_heads, group, d] -> [1, A, B, d]
        added.append(helper.make_node("Reshape", [pv.input[0], shapes.group_p], [pg]))
        added.append(helper.make_node("MatMul", [pg, views["value"]], [o]))
        added.append(helper.make_node("Reshape", [o, shapes.out], [pv.output[0]]))
        if shapes.ab:
            value_info.append(helper.make_tensor_value_info(pv.output[0], elem, (1, *shapes.ab, head_dim)))
            # the mask, softmax and NaN guard between the MatMuls keep the scores' shape (decode: one query
            # position); said outright, IREE sees [.., B, total] with B static and keeps the softmax linear
            for value, kind in _between(gr, score.output[0], pv.input[0]):
                value_info.append(helper.make_tensor_value_info(value, kind or elem, (1, *shapes.ab, "total")))

    # Shape nodes of the old cache tensors: computed from the past length (they keep their output names)
    for out, (node, value, length) in shape_fix.items():
        removed.append(node)
        added.append(_computed_shape(gr, node, dims.get(value), length))
    drop = {id(n) for n in removed}
    kept = [n for n in g.node if id(n) not in drop]
    del g.node[:]
    g.node.extend(kept + added)
    old_in = [v for v in g.input if not _PAST.fullmatch(v.name)]
    del g.input[:]
    g.input.extend(old_in + [plen] + new_inputs)
    _toposort(g)
    old_out = [v for v in g.output if not v.name.startswith("present.")]
    del g.output[:]
    g.output.extend(old_out + new_outputs)
    g.value_info.extend(value_info)
    _prune(g)
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return CacheLayout(len(layers), kv_heads, head_dim, capacity, _ELT[elem]), dynamic


def _toposort(g: onnx.GraphProto) -> None:
    """Order nodes so every input is produced before use (graph inputs and initializers are available)."""
    ready = {v.name for v in g.input} | {t.name for t in g.initializer} | {""}
    pending = list(g.node)
    ordered = []
    while pending:
        rest = []
        for n in pending:
            if all(i in ready for i in n.input):
                ordered.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise _NoMatch(f"cycle or missing input at {rest[0].name}")
        pending = rest
    del g.node[:]
    g.node.extend(ordered)


def _prune(g: onnx.GraphProto) -> None:
    """Drop nodes (and initializers) nothing reads any more: the repeats and shapes of the old cache."""
    needed = {v.name for v in g.output}
    keep = []
    for n in reversed(list(g.node)):
        if any(o in needed for o in n.output):
            keep.append(n)
            needed.update(i for i in n.input if i)
    del g.node[:]
    g.node.extend(reversed(keep))
    inits = [t for t in g.initializer if t.name in needed]
    del g.initializer[:]
    g.initializer.extend(inits)
