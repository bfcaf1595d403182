"""rvdeploy pack / unpack: a bundle directory <-> a reproducible .tar.gz."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import api
from ._options import BundleArg, Json
from ._output import out, print_json


def pack(
    bundle: BundleArg,
    output: Annotated[
        Optional[Path],
        typer.Option("--output", "-o", help="Archive to write (default: BUNDLE.tar.gz next to the bundle)."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing archive rvdeploy packed at --output.")
    ] = False,
    json_: Json = False,
) -> None:
    """Write the bundle as a .tar.gz: sorted entries, fixed owners, modes and times (same bundle, same bytes)."""
    path = api.pack(bundle, output, force=force)
    if json_:
        print_json({"archive": str(path)})
        return
    out.print(f"wrote {path}")


def unpack(
    archive: Annotated[Path, typer.Argument(help="A bundle .tar.gz written by `rvdeploy pack` or `build --tar`.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Bundle directory to create.")],
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace an existing bundle at --output (only a bundle rvdeploy wrote, or an empty directory).",
        ),
    ] = False,
    json_: Json = False,
) -> None:
    """Unpack a bundle archive, refusing absolute paths, '..' and links, then verify every file's sha256."""
    b = api.unpack(archive, output, force=force)
    if json_:
        print_json({"bundle": str(b.path)})
        return
    out.print(f"unpacked {b.path} (all files match the manifest)")


def register(app: typer.Typer) -> None:
    app.command("pack")(pack)
    app.command("unpack")(unpack)
