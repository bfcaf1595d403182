"""The fixed-capacity KV cache in the module (the MLIR side of rvdeploy.kvcache).

The cache lives in mutable module globals, one key cache [1, kv_heads, head_dim, capacity] and one value
cache [1, kv_heads, capacity, head_dim] per layer, allocated once when the module loads. Each decode step's
`rvdeploy.RvdKVAppend` becomes a `tensor.insert_slice` of the new token's keys or values at `past_length`
into the loaded global, stored back to the same global, which IREE performs in place; the attention reads
a view of the filled part. The entry points lose their KV arguments:

  prefill(input_ids: tensor<1x?xi64>, past_length: i64 = 0) -> logits of the last position [1, 1, V]
      starts a conversation: runs the exported prefill graph on the S tokens and writes their keys and values
      into the globals at 0..S-1 (later tokens, a chat's next turn included, go through decode);
  decode(input_ids: tensor<1x1xi64>, past_length: i64) -> logits [1, 1, V]
  generate(prompt, max_new_tokens) -> new ids   (greedy, from an empty cache)

A caller keeps only the count of cached tokens; a new conversation starts with prefill.
"""

from __future__ import annotations

from iree.compiler import ir

from .kvcache import APPEND, PAST_LENGTH, CacheLayout, cache_input
from .mlir_emit import Emitter as _Emitter, call as _call, first_prefill_args as _first_prefill_args
from .mlir_types import TensorType, builtin


def global_name(layer: int, kind: str) -> str:
    return f"rvd_cache_{layer}_{kind}"


def _append_fn(name: str, layout: CacheLayout, kind: str, opset: int) -> str:
    h, d, e = layout.kv_heads, layout.head_dim, layout.elt
    cache = builtin(layout.key_dims() if kind == "key" else layout.value_dims(), e)
    new = builtin((1, h, 1, d), e)
    if kind == "key":  # a column of the transposed cache: [1, h, 1, d] is [1, h, d] is a [1, h, d, 1] slice
        view = builtin((1, h, d, -1), e)
        body = [
            f"  %col = tensor.collapse_shape %new [[0], [1, 2], [3]] : {new} into {builtin((1, h, d), e)}",
            f"  %u = tensor.insert_slice %col into %cache[0, 0, 0, %i] [1, {h}, {d}, 1] [1, 1, 1, 1] : "
            f"{builtin((1, h, d), e)} into {cache}",
            f"  %v = tensor.extract_slice %u[0, 0, 0, 0] [1, {h}, {d}, %n] [1, 1, 1, 1] : {cache} to {view}",
        ]
    else:
        view = builtin((1, h, -1, d), e)
        body = [
            f"  %u = tensor.insert_slice %new into %cache[0, 0, %i, 0] [1, {h}, 1, {d}] [1, 1, 1, 1] : "
            f"{new} into {cache}",
            f"  %v = tensor.extract_slice %u[0, 0, 0, 0] [1, {h}, %n, {d}] [1, 1, 1, 1] : {cache} to {view}",
        ]
    return "\n".join(
        [
            f"func.func private @{name}(%cache: {cache}, %new: {new}, %pos: tensor<i64>) -> ({cache}, {view}) "
            f"attributes {{torch.onnx_meta.opset_version = {opset} : si64}} {{",
            "  %p = tensor.extract %pos[] : tensor<i64>",
            "  %i = arith.index_cast %p : i64 to index",
            "  %c1 = arith.constant 1 : index",
            "  %n = arith.addi %i, %c1 : index",
            *body,
            f"  return %u, %v : {cache}, {view}",
            "}",
        ]
    )


def _walk(op, visit) -> None:
    for region in op.regions:
        for block in region.blocks:
            for child in list(block.operations):
                visit(child.operation)
                _walk(child.operation, visit)


def _create(name, results, operands, attributes=None):
    return ir.Operation.create(name, results=results, operands=operands, attributes=attributes or {})


def _to_builtin(value, want: str):
    t = TensorType.parse(str(value.type))
    b = _create("torch_c.to_builtin_tensor", [ir.Type.parse(t.builtin)], [value]).result
    return b if t.builtin == want else _create("tensor.cast", [ir.Type.parse(want)], [b]).result


def _to_torch(value, torch_type):
    t = TensorType.parse(str(torch_type))
    if str(value.type) != t.builtin:
        value = _create("tensor.cast", [ir.Type.parse(t.builtin)], [value]).result
    return _create("torch_c.from_builtin_tensor", [torch_type], [value]).result


