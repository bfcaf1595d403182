"""Stage pack weights: the parameter archive, each weight stored once in the layout its kernel reads
(rvdeploy.params)."""

from __future__ import annotations

from ..bundle.names import PARAMETERS
from ..params import write_params
from .context import BuildContext


def run(ctx: BuildContext) -> BuildContext:
    ctx.params = write_params(ctx.imported.params, ctx.lowered, ctx.work / PARAMETERS)
    return ctx
