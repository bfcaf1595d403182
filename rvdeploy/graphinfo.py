"""Checks and facts about an ONNX causal-LM graph (Llama-style, with KV cache), before anything is compiled.

The graph is read without its external data (`onnx.load(..., load_external_data=False)`): exports of real
models are GBs, and every fact needed here lives in the graph's structure. Everything that makes the graph
unusable for rvdeploy raises one RvdeployError naming the file and what to do.

Expected interface (optimum `--task text-generation-with-past` and onnx-community exports):
  inputs   input_ids [batch, seq], attention_mask, position_ids (optional),
           past_key_values.N.key / .value [batch, kv_heads, past_seq, head_dim] for N = 0..L-1
  outputs  logits [batch, seq, vocab], present.N.key / .value for the same N
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import onnx
from onnx import TensorProto

from rvdeploy import genai_interface, modelconfig
from rvdeploy.errors import RvdeployError
from rvdeploy.fused_ops import refusal as fused_refusal

_PAST_RE = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
_PRESENT_RE = re.compile(r"^present\.(\d+)\.(key|value)$")
_DTYPES = {TensorProto.FLOAT: "f32", TensorProto.FLOAT16: "f16"}
_EXPORT_HINT = "export with optimum-cli export onnx --task text-generation-with-past"


@dataclass(frozen=True)
class LlmGraph:
    path: Path
    opset: int  # ai.onnx opset
    num_layers: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    dtype: str  # "f32" | "f16": element type of logits and of the KV cache
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    has_position_ids: bool
    external_data: bool  # some tensors live in files beside the graph
    op_counts: dict[str, int] = field(default_factory=dict)  # "domain::OpType" (domain "" = ai.onnx) -> count

    def to_dict(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        d["inputs"] = list(self.inputs)
        d["outputs"] = list(self.outputs)
        d["op_counts"] = dict(sorted(self.op_counts.items()))
        return d


@dataclass(frozen=True)
class UnsupportedOp:
    domain: str
    op_type: str
    reason: str
    hint: str

    @property
    def key(self) -> str:
        return f"{self.domain}::{self.op_type}"

    @property
    def display(self) -> str:
        return f"{self.domain or 'ai.onnx'} {self.op_type}"


@lru_cache(maxsize=1)
def unsupported_ops() -> dict[str, UnsupportedOp]:
    """The ops IREE 3.13's ONNX import cannot take (rvdeploy/unsupported_ops.toml), by "domain::OpType"."""
    data = tomllib.loads((Path(__file__).parent / "unsupported_ops.toml").read_text())
    ops = [UnsupportedOp(_norm_domain(e["domain"]), e["op_type"], e["reason"], e["hint"]) for e in data["op"]]
    return {op.key: op for op in ops}


def _norm_domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


# ---------------------------------------------------------------------------------------------- walking


@dataclass(frozen=True)
class _NodeRef:
    node: onnx.NodeProto
    index: int  # position in its own graph
    where: str  # "" for the main graph, else e.g. "If node 'cond' then_branch"


def _subgraphs(node: onnx.NodeProto) -> Iterator[tuple[str, onnx.GraphProto]]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.name, attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            for i, g in enumerate(attr.graphs):
                yield f"{attr.name}[{i}]", g


def _node_label(node: onnx.NodeProto, index: int) -> str:
    if node.name:
        return f"'{node.name}'"
    out = next((o for o in node.output if o), None)
    return f"#{index} (unnamed, output '{out}')" if out else f"#{index} (unnamed)"


def _walk_nodes(graph: onnx.GraphProto, where: str = "") -> Iterator[_NodeRef]:
    """Every node of a graph and of its subgraphs (If/Loop/Scan bodies, any depth)."""
    for i, node in enumerate(graph.node):
        yield _NodeRef(node, i, where)
        for attr_name, sub in _subgraphs(node):
            inner = f"{node.op_type} node {_node_label(node, i)} {attr_name}"
            yield from _walk_nodes(sub, f"{where} > {inner}" if where else inner)


def walk_tensors(graph: onnx.GraphProto) -> Iterator[TensorProto]:
    """Every tensor a graph stores: initializers, Constant values, sparse parts, subgraphs included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.TENSORS:
                yield from attr.tensors
            elif attr.type == onnx.AttributeProto.SPARSE_TENSOR:
                yield attr.sparse_tensor.values
                yield attr.sparse_tensor.indices
        for _, sub in _subgraphs(node):
            yield from walk_tensors(sub)


def external_data_locations(model: onnx.ModelProto) -> list[str]:
    """The external data files a model's tensors reference (relative to the graph file), in first-use order."""
    seen: dict[str, None] = {}
    graphs = [model.graph] + [onnx.helper.make_graph(list(f.node), f.name, [], []) for f in model.functions]
    for graph in graphs:
        for t in walk_tensors(graph):
            if t.data_location == TensorProto.EXTERNAL:
                loc = next((e.value for e in t.external_data if e.key == "location"), "")
                seen.setdefault(loc, None)
    return list(seen)


