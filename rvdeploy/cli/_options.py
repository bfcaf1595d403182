"""Option types shared by several commands."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from ..modelconfig import MAX_CONTEXT

Json = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout (logs go to stderr).")]
BundleArg = Annotated[Path, typer.Argument(help="A bundle directory written by `rvdeploy build`.",
                                           show_default=False)]
Board = Annotated[str, typer.Option("--board", "-b", help="Where to run: `local` (this machine, host bundles), "
                                    "`qemu[:TARGET]` (riscv64 bundles under qemu-user), or `\\[user@]host[:port]` / "
                                    "an ssh config alias (a board over ssh; RVDEPLOY_SSH_CONFIG picks the config "
                                    "file).")]

# Every numeric option has a range. Token counts stop at the largest context a config.json may give (the model's
# own, checked later, is smaller); threads at IREE's 64 workers (rvdeploy.bench.MAX_THREADS); repetitions and
# seconds at what a benchmark can use.
MAX_TOKENS = MAX_CONTEXT
MAX_REPS = 1000
MAX_MIN_TIME = 3600.0  # seconds per repetition


def seconds(low_open: float, high: float):
    """A float option callback: a finite number in (LOW_OPEN, HIGH]; NaN and infinities are refused (a range
    check alone lets NaN through, and `inf` seconds never end)."""

    def check(value: float | None) -> float | None:
        if value is None:
            return value
        if not (math.isfinite(value) and low_open < value <= high):
            raise typer.BadParameter(f"{value} is not a number of seconds above {low_open:g} and at most {high:g}")
        return value

    return check