def lower_appends(module: ir.Module, layout: CacheLayout, opset: int) -> int:
    """Replace the decode graph's RvdKVAppend ops by calls of in-place insert helpers; returns how many."""
    ops = []
    _walk(
        module.operation,
        lambda op: (
            ops.append(op)
            if op.name == "torch.operator" and ir.StringAttr(op.attributes["name"]).value == f"onnx.{APPEND}"
            else None
        ),
    )
    helpers = {}
    h, d, e = layout.kv_heads, layout.head_dim, layout.elt
    for op in ops:
        kind = "key" if ir.IntegerAttr(op.attributes["torch.onnx.transpose"]).value else "value"
        name = f"rvd_kv_append_{kind}"
        helpers.setdefault(name, _append_fn(name, layout, kind, opset))
        cache_t = builtin(layout.key_dims() if kind == "key" else layout.value_dims(), e)
        view_t = builtin((1, h, d, -1) if kind == "key" else (1, h, -1, d), e)
        with ir.InsertionPoint(op), op.location:
            args = [
                _to_builtin(op.operands[0], cache_t),
                _to_builtin(op.operands[1], builtin((1, h, 1, d), e)),
                _to_builtin(op.operands[2], "tensor<i64>"),
            ]
            call = _create(
                "func.call",
                [ir.Type.parse(cache_t), ir.Type.parse(view_t)],
                args,
                {"callee": ir.FlatSymbolRefAttr.get(name)},
            )
            new = [_to_torch(call.results[0], op.results[0].type), _to_torch(call.results[1], op.results[1].type)]
        for old, value in zip(op.results, new):
            old.replace_all_uses_with(value)
        op.erase()
    if helpers:
        added = ir.Module.parse("\n".join(helpers.values()))
        for fn in list(added.body.operations):
            fn.detach_from_parent()
            module.body.append(fn)
    return len(ops)


def _globals(layout: CacheLayout) -> list[str]:
    """The caches, each filled with its own number: IREE 3.13 fuses mutable globals that start equal and are
    only ever updated in place (with `dense<0.0>` every layer's keys shared one buffer). Positions past the
    cached count are never read, so the numbers don't matter."""
    lines = []
    for layer in range(layout.layers):
        for k, (kind, dims) in enumerate((("key", layout.key_dims()), ("value", layout.value_dims()))):
            lines.append(
                f"util.global private mutable @{global_name(layer, kind)} = "
                f"dense<{float(2 * layer + k + 1)}> : {builtin(dims, layout.elt)}"
            )
    return lines


