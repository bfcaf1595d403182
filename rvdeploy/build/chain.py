"""Runs a build's stages in order: each named before it runs (the on_stage hook the CLI's progress shows) and
timed here, once, for BuildResult.seconds."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from .context import BuildContext

StageHook = Callable[[str], None]


@dataclass(frozen=True)
class Stage:
    name: str  # as the CLI prints it
    run: Callable[[BuildContext], BuildContext]
    when: Callable[[BuildContext], bool] = lambda ctx: True  # a stage that does not apply is not announced


def run(stages: tuple[Stage, ...], ctx: BuildContext, on_stage: StageHook) -> tuple[BuildContext, dict]:
    """(the context after every stage that applies, stage name -> wall seconds)."""
    seconds: dict[str, float] = {}
    for stage in stages:
        if not stage.when(ctx):
            continue
        on_stage(stage.name)
        start = time.perf_counter()
        ctx = stage.run(ctx)
        seconds[stage.name] = round(time.perf_counter() - start, 3)
    return ctx, seconds
