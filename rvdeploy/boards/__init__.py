"""Where a bundle runs. Each board turns (bundle, prompt ids) into generated ids."""

from __future__ import annotations

from .local import LocalBoard
from ..errors import RvdeployError


def get_board(spec: str):
    if spec == "local":
        return LocalBoard()
    raise RvdeployError(f"board {spec!r} is not supported yet", hint="use --board local with a host-target bundle")