def entry_points_text(names_in: list[str], names_out: list[str], pre, dec, layout: CacheLayout, opset: int) -> str:
    """MLIR text of the stateful `prefill`, `decode` and `generate` (see the module docstring) around the
    imported graphs, renamed `prefill_graph` and `decode_graph` (declared here so the text parses alone).
    `names_in`, `names_out`: the exported graph's inputs and outputs (prefill's, in order); `pre`, `dec`: the
    graphs' signatures."""
    attrs = f"attributes {{torch.onnx_meta.opset_version = {opset} : si64}}"
    logits_at = names_out.index("logits")
    vocab, lt = pre.results[logits_at].dims[-1], pre.results[logits_at].elt
    row_t, rows_t = builtin((1, 1, vocab), lt), builtin((1, -1, vocab), lt)
    h, d, c, e = layout.kv_heads, layout.head_dim, layout.capacity, layout.elt
    kt_t, v_t = builtin(layout.key_dims(), e), builtin(layout.value_dims(), e)
    dec_names = (
        [n for n in names_in if not n.startswith("past_key_values.")]
        + [PAST_LENGTH]
        + [cache_input(i, k) for i in range(layout.layers) for k in ("key", "value")]
    )
    if len(dec_names) != len(dec.inputs):
        raise ValueError(f"decode graph has {len(dec.inputs)} inputs, expected {len(dec_names)}")
    text = _globals(layout) + [
        f"func.func private @prefill_graph({', '.join(t.vtensor for t in pre.inputs)}) -> "
        f"({', '.join(t.vtensor for t in pre.results)})",
        f"func.func private @decode_graph({', '.join(t.vtensor for t in dec.inputs)}) -> "
        f"({', '.join(t.vtensor for t in dec.results)})",
    ]

    def load(em: _Emitter, layer: int, kind: str) -> str:
        return em.op("g", f"util.global.load @{global_name(layer, kind)} : {kt_t if kind == 'key' else v_t}")

    # decode: one token at past_length, the caches updated in place
    em = _Emitter()
    em.raw("%c1 = arith.constant 1 : index")
    em.raw("%pi = arith.index_cast %p : i64 to index")
    em.raw("%pt = tensor.from_elements %p : tensor<i64>")
    em.raw("%total = arith.addi %pi, %c1 : index")
    em.raw(f"%cap = arith.constant {c} : index")
    em.raw("%fits = arith.cmpi ule, %total, %cap : index")
    em.raw(f'cf.assert %fits, "decode: the KV cache holds {c} tokens (the bundle\'s context)"')
    args = []
    for i, name in enumerate(dec_names):
        t = dec.inputs[i]
        if name == "input_ids":
            args.append(em.to_torch("%ids", "tensor<1x1xi64>", t))
        elif name == "attention_mask":
            args.append(em.to_torch(em.ones("%total"), "tensor<1x?xi64>", t))
        elif name == "position_ids":
            args.append(em.to_torch(em.op("pos", "tensor.from_elements %p : tensor<1x1xi64>"), "tensor<1x1xi64>", t))
        elif name == PAST_LENGTH:
            args.append(em.to_torch("%pt", "tensor<i64>", t))
        elif name.startswith("cache."):
            _, layer, kind = name.split(".")
            g = load(em, int(layer), kind)
            args.append(em.to_torch(g, kt_t if kind == "key" else v_t, t))
        else:
            raise ValueError(f"decode graph input {name!r}: no value for it")
    res = _call(em, "decode_graph", dec, args)
    for j, (i, kind) in enumerate((i, k) for i in range(layout.layers) for k in ("key", "value")):
        typ = kt_t if kind == "key" else v_t
        new = em.from_torch(res[1 + j], dec.results[1 + j], typ)
        em.raw(f"util.global.store {new}, @{global_name(i, kind)} : {typ}")
    logits = em.from_torch(res[0], dec.results[0], row_t)
    em.raw(f"return {logits} : {row_t}")
    text += [f"func.func @decode(%ids: tensor<1x1xi64>, %p: i64) -> {row_t} {attrs} {{"] + em.lines + ["}"]

    # prefill: the first S tokens of a conversation (past_length 0; later tokens go through decode: a prefill
    # reading the cached past needs a slice whose size is known only at run time, which IREE 3.13 could not
    # place in a dispatch); the graph's present tensors go into the caches
    em = _Emitter()
    em.raw("%c1 = arith.constant 1 : index")
    em.raw("%c0_i64 = arith.constant 0 : i64")
    em.raw("%first = arith.cmpi eq, %p, %c0_i64 : i64")
    em.raw('cf.assert %first, "prefill starts a conversation (past_length 0): feed later tokens to decode"')
    em.raw("%s = tensor.dim %ids, %c1 : tensor<1x?xi64>")
    em.raw(f"%cap = arith.constant {c} : index")
    em.raw("%fits = arith.cmpi ule, %s, %cap : index")
    em.raw(f'cf.assert %fits, "prefill: the KV cache holds {c} tokens (the bundle\'s context)"')
    args = _first_prefill_args(em, names_in, pre, "%ids", "%s")
    res = _call(em, "prefill_graph", pre, args)
    for name in (n for n in names_in if n.startswith("past_key_values.")):
        _, layer, kind = name.rsplit(".", 2)
        g = load(em, int(layer), kind)
        at = names_out.index(f"present.{layer}.{kind}")
        new = em.from_torch(res[at], pre.results[at], builtin((1, h, -1, d), e))
        if kind == "key":
            empty = em.op("e", f"tensor.empty(%s) : {builtin((1, h, d, -1), e)}")
            new_t = em.op(
                "nt",
                f"linalg.transpose ins({new} : {builtin((1, h, -1, d), e)}) "
                f"outs({empty} : {builtin((1, h, d, -1), e)}) permutation = [0, 1, 3, 2]",
            )
            upd = em.op(
                "u",
                f"tensor.insert_slice {new_t} into {g}[0, 0, 0, 0] [1, {h}, {d}, %s] [1, 1, 1, 1] : "
                f"{builtin((1, h, d, -1), e)} into {kt_t}",
            )
            em.raw(f"util.global.store {upd}, @{global_name(int(layer), kind)} : {kt_t}")
        else:
            upd = em.op(
                "u",
                f"tensor.insert_slice {new} into {g}[0, 0, 0, 0] [1, {h}, %s, {d}] [1, 1, 1, 1] : "
                f"{builtin((1, h, -1, d), e)} into {v_t}",
            )
            em.raw(f"util.global.store {upd}, @{global_name(int(layer), kind)} : {v_t}")
    rows = em.from_torch(res[logits_at], pre.results[logits_at], rows_t)  # all positions', or the last's
    n_rows = em.op("nrows", f"tensor.dim {rows}, %c1 : {rows_t}")
    last = em.op("last", f"arith.subi {n_rows}, %c1 : index")
    row = em.op("row", f"tensor.extract_slice {rows}[0, {last}, 0] [1, 1, {vocab}] [1, 1, 1] : {rows_t} to {row_t}")
    em.raw(f"return {row} : {row_t}")
    text += [f"func.func @prefill(%ids: tensor<1x?xi64>, %p: i64) -> {row_t} {attrs} {{"] + em.lines + ["}"]

    # generate: greedy from an empty cache, no more steps than the cache holds
    tv = TensorType((1, 1, vocab), pre.results[0].torch_elt).vtensor
    text += [
        f"func.func private @rvd_argmax(%l: {row_t}) -> i64 {attrs} {{",
        "  %c0 = arith.constant 0 : index",
        f"  %lv = torch_c.from_builtin_tensor %l : {row_t} -> {tv}",
        f'  %r = torch.operator "onnx.ArgMax"(%lv) {{torch.onnx.axis = -1 : si64, torch.onnx.keepdims = 1 : si64}}'
        f" : ({tv}) -> !torch.vtensor<[1,1,1],si64>",
        "  %rb = torch_c.to_builtin_tensor %r : !torch.vtensor<[1,1,1],si64> -> tensor<1x1x1xi64>",
        "  %t = tensor.extract %rb[%c0, %c0, %c0] : tensor<1x1x1xi64>",
        "  return %t : i64",
        "}",
        f"func.func @generate(%prompt: tensor<1x?xi64>, %max_new: tensor<i64>) -> tensor<?xi64> {attrs} {{",
        "  %c0 = arith.constant 0 : index",
        "  %c1 = arith.constant 1 : index",
        f"  %cap = arith.constant {c} : index",
        "  %zero = arith.constant 0 : i64",
        "  %s = tensor.dim %prompt, %c1 : tensor<1x?xi64>",
        "  %nt = tensor.extract %max_new[] : tensor<i64>",
        "  %n0 = arith.index_cast %nt : i64 to index",
        # the last token is never fed back: prompt + n - 1 tokens are cached at most
        "  %room = arith.subi %cap, %s : index",
        "  %room1 = arith.addi %room, %c1 : index",
        "  %n = arith.minsi %n0, %room1 : index",
        "  %steps = arith.maxsi %n, %c1 : index",
        f"  %l0 = func.call @prefill(%prompt, %zero) : (tensor<1x?xi64>, i64) -> {row_t}",
        f"  %tok0 = func.call @rvd_argmax(%l0) : ({row_t}) -> i64",
        "  %toks = tensor.empty(%steps) : tensor<?xi64>",
        "  %last = arith.subi %steps, %c1 : index",
        "  %loop:2 = scf.for %i = %c0 to %last step %c1 iter_args(%tok = %tok0, %acc = %toks) -> (i64, tensor<?xi64>) {",
        "    %acc2 = tensor.insert %tok into %acc[%i] : tensor<?xi64>",
        "    %pos = arith.addi %s, %i : index",
        "    %pos64 = arith.index_cast %pos : index to i64",
        "    %ids = tensor.from_elements %tok : tensor<1x1xi64>",
        f"    %l = func.call @decode(%ids, %pos64) : (tensor<1x1xi64>, i64) -> {row_t}",
        f"    %next = func.call @rvd_argmax(%l) : ({row_t}) -> i64",
        "    scf.yield %next, %acc2 : i64, tensor<?xi64>",
        "  }",
        "  %final = tensor.insert %loop#0 into %loop#1[%last] : tensor<?xi64>",
        "  %out = tensor.extract_slice %final[0] [%n] [1] : tensor<?xi64> to tensor<?xi64>",
        "  return %out : tensor<?xi64>",
        "}",
    ]
    return "\n".join(text)


def signatures(layout: CacheLayout, vocab: int, elt: str) -> dict:
    """The entry points as the manifest records them."""
    row = builtin((1, 1, vocab), elt)
    return {
        "prefill": f"(tensor<1x?xi64> input_ids, i64 past_length) -> ({row} logits)",
        "decode": f"(tensor<1x1xi64> input_ids, i64 past_length) -> ({row} logits)",
        "generate": "(tensor<1x?xi64> prompt_ids, tensor<i64> max_new_tokens) -> tensor<?xi64> new_ids",
    }
