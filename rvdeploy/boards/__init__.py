"""Where a bundle runs. Each board starts the bundle's runner live (start_runner: token ids stream back),
runs other programs, counts instructions where it is emulated, and can say what it has (probe): the Board
protocol of base.py, one module per kind (local, qemu, ssh). Boards are context managers: an ssh board holds
one shared connection while in use. The --board text is parsed once, into a spec.BoardSpec."""

from __future__ import annotations

from .base import Board
from .local import LocalBoard
from .qemu import QemuBoard
from .spec import BoardSpec, board_spec
from .ssh import SshBoard

_MAKE = {"local": lambda spec: LocalBoard(), "qemu": lambda spec: QemuBoard(spec.target), "ssh": SshBoard}


def get_board(spec: BoardSpec | str) -> Board:
    """The board SPEC names (the --board text or its BoardSpec), not yet open."""
    spec = board_spec(spec)
    return _MAKE[spec.kind](spec)
