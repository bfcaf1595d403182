"""Stage import: the graph split into its prefill and decode phases (static shapes each,
rvdeploy.onnx_shapes) and each imported to MLIR (rvdeploy.importer). The module is named import_ because
`import` is Python's keyword."""

from __future__ import annotations

from ..importer import import_graphs
from ..onnx_shapes import split_phases
from .context import BuildContext


def run(ctx: BuildContext) -> BuildContext:
    ctx.imported = import_graphs(split_phases(ctx.onnx, ctx.work), ctx.work)
    return ctx
