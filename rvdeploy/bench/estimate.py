"""--estimate: the model's shapes (from the manifest and config.json) and roofline upper bounds on pp and tg from
a target's published figures; no board."""

from __future__ import annotations

from dataclasses import dataclass

from .. import modelconfig
from ..bundle import Bundle
from ..bundle.names import CONFIG
from ..errors import RvdeployError
from ..targets import get_target

_DTYPE_BYTES = {"f32": 4, "f16": 2, "bf16": 2, "f64": 8, "i8": 1}


@dataclass(frozen=True)
class ModelFacts:
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    vocab: int
    dtype: str
    weight_macs: int  # multiply-adds of the weight contractions per token (projections, MLP, lm_head)
    embedding_params: int  # the token embedding table when not shared with lm_head, else 0
    parameter_bytes: int  # the parameter archive(s) as stored in the bundle

    @property
    def dtype_bytes(self) -> int:
        return _DTYPE_BYTES.get(self.dtype, 4)

    @property
    def params(self) -> int:
        return self.weight_macs + self.embedding_params


def model_facts(bundle: Bundle) -> ModelFacts:
    """Shapes from the manifest (graph facts, the mmt4d pipeline's packed weights) and config.json."""
    m = bundle.manifest
    graph = m.model.graph
    config = {}
    if m.lists(CONFIG):
        config = modelconfig.parse(bundle.read_text(CONFIG), f"{bundle.path}/{CONFIG}")

    def number(key: str, default: int) -> int:  # config.json is the model's, not rvdeploy's: check what is used
        value = config.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise RvdeployError(f"{bundle.path}/config.json: {key} is {value!r}, not a whole number")
        return value

    layers, kvh, hd = graph.num_layers, graph.num_kv_heads, graph.head_dim
    heads = number("num_attention_heads", kvh)
    hidden = number("hidden_size", heads * hd)
    vocab = graph.vocab_size or number("vocab_size", 0)
    packed = m.pipeline.mmt4d.packed_weights if m.pipeline.mmt4d else ()
    inter = number("intermediate_size", 0)
    if packed:
        weight_macs = sum(pw.k * pw.n for pw in packed)
    elif inter:
        per_layer = 2 * hidden * heads * hd + 2 * hidden * kvh * hd + 3 * hidden * inter
        weight_macs = layers * per_layer + hidden * vocab
    else:
        raise RvdeployError(
            f"{bundle.path}: no packed weights and no config.json intermediate_size: cannot count "
            "the model's weight contractions"
        )
    tied = bool(config.get("tie_word_embeddings", False))
    return ModelFacts(
        layers=layers,
        heads=heads,
        kv_heads=kvh,
        head_dim=hd,
        hidden=hidden,
        vocab=vocab,
        dtype=graph.dtype or "f32",
        weight_macs=weight_macs,
        embedding_params=0 if tied else vocab * hidden,
        parameter_bytes=m.parameter_bytes,
    )


def estimate(bundle: Bundle, target: str, prompt_tokens: int = 64) -> dict:
    """Bytes read and FLOPs per token, and roofline upper bounds for `target` from its public figures:
    FLOPs/token = 2 x (multiply-adds of the weight contractions + attention at context P, i.e. QK^T and AV:
                  2 x layers x heads x head_dim x P)
    bytes/token = weight-contraction parameters x dtype bytes + one embedding row + the KV cache read at
                  context P (2 x layers x kv_heads x head_dim x P x dtype bytes)
    pp <= cores x peak GFLOP/s (of the model's dtype) / FLOPs per token;  tg <= DRAM GB/s / bytes per token."""
    tgt = get_target(target)
    f = model_facts(bundle)
    p = prompt_tokens
    attention_macs = 2 * f.layers * f.heads * f.head_dim * p
    flops = 2 * (f.weight_macs + attention_macs)
    kv_bytes = 2 * f.layers * f.kv_heads * f.head_dim * p * f.dtype_bytes
    bytes_per_token = f.weight_macs * f.dtype_bytes + f.hidden * f.dtype_bytes + kv_bytes
    peak_key = "peak_gflops_f16" if f.dtype in ("f16", "bf16") else "peak_gflops_f32"
    figures = tgt.figures
    missing = [k for k in (peak_key, "dram_gbps") if k not in figures]
    if missing or not tgt.cores:
        raise RvdeployError(
            f"target {tgt.name} has no {', '.join(missing) or 'core count'} figure to estimate with",
            hint="pass --target with a board profile, e.g. --target spacemit-k1",
        )
    pp_bound = tgt.cores * figures[peak_key] * 1e9 / flops
    tg_bound = figures["dram_gbps"] * 1e9 / bytes_per_token
    return {
        "target": tgt.name,
        "prompt_tokens": p,
        "dtype": f.dtype,
        "params": f.params,
        "parameter_bytes": f.parameter_bytes,
        "weight_macs_per_token": f.weight_macs,
        "attention_macs_per_token": attention_macs,
        "flops_per_token": flops,
        "kv_bytes_per_token": kv_bytes,
        "bytes_per_token": bytes_per_token,
        "cores": tgt.cores,
        peak_key: figures[peak_key],
        "dram_gbps": figures["dram_gbps"],
        "pp_max_tokens_per_s": pp_bound,
        "tg_max_tokens_per_s": tg_bound,
        "sources": {k: tgt.sources.get(k) for k in (peak_key, "dram_gbps")},
    }
