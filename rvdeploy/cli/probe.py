"""rvdeploy probe: what a board has (architecture, VLEN, ISA extensions, cores, memory)."""

from __future__ import annotations

from .. import api
from ._options import Board, Json
from ._output import print_json, print_table


def probe(board: Board = "local", json_: Json = False) -> None:
    """Run rvdeploy's probe on a board (riscv64: a small C program reading hwprobe/HWCAP and vlenb)."""
    info = api.probe(board)
    if json_:
        print_json(info)
        return
    rows = [(k, " ".join(v) if isinstance(v, list) else v) for k, v in info.items()]
    print_table(f"board {info['board']}", ["field", "value"], rows)


def register(app) -> None:
    app.command("probe")(probe)
