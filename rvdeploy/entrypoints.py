"""Stage: one module with `prefill`, `decode` and `generate` entry points.

The decode and prefill graphs are imported separately (different static shapes) but share their weight
globals, so they merge into one module. `generate(prompt, max_new_tokens)` runs prefill and then a greedy
decode loop in an `scf.for` carrying the KV cache, so a board needs nothing but stock `iree-run-module`.
The new functions are written as MLIR text (their shape depends on the model), parsed, and moved into
the merged module with the MLIR Python bindings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from iree.compiler import ir

from . import kvstate
from .importer import ImportedGraphs
from .kvcache import CacheLayout
from .mlir_emit import Emitter as _Emitter, call as _call, first_prefill_args as _first_prefill_args
from .mlir_types import TensorType, builtin

_IMPORTED_FUNC = "main_graph"
_PAST = re.compile(r"past_key_values\.(\d+)\.(key|value)")
_PRESENT = re.compile(r"present\.(\d+)\.(key|value)")


@dataclass(frozen=True)
class EntryModule:
    mlir: Path
    params: Path
    entry_points: dict  # name -> signature text, for the manifest


@dataclass(frozen=True)
class _Signature:
    inputs: list[TensorType]
    results: list[TensorType]


def _func(module: ir.Module, name: str) -> ir.Operation:
    for op in module.body.operations:
        if op.operation.name == "func.func" and ir.StringAttr(op.attributes["sym_name"]).value == name:
            return op.operation
    raise ValueError(f"no func @{name} in the imported module")


def _signature(func: ir.Operation) -> _Signature:
    ftype = ir.FunctionType(ir.TypeAttr(func.attributes["function_type"]).value)
    return _Signature(
        [TensorType.parse(str(t)) for t in ftype.inputs], [TensorType.parse(str(t)) for t in ftype.results]
    )


def _opset(func: ir.Operation) -> int:
    return ir.IntegerAttr(func.attributes["torch.onnx_meta.opset_version"]).value


def _generate_text(names_in: list[str], names_out: list[str], pre: _Signature, dec: _Signature, opset: int) -> str:
    attrs = f"attributes {{torch.onnx_meta.opset_version = {opset} : si64}}"
    logits = dec.results[names_out.index("logits")]
    vocab, lt = logits.dims[-1], logits.elt
    kv_slots = [(i, n) for i, n in enumerate(names_in) if _PAST.fullmatch(n)]
    present_slot = {n: i for i, n in enumerate(names_out)}
    # the KV cache as the loop carries it: decode's past types (batch 1, past length dynamic)
    carried = [
        dec.inputs[i].with_dims((1,) + dec.inputs[i].dims[1:2] + (-1,) + dec.inputs[i].dims[3:]) for i, _ in kv_slots
    ]
    row_t = builtin((1, 1, vocab), lt)
    any_rows_t = builtin((1, -1, vocab), lt)

    head = [
        f"func.func private @prefill({', '.join(t.vtensor for t in pre.inputs)}) -> "
        f"({', '.join(t.vtensor for t in pre.results)})",
        f"func.func private @decode({', '.join(t.vtensor for t in dec.inputs)}) -> "
        f"({', '.join(t.vtensor for t in dec.results)})",
        # ONNX ArgMax: first maximal index, like numpy and onnxruntime
        f"func.func private @rvd_argmax(%l: {TensorType((1, 1, vocab), logits.torch_elt).vtensor}) -> "
        f"!torch.vtensor<[1,1,1],si64> {attrs} {{",
        f'  %r = torch.operator "onnx.ArgMax"(%l) {{torch.onnx.axis = -1 : si64, torch.onnx.keepdims = 1 : si64}}'
        f" : ({TensorType((1, 1, vocab), logits.torch_elt).vtensor}) -> !torch.vtensor<[1,1,1],si64>",
        "  return %r : !torch.vtensor<[1,1,1],si64>",
        "}",
        f"func.func private @rvd_next_token(%logits: {any_rows_t}) -> i64 {attrs} {{",
        "  %c0 = arith.constant 0 : index",
        "  %c1 = arith.constant 1 : index",
        f"  %s = tensor.dim %logits, %c1 : {any_rows_t}",
        "  %last = arith.subi %s, %c1 : index",
        f"  %row = tensor.extract_slice %logits[0, %last, 0] [1, 1, {vocab}] [1, 1, 1] : {any_rows_t} to {row_t}",
        f"  %rv = torch_c.from_builtin_tensor %row : {row_t} -> {TensorType((1, 1, vocab), logits.torch_elt).vtensor}",
        f"  %am = func.call @rvd_argmax(%rv) : ({TensorType((1, 1, vocab), logits.torch_elt).vtensor}) -> "
        "!torch.vtensor<[1,1,1],si64>",
        "  %amt = torch_c.to_builtin_tensor %am : !torch.vtensor<[1,1,1],si64> -> tensor<1x1x1xi64>",
        "  %t = tensor.extract %amt[%c0, %c0, %c0] : tensor<1x1x1xi64>",
        "  return %t : i64",
        "}",
    ]

    em = _Emitter()
    em.raw("%c0 = arith.constant 0 : index")
    em.raw("%c1 = arith.constant 1 : index")
    em.raw("%c2 = arith.constant 2 : index")
    em.raw("%nt = tensor.extract %max_new[] : tensor<i64>")
    em.raw("%n = arith.index_cast %nt : i64 to index")
    # at least one step, so the loop bounds stay valid; the result is cut back to max_new_tokens
    em.raw("%steps = arith.maxsi %n, %c1 : index")
    em.raw("%s = tensor.dim %prompt, %c1 : tensor<1x?xi64>")

    # prefill
    args = _first_prefill_args(em, names_in, pre, "%prompt", "%s")
    res = _call(em, "prefill", pre, args)
    first_logits = em.from_torch(res[present_slot["logits"]], pre.results[present_slot["logits"]], any_rows_t)
    tok0 = em.op("tok", f"func.call @rvd_next_token({first_logits}) : ({any_rows_t}) -> i64")
    kv0 = []
    for (slot, name), ct in zip(kv_slots, carried):
        out = present_slot[name.replace("past_key_values", "present")]
        kv0.append(em.from_torch(res[out], pre.results[out], ct.builtin))
    toks = em.op("toks", "tensor.empty(%steps) : tensor<?xi64>")
    last = em.op("last", "arith.subi %steps, %c1 : index")

    # decode loop: step i stores token i and computes token i+1
    ckv = [f"%ckv{j}" for j in range(len(kv_slots))]
    iter_args = ", ".join([f"%tok = {tok0}", f"%toks = {toks}"] + [f"{c} = {v}" for c, v in zip(ckv, kv0)])
    ctypes = ", ".join(["i64", "tensor<?xi64>"] + [t.builtin for t in carried])
    loop = em.fresh("loop")
    em.raw(f"{loop}:{2 + len(ckv)} = scf.for %i = %c0 to {last} step %c1 iter_args({iter_args}) -> ({ctypes}) {{")
    body = _Emitter()
    body._n = em._n
    body.raw("%toks2 = tensor.insert %tok into %toks[%i] : tensor<?xi64>")
    body.raw(f"%past = tensor.dim {ckv[0]}, %c2 : {carried[0].builtin}")
    body.raw("%total = arith.addi %past, %c1 : index")
    body.raw("%past64 = arith.index_cast %past : index to i64")
    dargs = []
    for i, name in enumerate(names_in):
        t = dec.inputs[i]
        if name == "input_ids":
            ids = body.op("ids", "tensor.from_elements %tok : tensor<1x1xi64>")
            dargs.append(body.to_torch(ids, "tensor<1x1xi64>", t))
        elif name == "attention_mask":
            dargs.append(body.to_torch(body.ones("%total"), "tensor<1x?xi64>", t))
        elif name == "position_ids":
            pos = body.op("pos", "tensor.from_elements %past64 : tensor<1x1xi64>")
            dargs.append(body.to_torch(pos, "tensor<1x1xi64>", t))
        else:
            j = [n for _, n in kv_slots].index(name)
            dargs.append(body.to_torch(ckv[j], carried[j].builtin, t))
    dres = _call(body, "decode", dec, dargs)
    dl = body.from_torch(dres[present_slot["logits"]], dec.results[present_slot["logits"]], any_rows_t)
    nxt = body.op("next", f"func.call @rvd_next_token({dl}) : ({any_rows_t}) -> i64")
    nkv = []
    for (slot, name), ct in zip(kv_slots, carried):
        out = present_slot[name.replace("past_key_values", "present")]
        nkv.append(body.from_torch(dres[out], dec.results[out], ct.builtin))
    body.raw(f"scf.yield {', '.join([nxt, '%toks2'] + nkv)} : {ctypes}")
    em.lines += ["  " + ln for ln in body.lines]
    em._n = body._n
    em.raw("}")
    final = em.op("final", f"tensor.insert {loop}#0 into {loop}#1[{last}] : tensor<?xi64>")
    out = em.op("out", f"tensor.extract_slice {final}[0] [%n] [1] : tensor<?xi64> to tensor<?xi64>")
    em.raw(f"return {out} : tensor<?xi64>")

    gen = [f"func.func @generate(%prompt: tensor<1x?xi64>, %max_new: tensor<i64>) -> tensor<?xi64> {attrs} {{"]
    gen += em.lines + ["}"]
    return "\n".join(head + gen)


def _rename(func: ir.Operation, name: str) -> None:
    func.attributes["sym_name"] = ir.StringAttr.get(name)


def assemble(
    imported: ImportedGraphs, names_in: list[str], names_out: list[str], workdir: Path, cache: CacheLayout | None = None
) -> EntryModule:
    """Merge the two imported graphs and append `generate`; returns the module written to workdir.
    With `cache` (the decode graph rewritten by rvdeploy.kvcache), the entry points keep the KV cache in the
    module at that fixed capacity (rvdeploy.kvstate) instead of taking and returning it."""
    with ir.Context() as ctx:
        ctx.allow_unregistered_dialects = True
        module = ir.Module.parse(imported.decode_mlir.read_text())
        prefill_mod = ir.Module.parse(imported.prefill_mlir.read_text())
        dec_func = _func(module, _IMPORTED_FUNC)
        pre_func = _func(prefill_mod, _IMPORTED_FUNC)
        dec, pre, opset = _signature(dec_func), _signature(pre_func), _opset(dec_func)
        if cache is not None:
            kvstate.lower_appends(module, cache, opset)
        _rename(dec_func, "decode_graph" if cache else "decode")
        _rename(pre_func, "prefill_graph" if cache else "prefill")
        if cache is not None:
            for f in (dec_func, pre_func):
                f.attributes["sym_visibility"] = ir.StringAttr.get("private")
        # The weight globals are the same in both imports (same keys); keep decode's copy.
        pre_func.detach_from_parent()
        module.body.append(pre_func)

        text = (
            kvstate.entry_points_text(names_in, names_out, pre, dec, cache, opset)
            if cache
            else _generate_text(names_in, names_out, pre, dec, opset)
        )
        added = ir.Module.parse(text)
        for op in list(added.body.operations):
            if op.operation.name == "func.func" and len(op.regions[0].blocks) == 0:
                continue  # the declarations of prefill/decode that let the text parse alone
            op.detach_from_parent()
            module.body.append(op)
        module.operation.verify()
        out = workdir / "module.mlir"
        out.write_text(str(module))
    if cache is not None:
        logits = pre.results[names_out.index("logits")]
        return EntryModule(
            mlir=out,
            params=imported.params,
            entry_points=kvstate.signatures(cache, logits.dims[-1], logits.elt),
        )
    entry_points = {
        "prefill": f"({', '.join(t.builtin for t in pre.inputs)}) -> ({', '.join(t.builtin for t in pre.results)})",
        "decode": f"({', '.join(t.builtin for t in dec.inputs)}) -> ({', '.join(t.builtin for t in dec.results)})",
        "generate": "(tensor<1x?xi64> prompt_ids, tensor<i64> max_new_tokens) -> tensor<?xi64> new_ids",
    }
    return EntryModule(mlir=out, params=imported.params, entry_points=entry_points)
