"""Running a board-architecture program that is not part of a bundle (llama.cpp's tools): the command, its
output, and its peak resident memory where this machine can see it (a process run here, e.g. under
qemu-user, where the figure includes the emulator's own memory).

The peak comes from GNU time (`/usr/bin/time -f %M`), not from wait4 here: Linux carries the pre-exec
high-water mark across exec, so a child forked from this (large) Python process would report at least
Python's own RSS. GNU time's child starts from GNU time's few hundred KiB instead."""

from __future__ import annotations

import os
import tempfile

from .. import children
from .base import ProgramRun

GNU_TIME = "/usr/bin/time"


def run_measured(cmd: list[str], env: dict | None = None, cwd: str | None = None) -> ProgramRun:
    """Run CMD here; its peak RSS (KiB from GNU time) when /usr/bin/time exists."""
    if not os.access(GNU_TIME, os.X_OK):
        proc = children.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
        return ProgramRun(proc.stdout, proc.stderr, proc.returncode, None)
    with tempfile.NamedTemporaryFile("r", prefix="rvdeploy-rss-") as rss:
        proc = children.run(
            [GNU_TIME, "-q", "-f", "%M", "-o", rss.name, *cmd], env=env, cwd=cwd, capture_output=True, text=True
        )
        text = rss.read().strip().splitlines()
    peak = int(text[-1]) * 1024 if text and text[-1].isdigit() else None
    return ProgramRun(proc.stdout, proc.stderr, proc.returncode, peak)
