"""rvdeploy targets: the board/ISA profiles a bundle can be built for."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..targets import get_target, list_targets
from ._options import Json
from ._output import print_json, print_table


def targets(
    name: Annotated[Optional[str], typer.Argument(help="Show one target in full.")] = None,
    json_: Json = False,
) -> None:
    """List target profiles (or show one): triple, ISA features, VLEN, qemu CPU, public figures."""
    if name:
        t = get_target(name)
        if json_:
            print_json(t.to_dict())
            return
        d = t.to_dict()
        print_table(t.name, ["field", "value"], [(k, v) for k, v in d.items() if k not in ("figures", "sources")])
        if t.figures:
            print_table(
                "figures", ["figure", "value", "source"], [(k, v, t.sources.get(k, "")) for k, v in t.figures.items()]
            )
        return
    ts = list_targets()
    if json_:
        print_json([t.to_dict() for t in ts])
        return
    print_table(
        None,
        ["name", "arch", "vlen", "cores", "summary"],
        [(t.name, t.arch, t.vlen or "-", t.cores or "-", t.summary) for t in ts],
    )


def register(app: typer.Typer) -> None:
    app.command("targets")(targets)
