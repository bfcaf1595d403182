"""Stage mmt4d lowering (the mmt4d pipeline): the microkernel library is chosen first, since the tiles depend
on it (rvdeploy.ukernels), then every weight contraction is lowered to linalg.mmt4d once (rvdeploy.mmt4d)."""

from __future__ import annotations

from functools import partial

from ..mmt4d import lower_to_mmt4d
from ..params import is_transposed_copy
from ..ukernels import choose as choose_ukernels
from .context import BuildContext

PIPELINE = "mmt4d"


def applies(ctx: BuildContext) -> bool:
    return ctx.request.pipeline == PIPELINE


def run(ctx: BuildContext) -> BuildContext:
    tgt = ctx.request.target
    ctx.ukernels = choose_ukernels(tgt, ctx.request.ukernels)
    ctx.lowered = lower_to_mmt4d(
        ctx.entry, tgt, ctx.work, ctx.ukernels.library, is_transpose=partial(is_transposed_copy, ctx.imported.params)
    )
    return ctx
