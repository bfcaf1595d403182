"""rvdeploy runtime add DIR | show: the riscv64 IREE runtime builds that `build` puts into bundles."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import runtimes
from ..compiler import compiler_version
from ._options import Json
from ._output import err, out, print_json, print_table

app = typer.Typer(help="Register riscv64 IREE runtime builds (iree-run-module, iree-benchmark-module) for bundles.",
                  no_args_is_help=True)


@app.command("add")
def add(
    directory: Annotated[Path, typer.Argument(help="Directory holding a riscv64 build of iree-run-module and "
                                              "iree-benchmark-module.", show_default=False)],
    json_: Json = False,
) -> None:
    """Validate (riscv64 ELF, both tools present) and register a runtime build; newest wins per architecture."""
    rt = runtimes.add(directory)
    warning = runtimes.version_warning(rt.version, compiler_version())
    if warning:
        err.print(f"[yellow]warning:[/yellow] {warning}")
    if json_:
        print_json(rt.to_dict())
        return
    out.print(f"registered {rt.arch} runtime {rt.path} (version {rt.version})")


@app.command("show")
def show(json_: Json = False) -> None:
    """List registered runtimes and the host runtime."""
    rts = runtimes.registered()
    host = {"arch": "host", "path": "iree-base-runtime (pip)", "version": runtimes.host_runtime_version()}
    if json_:
        print_json({"host": host, "registered": [r.to_dict() for r in rts]})
        return
    rows = [(host["arch"], host["version"], host["path"])] + [(r.arch, r.version, str(r.path)) for r in rts]
    print_table(None, ["arch", "version", "path"], rows)
    if not rts:
        err.print(f"no riscv64 runtime registered: {runtimes.BUILD_HINT}")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="runtime")
