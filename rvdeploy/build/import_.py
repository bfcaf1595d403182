"""Stage import: the graph split into its prefill and decode phases (static shapes each,
rvdeploy.onnx_shapes), prefill cut to the last position's logits (rvdeploy.last_logits), decode rewritten to
a fixed-capacity KV cache updated in place where its attention is the pattern rvdeploy.kvcache knows, and each
imported to MLIR (rvdeploy.importer). The module is named import_ because `import` is Python's keyword."""

from __future__ import annotations

from dataclasses import replace

from .. import modelconfig
from ..importer import import_graphs
from ..kvcache import DEFAULT_CAPACITY, rewrite_decode
from ..last_logits import prefill_last_logits
from ..onnx_shapes import split_phases
from .context import BuildContext


def _query_heads(ctx: BuildContext) -> int | None:
    """config.json's num_attention_heads (an onnxruntime-genai folder: genai_config.json's), if given."""
    heads = modelconfig.read(ctx.files.config).get("num_attention_heads") if ctx.files.config else None
    if heads is None and ctx.genai is not None:
        heads = ctx.genai.num_heads
    return heads if isinstance(heads, int) and not isinstance(heads, bool) and heads > 0 else None


def run(ctx: BuildContext) -> BuildContext:
    phases = split_phases(ctx.onnx, ctx.work)
    prefill_last_logits(phases.prefill)  # logits [B, 1, V]: the prefill signature in entry_points shows it
    context = ctx.context_length
    # the cache is allocated whole: a model's full context (131072 for Llama 3.2) only when asked for
    capacity = context if ctx.request.max_context is not None else min(context, DEFAULT_CAPACITY)
    cache = rewrite_decode(
        phases.decode,
        ctx.work / "decode.kv.onnx",
        capacity,
        ctx.graph.num_kv_heads,
        ctx.graph.head_dim,
        _query_heads(ctx),
    )
    if cache is not None:
        phases = replace(phases, decode=ctx.work / "decode.kv.onnx")
        ctx.kv_cache = cache
        if capacity < context:
            ctx.warnings.append(
                f"the bundle's context is {capacity} tokens, not the model's {context}: its KV "
                "cache is allocated whole (pass --max-context N for more)"
            )
            ctx.context_length = capacity
    ctx.imported = import_graphs(phases, ctx.work)
    return ctx