def missing_external_data(onnx_path: Path, model: onnx.ModelProto) -> list[str]:
    """The referenced external data files that are not beside the graph file."""
    return [loc for loc in external_data_locations(model) if not loc or not (onnx_path.parent / loc).is_file()]


# ---------------------------------------------------------------------------------------------- helpers


def _load(onnx_path: Path) -> onnx.ModelProto:
    if not onnx_path.is_file():
        raise RvdeployError(f"model file not found: {onnx_path}")
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError, OSError, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RvdeployError(f"{onnx_path} is not a readable ONNX model: {first}") from None
    if model.ir_version == 0 or not (model.graph.node or model.graph.output):
        # A protobuf parse of a non-ONNX file can "succeed" and give an empty model.
        raise RvdeployError(f"{onnx_path} is not a readable ONNX model: no graph in it")
    return model


def _config_json(onnx_path: Path) -> dict | None:
    for d in (onnx_path.parent, onnx_path.parent.parent):
        p = d / "config.json"
        if p.is_file():
            return modelconfig.read(p)
    return None


def _dims(vi: onnx.ValueInfoProto) -> list[int | None]:
    """Static dims as ints, symbolic or unknown dims as None."""
    shape = vi.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in shape.dim]


def _rank(vi: onnx.ValueInfoProto) -> int | None:
    tt = vi.type.tensor_type
    return len(tt.shape.dim) if tt.HasField("shape") else None


def _dtype_name(elem_type: int) -> str:
    return _DTYPES.get(elem_type) or TensorProto.DataType.Name(elem_type).lower()


def _layers(names: list[str], regex: re.Pattern) -> dict[int, set[str]]:
    found: dict[int, set[str]] = {}
    for n in names:
        m = regex.match(n)
        if m:
            found.setdefault(int(m.group(1)), set()).add(m.group(2))
    return found


# ---------------------------------------------------------------------------------------------- checks


def _check_kv(path: Path, inputs: list[str], outputs: list[str]) -> int:
    """Checks input_ids/logits and the past/present pairs; returns the number of layers."""
    if "input_ids" not in inputs:
        raise RvdeployError(
            f"{path} has no input_ids input (inputs: {', '.join(inputs) or 'none'}): not a causal-LM graph",
            _EXPORT_HINT,
        )
    if "logits" not in outputs:
        raise RvdeployError(
            f"{path} has no logits output (outputs: {', '.join(outputs) or 'none'}): not a causal-LM graph",
            _EXPORT_HINT,
        )
    past = _layers(inputs, _PAST_RE)
    if not past:
        raise RvdeployError(
            f"{path} has no past_key_values.N.key/value inputs: export with --task text-generation-with-past"
        )
    n = max(past) + 1
    for i in range(n):
        for kind in ("key", "value"):
            if kind not in past.get(i, set()):
                raise RvdeployError(
                    f"{path} has past_key_values inputs for layers 0..{n - 1} but no past_key_values.{i}.{kind}",
                    _EXPORT_HINT,
                )
    present = _layers(outputs, _PRESENT_RE)
    if not present:
        raise RvdeployError(f"{path} has past_key_values.N inputs but no present.N.key/value outputs", _EXPORT_HINT)
    for i in range(n):
        for kind in ("key", "value"):
            if kind not in present.get(i, set()):
                raise RvdeployError(
                    f"{path} has past_key_values.{i}.{kind} input but no present.{i}.{kind} output", _EXPORT_HINT
                )
    extra = sorted(f"present.{i}.{k}" for i, ks in present.items() for k in ks if i >= n)
    if extra:
        raise RvdeployError(
            f"{path} has {extra[0]} output but no past_key_values.{extra[0].split('.', 1)[1]} input", _EXPORT_HINT
        )
    return n


def _check_ops(path: Path, model: onnx.ModelProto) -> dict[str, int]:
    """Counts ops (main graph and subgraphs) and raises on the first op the importer cannot take."""
    table = unsupported_ops()
    counts: dict[str, int] = {}
    bad: list[tuple[UnsupportedOp, _NodeRef]] = []
    for ref in _walk_nodes(model.graph):
        key = f"{_norm_domain(ref.node.domain)}::{ref.node.op_type}"
        counts[key] = counts.get(key, 0) + 1
        if key in table:
            bad.append((table[key], ref))
    # Model-local functions are inlined by the importer: their bodies must import too (not counted above).
    for func in model.functions:
        for ref in _walk_nodes(onnx.helper.make_graph(list(func.node), func.name, [], [])):
            key = f"{_norm_domain(ref.node.domain)}::{ref.node.op_type}"
            if key in table:
                where = f"function {func.domain}::{func.name}" + (f" > {ref.where}" if ref.where else "")
                bad.append((table[key], _NodeRef(ref.node, ref.index, where)))
    consumed = {x for n in model.graph.node for x in n.input} | {o.name for o in model.graph.output}
    for ref in _walk_nodes(model.graph):
        refused = fused_refusal(ref.node, consumed)
        if refused:  # an onnxruntime fused op with a setting rvdeploy.fused_ops does not rewrite
            raise RvdeployError(f"{path}: {refused[0]}", refused[1])
    if bad:
        op, ref = bad[0]
        where = f" in {ref.where}" if ref.where else ""
        others: dict[str, int] = {}
        for o, _ in bad[1:]:
            others[o.key] = others.get(o.key, 0) + 1
        more = ""
        if others:
            more = "; also " + ", ".join(
                f"{n} more {table[k].display}" if k == op.key else f"{n} {table[k].display}" for k, n in others.items()
            )
        raise RvdeployError(
            f"{path}: IREE 3.13 cannot import {op.display} node {_node_label(ref.node, ref.index)}{where}:"
            f" {op.reason}{more}",
            op.hint,
        )
    return counts


