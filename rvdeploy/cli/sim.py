"""rvdeploy sim up | down | status: an emulated riscv64 board reachable over ssh on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import sim as simmod
from ._options import Json
from ._output import err, out, print_json

app = typer.Typer(
    help="An emulated riscv64 board (Debian trixie userland under qemu-user, sshd on 127.0.0.1).", no_args_is_help=True
)
Name = Annotated[str, typer.Option("--name", help="Board name (also its ssh alias); several can run at once.")]


def _show(s: simmod.Sim, json_: bool) -> None:
    if json_:
        print_json(s.to_dict())
        return
    state = "running" if s.running else "stopped"
    out.print(f"{s.name}: {state}, VLEN {s.vlen}, qemu cpu {s.qemu_cpu}, sshd pid {s.pid} on 127.0.0.1:{s.port}")
    out.print(f"  export RVDEPLOY_SSH_CONFIG={s.ssh_config}   # or add `Include {s.ssh_config}` to ~/.ssh/config")
    out.print(f"  then: --board {s.board}      (plain ssh: ssh -F {s.ssh_config} {s.board})")


@app.command("up")
def up(
    vlen: Annotated[
        int, typer.Option(min=128, max=1024, help="Vector length in bits (uses the rv64gcv-vlenN target's CPU).")
    ] = 256,
    cpu: Annotated[
        Optional[str], typer.Option(help="A full qemu -cpu string instead (e.g. rv64,v=true,vlen=128,zvfh=true).")
    ] = None,
    dir_: Annotated[
        Optional[Path],
        typer.Option(
            "--dir", help="Where the riscv64 userland lives (default: the user cache directory; built once, reused)."
        ),
    ] = None,
    name: Name = "rvsim",
    json_: Json = False,
) -> None:
    """Start the emulated board (building the userland on first use, 1-2 minutes) and print its --board value."""
    s = simmod.up(
        vlen=vlen,
        cpu=cpu,
        directory=dir_,
        name=name,
        on_step=lambda step: None if json_ else err.print(f"[dim]{step}...[/dim]"),
    )
    _show(s, json_)


@app.command("down")
def down(name: Name = "rvsim") -> None:
    """Stop the emulated board's sshd (by pid) and remove its keys; the cached userland stays."""
    if simmod.down(name):
        out.print(f"{name}: stopped")
    else:
        out.print(f"{name}: not running")


@app.command("status")
def status(name: Name = "rvsim", json_: Json = False) -> None:
    """Whether the emulated board is running, and how to reach it."""
    s = simmod.status(name)
    if s is None:
        if json_:
            print_json({"name": name, "running": False})
        else:
            out.print(f"{name}: not running (start it with `rvdeploy sim up`)")
        return
    _show(s, json_)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="sim")
