"""Option types shared by several commands."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from ..modelconfig import MAX_CONTEXT

Json = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout (logs go to stderr).")]
BundleArg = Annotated[Path, typer.Argument(help="A bundle directory written by `rvdeploy build`.", show_default=False)]
Board = Annotated[
    str,
    typer.Option(
        "--board",
        "-b",
        help="Where to run: `local` (this machine, host bundles), "
        "`qemu[:TARGET]` (riscv64 bundles under qemu-user), or `\\[user@]host[:port]` / "
        "an ssh config alias (a board over ssh; RVDEPLOY_SSH_CONFIG picks the config "
        "file).",
    ),
]

# Every numeric option has a range. Token counts stop at the largest context a config.json may give (the model's
# own, checked later, is smaller); threads at IREE's 64 workers (rvdeploy.bench.measure.MAX_THREADS); repetitions at
# what a benchmark can use.
MAX_TOKENS = MAX_CONTEXT
MAX_REPS = 1000


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


def _probability(value: float) -> float:
    if not (math.isfinite(value) and 0 < value <= 1):
        raise typer.BadParameter(f"{value} is not in (0, 1]")
    return value


# sampling, as run and chat take it (the runner's sampler; rvdeploy.generation.Sampling)
Temperature = Annotated[
    float, typer.Option(min=0.0, max=100.0, callback=_finite, help="Sampling temperature; 0 is greedy.")
]
TopK = Annotated[
    int, typer.Option("--top-k", min=0, max=MAX_CONTEXT, help="Sample among the k most likely tokens (0: all).")
]
TopP = Annotated[
    float,
    typer.Option(
        "--top-p",
        callback=_probability,
        help="Sample among the fewest tokens whose probability reaches p, in (0, 1] (1: all).",
    ),
]
Seed = Annotated[
    int, typer.Option(min=0, max=2**63 - 1, help="Seed of the sampler (PCG32): the same seed gives the same text.")
]


def sampling(temperature: float, top_k: int, top_p: float, seed: int):
    from ..generation import Sampling

    return Sampling(temperature, top_k, top_p, seed).check()
