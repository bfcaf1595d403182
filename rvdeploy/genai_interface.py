"""The model's interface as its exporter describes it: onnxruntime-genai's genai_config.json, else the graph.

rvdeploy's entry points and its board-side runner speak one interface (rvdeploy.graphinfo's docstring):
input_ids, attention_mask, position_ids (optional), past_key_values.N.key/value in layer order, then logits
and present.N.key/value in the same order, KV [batch, kv_heads, seq, head_dim] with only batch and seq
dynamic. An onnxruntime-genai export says in genai_config.json which of its graph's names play those roles
(`model.decoder.inputs` / `.outputs`, the KV names as printf templates with %d), its KV heads and head size;
the builder's graph leaves head_dim symbolic ("kv_cache_dim"), has no position_ids, orders the KV keys before
values, and passes the mask only to a subgraph that computes seqlens_k for GroupQueryAttention.

`prepare` writes a copy of such a graph in the common interface: names mapped, inputs and outputs put in the
common order, KV dims made static, and the fused ops rewritten to standard ONNX (rvdeploy.fused_ops).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import onnx

from .errors import RvdeployError
from .fused_ops import has_fused, rewrite_model

CONFIG = "genai_config.json"
# genai_config role -> the common name (a template with %d for the per-layer ones)
_ROLES_IN = {
    "input_ids": "input_ids",
    "attention_mask": "attention_mask",
    "position_ids": "position_ids",
    "past_key_names": "past_key_values.%d.key",
    "past_value_names": "past_key_values.%d.value",
}
_ROLES_OUT = {"logits": "logits", "present_key_names": "present.%d.key", "present_value_names": "present.%d.value"}


@dataclass(frozen=True)
class GenaiConfig:
    path: Path
    num_layers: int | None
    num_kv_heads: int | None
    head_dim: int | None
    vocab_size: int | None
    context_length: int | None
    eos_token_ids: tuple[int, ...]
    names_in: dict  # role -> graph name or template
    names_out: dict
    num_heads: int | None = None  # query heads


def find_config(onnx_path: Path) -> Path | None:
    for d in (Path(onnx_path).parent, Path(onnx_path).parent.parent):
        if (d / CONFIG).is_file():
            return d / CONFIG
    return None


def read_config(onnx_path: Path) -> GenaiConfig | None:
    path = find_config(onnx_path)
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
        model = data["model"]
        dec = model["decoder"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RvdeployError(
            f"{path} is not an onnxruntime-genai config ({type(e).__name__}: {e})",
            "remove it or replace it with the one the builder wrote",
        ) from None
    eos = model.get("eos_token_id")
    eos = tuple(eos) if isinstance(eos, list) else (eos,) if isinstance(eos, int) else ()
    return GenaiConfig(
        path,
        dec.get("num_hidden_layers"),
        dec.get("num_key_value_heads"),
        dec.get("head_size"),
        model.get("vocab_size"),
        model.get("context_length"),
        eos,
        dict(dec.get("inputs") or {}),
        dict(dec.get("outputs") or {}),
        dec.get("num_attention_heads"),
    )


def _template_regex(template: str) -> re.Pattern:
    return re.compile("^" + re.escape(template).replace("%d", r"(\d+)") + "$")


def common_names(cfg: GenaiConfig | None, names: list[str], outputs: bool) -> dict[str, str]:
    """graph name -> common name, for the graph's inputs (or outputs) that genai_config gives a role."""
    roles = _ROLES_OUT if outputs else _ROLES_IN
    table = (cfg.names_out if outputs else cfg.names_in) if cfg else {}
    out = {}
    for role, common in roles.items():
        theirs = table.get(role)
        if not isinstance(theirs, str):
            continue
        if "%d" in theirs:
            rx = _template_regex(theirs)
            for n in names:
                m = rx.match(n)
                if m:
                    out[n] = common % int(m.group(1))
        elif theirs in names:
            out[theirs] = common
    return out


def _order_key(name: str) -> tuple:
    """Common order: ids, mask, pos, then per layer key, value (outputs: logits, then per layer key, value)."""
    fixed = {"input_ids": 0, "attention_mask": 1, "position_ids": 2, "logits": 0}
    if name in fixed:
        return (fixed[name], 0, 0)
    m = re.match(r"^(?:past_key_values|present)\.(\d+)\.(key|value)$", name)
    if m:
        return (3, int(m.group(1)), 0 if m.group(2) == "key" else 1)
    return (4, 0, 0)


def _rename(model: onnx.ModelProto, mapping: dict[str, str]) -> None:
    if not mapping:
        return
    for vi in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        vi.name = mapping.get(vi.name, vi.name)
    for node in model.graph.node:
        for i, x in enumerate(node.input):
            node.input[i] = mapping.get(x, x)
        for i, x in enumerate(node.output):
            node.output[i] = mapping.get(x, x)


def _reorder(field, key) -> None:
    items = sorted(list(field), key=key)
    copies = [onnx.ValueInfoProto() for _ in items]
    for c, vi in zip(copies, items):
        c.CopyFrom(vi)
    del field[:]
    field.extend(copies)


def _static_kv_dims(model: onnx.ModelProto, kv_heads: int, head_dim: int) -> None:
    for vi in list(model.graph.input) + list(model.graph.output):
        if _order_key(vi.name)[0] != 3 and not vi.name.startswith("present."):
            continue
        dims = vi.type.tensor_type.shape.dim
        if len(dims) == 4:
            for axis, value in ((1, kv_heads), (3, head_dim)):
                dims[axis].Clear()
                dims[axis].dim_value = value


def io_names(onnx_path: Path) -> dict:
    """{"inputs": (...), "outputs": (...)} of a graph, in its order (what the entry points are called with)."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    return {
        "inputs": tuple(vi.name for vi in model.graph.input if vi.name not in inits),
        "outputs": tuple(vi.name for vi in model.graph.output),
    }


def prepare(
    onnx_path: Path, workdir: Path, kv_heads: int, head_dim: int, cfg: GenaiConfig | None = None
) -> tuple[Path, dict]:
    """(graph in the common interface, what was done); the source is not modified, and returned as it is when
    it already is in that form. `cfg`: the model's genai_config.json (read beside the graph when not given;
    a graph copied into a work directory has left it behind)."""
    cfg = cfg or read_config(onnx_path)
    model = onnx.load(str(onnx_path), load_external_data=False)
    if cfg is None and not has_fused(model):
        return onnx_path, {}
    onnx.load_external_data_for_model(model, str(Path(onnx_path).parent))
    init_names = {t.name for t in model.graph.initializer}
    ins = [vi.name for vi in model.graph.input if vi.name not in init_names]
    mapping = common_names(cfg, ins, False) | common_names(cfg, [vi.name for vi in model.graph.output], True)
    _rename(model, {k: v for k, v in mapping.items() if k != v})
    _reorder(model.graph.input, lambda vi: _order_key(vi.name))
    _reorder(model.graph.output, lambda vi: _order_key(vi.name))
    _static_kv_dims(model, kv_heads, head_dim)
    done = {
        "interface": "genai_config.json" if cfg else "graph",
        "renamed": sum(1 for k, v in mapping.items() if k != v),
    }
    done |= {f"{k}_rewritten" if k != "dead_nodes_dropped" else k: v for k, v in rewrite_model(model, head_dim).items()}
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "model.onnx"
    large = sum(i.ByteSize() for i in model.graph.initializer) > 1_500_000_000
    onnx.save(model, str(out), save_as_external_data=large, location="model.onnx.data" if large else None)
    return out, done
