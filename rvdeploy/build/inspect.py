"""Stage inspect: the compiled dispatches analyzed (rvdeploy.dispatches) into dispatches.json, which
`rvdeploy inspect` reads from the bundle."""

from __future__ import annotations

import json

from ..bundle.names import DISPATCHES
from ..dispatches import analyze_dump
from .context import BuildContext


def run(ctx: BuildContext) -> BuildContext:
    graph, lowered = ctx.graph, ctx.lowered
    kv_shapes = {(1, graph.num_kv_heads, -1, graph.head_dim)}
    weight_shapes = {(pw.k, pw.n) for pw in lowered.packed} if lowered else None
    report = analyze_dump(ctx.compiled.dump_dir, kv_shapes=kv_shapes, weight_shapes=weight_shapes)
    ctx.dispatches = ctx.work / DISPATCHES
    ctx.dispatches.write_text(json.dumps(report.to_dict(), indent=1, sort_keys=True) + "\n")
    return ctx
