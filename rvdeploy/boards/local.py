"""--board local: this machine: host bundles, their runner, and the host IREE tools from iree-base-runtime."""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path

from ..bundle import Bundle
from ..errors import RvdeployError
from ..probe import host_probe
from ..targets import Target, get_target
from .base import NEEDS_EMULATION, ProgramRun
from .launch import last_line
from .program import run_measured
from .runner import RunnerProcess, launcher_command


def _host_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        # iree-base-runtime installs its tools as console scripts; a missing one means a broken install
        raise RvdeployError(f"{name} not found on PATH", hint="pip install iree-base-runtime==3.13.0")
    return path


class LocalBoard:
    name = "local"
    can_count = False  # instructions are counted under emulation only

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def isa_target(self, bundle: Bundle) -> Target:
        return get_target("host")

    def probe(self) -> dict:
        return host_probe()

    def check(self, bundle: Bundle) -> None:
        target = bundle.manifest.target
        if target.arch != "host":
            raise RvdeployError(
                f"bundle {bundle.path} is built for {target.name} ({target.arch}); --board local runs "
                f"host-target bundles on this {platform.machine()} machine",
                hint="build with --target host, or run it on a board: --board qemu or --board user@host",
            )

    def run_tool(self, bundle: Bundle, tool: str, args: list[str]) -> ProgramRun:
        """Run an IREE tool (iree-run-module, iree-benchmark-module) with ARGS relative to the bundle
        directory; its output and peak RSS."""
        self.check(bundle)
        run = run_measured([_host_tool(tool), *args], cwd=str(bundle.path))
        if run.returncode != 0:
            last = last_line(run.stderr)
            raise RvdeployError(f"{tool} failed on {bundle.path}: {last}")
        return run

    def run_program(self, exe: Path, args: list[str | Path], *, cpu: str = "") -> ProgramRun:
        """Run a program of this machine's that is not a bundle's (llama.cpp's tools, built for this CPU)."""
        run = run_measured([str(exe), *map(str, args)])
        if run.returncode != 0:
            last = last_line(run.stderr)
            raise RvdeployError(f"{exe.name} failed on {self.name}: {last}")
        return run

    def start_runner(self, bundle: Bundle, args: list[str]) -> RunnerProcess:
        """The bundle's runner (host build, in its runtime/) through its launcher, live."""
        self.check(bundle)
        env = {k: v for k, v in os.environ.items() if k not in ("RVDEPLOY_RUN_PREFIX", "QEMU_CPU")}
        return RunnerProcess(launcher_command(args), self.name, bundle, env=env, cwd=str(bundle.path))

    def count_tool(self, bundle: Bundle, tool: str, args: list[str]) -> tuple[dict, ProgramRun]:
        raise RvdeployError(NEEDS_EMULATION)

    def count_program(self, exe: Path, args: list[str | Path], *, cpu: str = "") -> tuple[dict, ProgramRun]:
        raise RvdeployError(NEEDS_EMULATION)
