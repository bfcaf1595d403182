"""rvdeploy runtime build | add DIR | show: the riscv64 IREE runtime builds that `build` puts into bundles."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import api, runtimes
from ..compiler import compiler_version
from ..runtime_build import ENV_SOURCE
from ._options import Json
from ._output import err, out, print_json, print_table, step_progress

app = typer.Typer(
    help="Build or register riscv64 IREE runtimes (iree-run-module, iree-benchmark-module) for bundles.",
    no_args_is_help=True,
)


def _warn_version(rt: runtimes.Runtime) -> None:
    warning = runtimes.version_warning(rt.version, compiler_version())
    if warning:
        err.print(f"[yellow]warning:[/yellow] {warning}", soft_wrap=True)


@app.command("build")
def build(
    source: Annotated[
        Optional[Path],
        typer.Option(
            help="IREE's source: a directory or a .tar.gz laid out as "
            "iree/ with third_party/flatcc and third_party/benchmark "
            f"(default: ${ENV_SOURCE}, else a shallow git clone of the "
            "release tag matching iree-base-compiler).",
            show_default=False,
        ),
    ] = None,
    ref: Annotated[
        Optional[str],
        typer.Option(
            help="The git tag to clone (default: v + the installed iree-base-compiler's release, e.g. v3.13.0).",
            show_default=False,
        ),
    ] = None,
    jobs: Annotated[
        Optional[int],
        typer.Option(
            "--jobs",
            "-j",
            min=1,
            max=1024,
            help="Parallel compile jobs (default: the number of cores).",
            show_default=False,
        ),
    ] = None,
    arch: Annotated[
        str,
        typer.Option(
            help="riscv64 (IREE's tools and the runner, cross-compiled) or host (the "
            "runner for this machine's bundles)."
        ),
    ] = "riscv64",
    json_: Json = False,
) -> None:
    """Build IREE's runtime tools with rvdeploy's runner from IREE's sources: cross-compiled for riscv64 Linux
    (static, rv64gc: one runtime serves every riscv64 target), or the runner for this machine; register it
    as `runtime add` does and cache it (a second call is instant)."""
    with step_progress(quiet=json_) as progress:
        rt, result = api.build_runtime(source=source, ref=ref, jobs=jobs, progress=progress, arch=arch)
    _warn_version(rt)
    if json_:
        print_json(rt.to_dict() | {"cached": result.cached, "seconds": round(result.seconds, 1)})
        return
    how = "cached" if result.cached else f"built in {result.seconds:.0f} s"
    out.print(f"registered {rt.arch} runtime {rt.path} ({how}; IREE {rt.version}, {_describe(rt.source)})")


@app.command("add")
def add(
    directory: Annotated[
        Path,
        typer.Argument(
            help="Directory holding a riscv64 build of iree-run-module and iree-benchmark-module.", show_default=False
        ),
    ],
    json_: Json = False,
) -> None:
    """Validate (riscv64 ELF, both tools present) and register a runtime build; newest wins per architecture."""
    rt = runtimes.add(directory)
    _warn_version(rt)
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
    rows = [(host["arch"], host["version"], "", host["path"])]
    rows += [(r.arch, r.version, _describe(r.source), str(r.path)) for r in rts]
    print_table(None, ["arch", "version", "source", "path"], rows)
    if not rts:
        err.print(f"no riscv64 runtime registered: {runtimes.BUILD_HINT}")


def _describe(source: dict | None) -> str:
    """One phrase for where a runtime's sources came from."""
    if not source:
        return "registered by hand"
    if source.get("kind") == "git":
        return f"git {source.get('ref')} {(source.get('commit') or '')[:12]}".strip()
    return f"{source.get('kind')} {Path(source.get('origin', '')).name}"


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="runtime")
