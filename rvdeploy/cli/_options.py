"""Option types shared by several commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Json = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout (logs go to stderr).")]
BundleArg = Annotated[Path, typer.Argument(help="A bundle directory written by `rvdeploy build`.",
                                           show_default=False)]
Board = Annotated[str, typer.Option("--board", "-b", help="Where to run: `local` (this machine, host bundles), "
                                    "`qemu[:TARGET]` (riscv64 bundles under qemu-user), or `\\[user@]host[:port]` / "
                                    "an ssh config alias (a board over ssh; RVDEPLOY_SSH_CONFIG picks the config "
                                    "file).")]
