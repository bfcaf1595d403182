"""The board probe: rvdeploy's own small C program (probe.c) that reports a riscv64 board's ISA, VLEN,
cores and memory; and the same facts for a non-RISC-V machine, from Python.

The probe is cross-compiled with clang for rv64gc (static, so it runs on any riscv64 Linux userland) the
first time it is needed and cached (rvdeploy.ccache: keyed by its source, the flags and clang's version):
building it at wheel-build time would make the wheel depend on a cross toolchain, and a cache keyed by
content is rebuilt exactly when probe.c, the flags or the compiler change.
"""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path

from ..ccache import compile_c
from ..errors import RvdeployError

SOURCE = Path(__file__).resolve().parent / "probe.c"
NAME = "rvdeploy-probe"
# rv64gc, not rv64gcv: the probe runs on boards without V (and says so) instead of dying with SIGILL
CFLAGS = [
    "--target=riscv64-linux-gnu",
    "-march=rv64gc",
    "-mabi=lp64d",
    "-fuse-ld=lld",
    "-static",
    "-O2",
    "-Wall",
    "-Werror",
]
CLANG_CANDIDATES = ("clang-19", "clang")
INSTALL_HINT = (
    "apt-get install clang-19 lld-19 libc6-dev-riscv64-cross libgcc-12-dev-riscv64-cross linux-libc-dev-riscv64-cross"
)


def _clang() -> str:
    for name in CLANG_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    raise RvdeployError("clang-19 not found: it cross-compiles rvdeploy's riscv64 board probe", hint=INSTALL_HINT)


def probe_binary() -> Path:
    """The riscv64 probe executable, built on first use and cached by content."""
    return compile_c(
        "probe", [_clang(), *CFLAGS], SOURCE, NAME, what="cross-compiling the riscv64 probe", hint=INSTALL_HINT
    )


def parse_env(text: str) -> dict:
    """`rvdeploy-probe --env` output (key=value lines) -> the same fields as the JSON output."""
    raw = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    exts = raw.get("extensions", "").split()
    return {
        "arch": raw.get("arch", "unknown"),
        "vlen": int(raw.get("vlen", 0) or 0),
        "vector": "v" in exts,
        "extensions": exts,
        "hwprobe": raw.get("hwprobe") == "1",
        "cpus": int(raw.get("cpus", 0) or 0),
        "mem_total": int(raw.get("mem_total", 0) or 0),
    }


def describe_unix(uname_m: str, nproc: str, meminfo: str) -> dict:
    """A non-RISC-V machine: its architecture, cores and memory (no ISA details: bundles for it are host
    bundles, compiled for the machine that built them)."""
    total = 0
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            total = int(line.split()[1]) * 1024
    return {
        "arch": uname_m.strip(),
        "vlen": 0,
        "vector": False,
        "extensions": [],
        "cpus": int(nproc.strip() or 0),
        "mem_total": total,
    }


def host_probe() -> dict:
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").is_file() else ""
    return describe_unix(platform.machine(), str(os.cpu_count() or 0), meminfo)
