"""Stage: iree-compile the module for the target, keeping the dumped executables for inspection."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from iree.compiler.tools.binaries import find_tool

from . import children
from .bundle.names import MODULE
from .errors import RvdeployError


@dataclass(frozen=True)
class CompiledModule:
    vmfb: Path
    dump_dir: Path  # --iree-hal-dump-executable-files-to: configured MLIR, .ll, .s per executable
    flags: tuple[str, ...]


def compiler_version() -> str:
    out = children.run([find_tool("iree-compile"), "--version"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if "IREE" in line and "version" in line:
            return line.split("version", 1)[1].strip()
    return out.strip().splitlines()[0] if out.strip() else "unknown"


def compile_module(mlir: Path, flags: list[str], workdir: Path) -> CompiledModule:
    vmfb = workdir / MODULE
    dump = workdir / "executables"
    # Run inside the work directory with relative paths: the module embeds source locations, and an
    # absolute temporary path there would make two builds of the same inputs differ.
    src = os.path.relpath(mlir, workdir)
    cmd = [find_tool("iree-compile"), src, *flags, "--iree-hal-dump-executable-files-to=executables", "-o", MODULE]
    proc = children.run(cmd, capture_output=True, text=True, cwd=workdir)
    if proc.returncode != 0:
        errors = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
        first = errors[0] if errors else (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RvdeployError(f"iree-compile failed: {first.strip()[:300]}")
    return CompiledModule(vmfb=vmfb, dump_dir=dump, flags=tuple(flags))
