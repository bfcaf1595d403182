"""What a board is to the rest of rvdeploy (run, chat, bench, probe), whatever carries it: the Board protocol
and what a board's runs return. A new kind of board is a module here implementing Board, a kind in
spec.BoardSpec and an entry in boards.get_board."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..bundle import Bundle
from ..errors import RvdeployError
from ..targets import Target
from .runner import RunnerProcess


@dataclass(frozen=True)
class ProgramRun:
    stdout: str
    stderr: str
    returncode: int
    peak_rss_bytes: int | None  # None when the program ran elsewhere (a board over ssh) or without GNU time


NEEDS_EMULATION = (
    "--cost counts executed instructions under emulation: use --board qemu[:TARGET] or an "
    "emulated board (`rvdeploy sim up`)"
)


class Board(Protocol):
    """A board, used inside `with` (an ssh board holds one shared connection while open)."""

    name: str  # as --board named it: messages and reports
    # executed-instruction counts (bench --cost): qemu; an ssh board only when it carries the counting qemu of
    # `rvdeploy sim up` (checked on first use); this machine never
    can_count: bool

    def __enter__(self) -> Board: ...

    def __exit__(self, *exc) -> bool: ...

    def isa_target(self, bundle: Bundle) -> Target:
        """The target profile whose ISA this board has (what llama.cpp is built for to run here)."""
        ...

    def check(self, bundle: Bundle) -> None:
        """What it can run: returns when BUNDLE can run here, else raises RvdeployError saying why not."""
        ...

    def probe(self) -> dict:
        """What it has: architecture, VLEN, ISA extensions, cores, memory."""
        ...

    def start_runner(self, bundle: Bundle, args: list[str]) -> RunnerProcess:
        """The bundle's runner with ARGS, live (token ids stream back; stdin takes further turns)."""
        ...

    def run_program(self, exe: Path, args: list[str | Path], *, cpu: str) -> ProgramRun:
        """A program of the board's architecture that is not a bundle's (llama.cpp's tools); Path arguments
        are files here. `cpu`: the qemu -cpu string where the board is emulated without a target of its own."""
        ...

    def count_tool(self, bundle: Bundle, tool: str, args: list[str]) -> tuple[dict, ProgramRun]:
        """Counts (rvdeploy.qemu_cost.parse_counts) of one run of a bundle's tool, and the run."""
        ...

    def count_program(self, exe: Path, args: list[str | Path], *, cpu: str) -> tuple[dict, ProgramRun]:
        """Counts of one run of a program that is not a bundle's, and the run."""
        ...


def require_counting(board: Board) -> None:
    """Counting needs an emulated board: --board qemu[:TARGET] or one from `rvdeploy sim up` (ssh)."""
    if not board.can_count:
        raise RvdeployError(NEEDS_EMULATION)
