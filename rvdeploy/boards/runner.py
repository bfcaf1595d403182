"""The bundle's runner as a live process on any board: its stdout read line by line while it runs (tokens
arrive one at a time), its stdin open for further turns, its stderr gathered for the one-line error. The
process (here: the launcher under qemu or the ssh client) runs in its own process group and is ended with
rvdeploy, on any error or stop signal."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator

from .. import children
from ..bundle import Bundle
from ..errors import RvdeployError
from ..generation import RUNNER, Turn, parse_line
from .launch import raise_for, tool_command


class RunnerProcess:
    def __init__(self, cmd: list[str], where: str, bundle: Bundle, *, env: dict | None = None, cwd: str | None = None):
        self.where, self.bundle = where, bundle
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            text=True,
            errors="replace",
            bufsize=1,
            start_new_session=True,
        )
        self._stderr: list[str] = []
        self._reader = threading.Thread(target=lambda: self._stderr.extend(self.proc.stderr), daemon=True)
        self._reader.start()

    def __enter__(self) -> "RunnerProcess":
        return self

    def __exit__(self, *exc) -> bool:
        if self.proc.poll() is None:
            children.end_group(self.proc)
        return False

    def lines(self) -> Iterator[str]:
        """The runner's stdout, one line at a time as it is written; ends at the end of a turn (`stats`
        line) or when the runner exits."""
        for line in self.proc.stdout:
            yield line
            if line.startswith("stats "):
                return

    def read_turn(self, turn: Turn | None = None, on_token: Callable[[int], None] | None = None) -> Turn:
        """Read one turn of the runner's protocol into TURN (a new one by default; pass the same to go on
        after an interruption); ON_TOKEN sees each token id as it arrives."""
        turn = turn if turn is not None else Turn()
        for line in self.lines():
            token = parse_line(line, turn)
            if token is not None and on_token is not None:
                on_token(token)
        return turn

    def send(self, line: str) -> None:
        try:
            self.proc.stdin.write(line)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):  # the runner (or the link to the board) is gone: say why
            self.finish()
            raise RvdeployError(f"{RUNNER} on {self.where} ended the session before this turn") from None

    def interrupt(self) -> None:
        """SIGINT to the runner (the launcher execs it, so the group leader is the runner or its qemu)."""
        try:
            os.killpg(self.proc.pid, signal.SIGINT)
        except ProcessLookupError:
            pass

    def finish(self) -> None:
        """Close stdin (an interactive session ends), wait, and turn a failure into one RvdeployError."""
        try:
            self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        rest = self.proc.stdout.read()
        self.proc.wait()
        self._reader.join(timeout=5)
        stderr = "".join(self._stderr)
        if self.proc.returncode < 0:
            raise RvdeployError(f"{RUNNER} on {self.where} was ended by signal {-self.proc.returncode}")
        if self.proc.returncode != 0:
            raise_for(self.where, self.proc.returncode, stderr or rest, self.bundle, tool=RUNNER)


def launcher_command(args: list[str]) -> list[str]:
    return tool_command(RUNNER, args)
