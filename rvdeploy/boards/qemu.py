"""--board qemu[:TARGET]: this machine, running riscv64 bundles under user-mode qemu-riscv64 with the
target's `-cpu` string (the bundle's target, or TARGET to emulate a different board).

IREE's riscv64 runtime needs qemu-user 8.1 or newer: 7.2 (Debian 12) lacks the riscv_hwprobe syscall and
aborts on `vfcvt.rtz.x.f.v`. The bundle's launcher runs here too, with RVDEPLOY_RUN_PREFIX=qemu-riscv64 and
QEMU_CPU set, so the same checks guard an emulated run as a real one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from .. import children
from ..bundle import Bundle
from ..errors import RvdeployError
from ..probe import probe_binary
from ..qemu_cost import empty_guest_env, parse_counts, plugin_env, plugin_qemu
from ..targets import Target, get_target
from .base import ProgramRun
from .launch import raise_for, require_launcher, tool_command
from .program import run_measured
from .runner import RunnerProcess, launcher_command

MIN_VERSION = (8, 1)
UPGRADE_HINT = (
    "install qemu-user 8.1 or newer (Debian 12: add bookworm-backports and "
    "`apt-get install -t bookworm-backports qemu-user`, as scripts/setup.sh does)"
)


def qemu_path() -> str:
    path = shutil.which("qemu-riscv64")
    if path is None:
        raise RvdeployError("qemu-riscv64 not found", hint=UPGRADE_HINT)
    return path


VERSION_TIMEOUT = 10  # seconds: `qemu-riscv64 --version` answers at once, or the file is not a working qemu


def qemu_version(path: str) -> tuple[int, int, int]:
    try:
        out = children.run([path, "--version"], capture_output=True, text=True, timeout=VERSION_TIMEOUT).stdout
    except OSError as exc:
        raise RvdeployError(f"cannot run {path}: {exc.strerror}", hint=UPGRADE_HINT) from None
    m = re.search(r"version (\d+)\.(\d+)(?:\.(\d+))?", out)
    if not m:
        raise RvdeployError(f"cannot tell the version of {path}: {out.strip()[:100]!r}", hint=UPGRADE_HINT)
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def checked_qemu() -> str:
    path = qemu_path()
    v = qemu_version(path)
    if v[:2] < MIN_VERSION:
        raise RvdeployError(
            f"{path} is qemu {'.'.join(map(str, v))}; IREE's riscv64 runtime needs 8.1 or newer (riscv_hwprobe)",
            hint=UPGRADE_HINT,
        )
    return path


class QemuBoard:
    can_count = True  # with the plugin-capable qemu built by the set-up

    def __init__(self, target: str | None = None):
        self.target = get_target(target) if target else None
        if self.target is not None and self.target.arch != "riscv64":
            raise RvdeployError(f"--board qemu:{target}: {target} is not a riscv64 target")
        self.name = f"qemu:{target}" if target else "qemu"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def _cpu(self, bundle: Bundle | None) -> str:
        if self.target is not None:
            return self.target.qemu_cpu
        return bundle.manifest.target.qemu_cpu if bundle else ""

    def isa_target(self, bundle: Bundle) -> Target:
        """TARGET's, or the bundle's (the one it is emulated with)."""
        return self.target if self.target is not None else get_target(bundle.manifest.target.name)

    def check(self, bundle: Bundle) -> None:
        if bundle.manifest.target.arch != "riscv64":
            raise RvdeployError(
                f"{bundle.path} is a {bundle.manifest.target.name} bundle; --board qemu runs riscv64 bundles",
                hint="use --board local for host bundles",
            )
        require_launcher(bundle)

    def run_tool(
        self,
        bundle: Bundle,
        tool: str,
        args: list[str],
        *,
        qemu: str | None = None,
        env: dict | None = None,
        counted: bool = False,
    ) -> ProgramRun:
        """Run an IREE tool through the bundle's launcher under qemu (`qemu`: another qemu-riscv64, such as the
        plugin-capable one of `bench --cost`; `env`: extra environment, e.g. QEMU_PLUGIN; `counted`: the tool
        starts with an empty environment, so its counts do not depend on ours); its output and peak RSS (the
        launcher execs the tool, so that is the tool's under qemu)."""
        self.check(bundle)
        full_env = {
            **os.environ,
            "RVDEPLOY_RUN_PREFIX": qemu or checked_qemu(),
            "QEMU_CPU": self._cpu(bundle),
            **(env or {}),
        }
        if counted:
            full_env = empty_guest_env(full_env)
        run = run_measured(tool_command(tool, args), env=full_env, cwd=str(bundle.path))
        raise_for(self.name, run.returncode, run.stderr, bundle, tool=tool)
        return run

    def run_program(
        self,
        exe: Path,
        args: list[str | Path],
        *,
        cpu: str,
        qemu: str | None = None,
        env: dict | None = None,
        counted: bool = False,
    ) -> ProgramRun:
        """Run a static riscv64 program (not a bundle's) under qemu with this board's CPU, or `cpu` when the
        board names no target; Path arguments are files here; `qemu`, `env`, `counted` as for run_tool.
        Raises on a non-zero exit."""
        cpu = self.target.qemu_cpu if self.target is not None else cpu
        full_env = {**os.environ, "QEMU_CPU": cpu, **(env or {})}
        if counted:
            full_env = empty_guest_env(full_env)
        run = run_measured([qemu or checked_qemu(), str(exe), *map(str, args)], env=full_env)
        raise_for(self.name, run.returncode, run.stderr, tool=exe.name)
        return run

    # ---- executed-instruction counts (bench --cost): the plugin-capable qemu built by the set-up ----------
    def count_program(self, exe: Path, args: list[str | Path], *, cpu: str) -> tuple[dict, ProgramRun]:
        """Counts (rvdeploy.qemu_cost.parse_counts) of one run of a static riscv64 program, and the run."""
        with tempfile.TemporaryDirectory(prefix="rvdeploy-cost-") as tmp:
            outfile = Path(tmp) / "counts.txt"
            run = self.run_program(exe, args, cpu=cpu, qemu=str(plugin_qemu()), env=plugin_env(outfile), counted=True)
            return parse_counts(outfile.read_text()), run

    def count_tool(self, bundle: Bundle, tool: str, args: list[str]) -> tuple[dict, ProgramRun]:
        """Counts of one run of a bundle's IREE tool through its launcher (the tool's process: the last one)."""
        with tempfile.TemporaryDirectory(prefix="rvdeploy-cost-") as tmp:
            outfile = Path(tmp) / "counts.txt"
            run = self.run_tool(bundle, tool, args, qemu=str(plugin_qemu()), env=plugin_env(outfile), counted=True)
            return parse_counts(outfile.read_text()), run

    def start_runner(self, bundle: Bundle, args: list[str]) -> RunnerProcess:
        """The bundle's riscv64 runner through its launcher under qemu, live."""
        self.check(bundle)
        env = {**os.environ, "RVDEPLOY_RUN_PREFIX": checked_qemu(), "QEMU_CPU": self._cpu(bundle)}
        return RunnerProcess(launcher_command(args), self.name, bundle, env=env, cwd=str(bundle.path))

    def probe(self) -> dict:
        cmd = [checked_qemu()]
        if self._cpu(None):
            cmd += ["-cpu", self._cpu(None)]
        proc = children.run([*cmd, str(probe_binary())], capture_output=True, text=True)
        raise_for(self.name, proc.returncode, proc.stderr)
        try:
            return json.loads(proc.stdout)
        except json.JSONDecodeError:
            raise RvdeployError(f"{self.name}: the probe printed no JSON: {proc.stdout.strip()[:100]!r}") from None
