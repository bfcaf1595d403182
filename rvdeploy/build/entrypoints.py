"""Stage entry points: one module with prefill, decode and generate (rvdeploy.entrypoints; around a cache kept
in the module, rvdeploy.kvstate, when the import stage rewrote decode for one)."""

from __future__ import annotations

from ..entrypoints import assemble
from .context import BuildContext


def run(ctx: BuildContext) -> BuildContext:
    ctx.entry = assemble(ctx.imported, list(ctx.graph.inputs), list(ctx.graph.outputs), ctx.work, ctx.kv_cache)
    return ctx
