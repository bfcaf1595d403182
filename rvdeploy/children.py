"""Child processes that end with rvdeploy. Each runs in a process group of its own (a new session), so that
what it starts in turn (iree-base-runtime's console script runs the real iree-run-module; GNU time; the
launcher's sha256sum and probe; qemu) can be ended with it: on any exception, Ctrl-C, SIGTERM or SIGHUP
(rvdeploy.cli turns the signals into KeyboardInterrupt) the whole group gets SIGTERM, then SIGKILL after a
grace period. Without a group of its own a grandchild is re-parented to PID 1 and keeps running.

A child in its own session is not in the terminal's foreground group: it must not read the terminal (it
would be stopped by SIGTTIN), so its stdin is /dev/null unless the caller gives one."""

from __future__ import annotations

import os
import signal
import subprocess
import time
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


def run(cmd: list, *, input=None, timeout: float | None = None, capture_output: bool = False,
        **popen) -> subprocess.CompletedProcess:
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
            raise RvdeployError(f"{Path(str(cmd[0])).name} did not finish within {timeout:g} s and was stopped "
                                f"({' '.join(map(str, cmd))[:120]})") from None
        except BaseException:
            end_group(proc)
            raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
