"""Child processes that end with rvdeploy. Each runs in a process group of its own (a new session), so that
what it starts in turn (iree-base-runtime's console script runs the real iree-run-module; GNU time; the
launcher's sha256sum and probe; qemu) can be ended with it: on any exception, Ctrl-C, SIGTERM or SIGHUP
(rvdeploy.cli turns the signals into KeyboardInterrupt) the whole group gets SIGTERM, then SIGKILL after a
grace period. Without a group of its own a grandchild is re-parented to PID 1 and keeps running.

A child in its own session is not in the terminal's foreground group: it must not read the terminal (it
would be stopped by SIGTTIN), so its stdin is /dev/null unless the caller gives one."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from . import signals
from .errors import RvdeployError

GRACE = 2.0  # seconds between SIGTERM and SIGKILL


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def end_group(proc: subprocess.Popen) -> None:
    """SIGTERM to PROC's process group, SIGKILL to what is left after GRACE seconds; PROC reaped. Stop signals
    arriving meanwhile are held until the group is gone (then they unwind as usual)."""
    with signals.held():
        pgid = proc.pid  # a session leader's group id is its pid
        deadline = time.monotonic() + GRACE
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=GRACE)
        except subprocess.TimeoutExpired:
            pass
        while _group_alive(pgid) and time.monotonic() < deadline:  # grandchildren, not ours to wait for
            time.sleep(0.05)
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()


def run(
    cmd: list, *, input=None, timeout: float | None = None, capture_output: bool = False, **popen
) -> subprocess.CompletedProcess:
    """subprocess.run for rvdeploy: the child in its own process group, ended with everything it started
    when this call does not return normally. TIMEOUT (seconds): the group is ended and one RvdeployError
    names the command."""
    if capture_output:
        popen["stdout"] = popen["stderr"] = subprocess.PIPE
    if input is not None:
        popen["stdin"] = subprocess.PIPE
    popen.setdefault("stdin", subprocess.DEVNULL)
    with subprocess.Popen(cmd, start_new_session=True, **popen) as proc:
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            end_group(proc)
            raise RvdeployError(
                f"{Path(str(cmd[0])).name} did not finish within {timeout:g} s and was stopped "
                f"({' '.join(map(str, cmd))[:120]})"
            ) from None
        except BaseException:
            end_group(proc)
            raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


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


def run_logged(
    cmd: list[str],
    log: Path,
    what: str,
    on_line: Callable[[str], None] | None = None,
    hint: str | None = None,
    cwd: Path | None = None,
) -> None:
    """Run CMD in its own process group with its output appended to LOG (ON_LINE sees each line); the group
    is ended if rvdeploy is interrupted or fails. A non-zero exit is one RvdeployError naming WHAT and the
    log's first error."""
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        start = f.tell()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
            cwd=cwd,
        )
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
