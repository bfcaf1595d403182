"""Child processes in their own process group, ended together with rvdeploy: a long tool run (a compiler
under ninja, git) must not outlive an interrupted or failed rvdeploy."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

from .errors import RvdeployError


def end_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the child's whole process group, SIGKILL if it is still there after 5 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(5)
            return
        except subprocess.TimeoutExpired:
            continue


def first_error(text: str) -> str:
    """The first diagnostic in a command's output ("error:" as compilers, cmake and git print it; else a
    fatal or FAILED line; else the last line), for one-line messages. Command lines are skipped: their
    -Wno-error flags are no errors."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for pattern in (r"\berror:|CMake Error", r"\bfatal\b|^FAILED:"):
        hits = [ln for ln in lines if re.search(pattern, ln) and not ln.startswith(("$ ", "/usr/bin/"))]
        if hits:
            return hits[0][:250]
    return (lines[-1:] or ["no output"])[0][:250]


def run_logged(cmd: list[str], log: Path, what: str, on_line: Callable[[str], None] | None = None,
               hint: str | None = None, cwd: Path | None = None) -> None:
    """Run CMD in its own process group with its output appended to LOG (ON_LINE sees each line); the group
    is ended if rvdeploy is interrupted or fails. A non-zero exit is one RvdeployError naming WHAT and the
    log's first error."""
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        start = f.tell()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", start_new_session=True, cwd=cwd)
        try:
            for line in proc.stdout:
                f.write(line)
                if on_line:
                    on_line(line)
            proc.wait()
        except BaseException:
            end_group(proc)
            raise
    if proc.returncode != 0:
        with open(log, errors="replace") as f:
            f.seek(start)
            output = f.read()
        raise RvdeployError(f"{what} failed: {first_error(output)}", hint=hint or f"full log: {log}")