# ---------------------------------------------------------------------------------------------- API


def inspect_graph(onnx_path: Path) -> LlmGraph:
    """Reads an ONNX causal LM's structure and checks it can go through IREE 3.13; raises RvdeployError."""
    path = Path(onnx_path)
    model = _load(path)
    graph = model.graph

    opset = next((o.version for o in model.opset_import if _norm_domain(o.domain) == ""), 0)
    init_names = {t.name for t in graph.initializer}
    # onnxruntime-genai exports name their inputs in genai_config.json: checked under the common names
    genai = genai_interface.read_config(path)
    raw_in = [vi.name for vi in graph.input if vi.name not in init_names]
    rename = genai_interface.common_names(genai, raw_in, False) | genai_interface.common_names(
        genai, [vi.name for vi in graph.output], True
    )
    input_vis = {rename.get(vi.name, vi.name): vi for vi in graph.input if vi.name not in init_names}
    output_vis = {rename.get(vi.name, vi.name): vi for vi in graph.output}
    inputs, outputs = list(input_vis), list(output_vis)

    num_layers = _check_kv(path, inputs, outputs)

    missing = missing_external_data(path, model)
    if missing:
        shown = missing[0] or "(a tensor with no location)"
        raise RvdeployError(
            f"{path} references external data {shown}, which is not beside it in {path.parent}",
            "copy the graph together with all its data files",
        )
    external = bool(external_data_locations(model))

    op_counts = _check_ops(path, model)

    # dtype: logits and every KV tensor must agree.
    logits_vi = output_vis["logits"]
    dtype = _dtype_name(logits_vi.type.tensor_type.elem_type)
    for name in [n for n in inputs if _PAST_RE.match(n)] + [n for n in outputs if _PRESENT_RE.match(n)]:
        vi = input_vis.get(name) or output_vis[name]
        kv = _dtype_name(vi.type.tensor_type.elem_type)
        if kv != dtype:
            raise RvdeployError(f"{path}: logits are {dtype} but {name} is {kv}: rvdeploy needs one dtype for both")
    if dtype not in _DTYPES.values():
        raise RvdeployError(f"{path}: logits and KV cache are {dtype}; rvdeploy handles f32 and f16")

    # Shapes: past_key_values.0.key is [batch, kv_heads, past_seq, head_dim], logits [batch, seq, vocab].
    pk = input_vis["past_key_values.0.key"]
    rank = _rank(pk)
    if rank not in (None, 4):
        raise RvdeployError(
            f"{path}: past_key_values.0.key has rank {rank}, expected 4 [batch, kv_heads, past_seq, head_dim]"
        )
    pk_dims = _dims(pk) if rank == 4 else [None] * 4
    lg_dims = _dims(logits_vi) or [None]
    kv_heads, head_dim, vocab = pk_dims[1], pk_dims[3], lg_dims[-1]

    if genai is not None:  # genai_config.json gives what its graph leaves symbolic (head_dim: "kv_cache_dim")
        kv_heads = kv_heads or genai.num_kv_heads
        head_dim = head_dim or genai.head_dim
        vocab = vocab or genai.vocab_size
    if kv_heads is None or head_dim is None or vocab is None:
        cfg = _config_json(path) or {}
        heads = cfg.get("num_attention_heads")
        if kv_heads is None:
            kv_heads = cfg.get("num_key_value_heads") or heads
        if head_dim is None:
            head_dim = cfg.get("head_dim") or (
                cfg["hidden_size"] // heads if cfg.get("hidden_size") and heads else None
            )
        if vocab is None:
            vocab = cfg.get("vocab_size")
        unknown = [n for n, v in (("kv heads", kv_heads), ("head dim", head_dim), ("vocab size", vocab)) if not v]
        if unknown:
            names = ", ".join(unknown[:-1]) + (" and " if len(unknown) > 1 else "") + unknown[-1]
            raise RvdeployError(
                f"{path}: {names} not static in the graph and no config.json beside it gives"
                f" {'it' if len(unknown) == 1 else 'them'}",
                "put the model's config.json next to the .onnx file or in its parent directory",
            )

    return LlmGraph(
        path=path,
        opset=int(opset),
        num_layers=num_layers,
        num_kv_heads=int(kv_heads),
        head_dim=int(head_dim),
        vocab_size=int(vocab),
        dtype=dtype,
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        has_position_ids="position_ids" in input_vis,
        external_data=external,
        op_counts=op_counts,
    )
