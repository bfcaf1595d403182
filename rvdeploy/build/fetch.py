"""Stage fetch: the model's files (hub cache, a local directory or file, or the bundled demo)."""

from __future__ import annotations

from ..source import resolve_model
from .context import BuildContext


def run(ctx: BuildContext) -> BuildContext:
    req = ctx.request
    ctx.files = resolve_model(req.model, variant=req.variant, revision=req.revision)
    return ctx
