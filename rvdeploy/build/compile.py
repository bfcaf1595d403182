"""Stage compile: iree-compile with the pipeline's flags for the target (rvdeploy.pipeline), the microkernel
library's, and the ones a q4 lowering needs (rvdeploy.compiler)."""

from __future__ import annotations

from .. import pipeline
from ..compiler import compile_module
from .context import BuildContext

# IREE 3.13's CPU tile heuristic picks vector_reduction [.., 4, 64] for some block-of-32 contractions with a
# fused elementwise consumer (tiny-random's gate/up at K=96) and then refuses the large vector
Q4_FLAGS = ("--iree-llvmcpu-fail-on-large-vector=false",)


def flags(ctx: BuildContext) -> list[str]:
    found = list(pipeline.compile_flags(ctx.request.target, ctx.request.pipeline))
    found += ctx.ukernels.compile_flags() if ctx.ukernels else []
    if ctx.lowered is not None and ctx.lowered.q4:
        found += Q4_FLAGS
    return found


def run(ctx: BuildContext) -> BuildContext:
    ctx.flags = flags(ctx)
    ctx.compiled = compile_module(ctx.module_mlir, ctx.flags, ctx.work)
    return ctx
