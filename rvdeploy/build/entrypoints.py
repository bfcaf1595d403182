"""Stage entry points: one module with prefill, decode and generate (rvdeploy.entrypoints)."""

from __future__ import annotations

from ..entrypoints import assemble
from .context import BuildContext


def run(ctx: BuildContext) -> BuildContext:
    ctx.entry = assemble(ctx.imported, list(ctx.graph.inputs), list(ctx.graph.outputs), ctx.work)
    return ctx
