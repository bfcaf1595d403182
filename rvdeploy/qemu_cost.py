"""Deterministic cost under emulation: executed guest instructions (and RVV vector instructions) per prompt
token and per generated token, counted by rvdeploy's TCG plugin (qemu_plugin/insncount.c) in a
plugin-capable qemu-riscv64.

No Debian binary of qemu loads plugins, so scripts/build_qemu_plugins.sh builds qemu-riscv64 (linux-user)
with --enable-plugins from Debian trixie's qemu source package, once, into the cache; the plugin itself is
compiled here on first use (gcc, against that source's qemu-plugin.h) and cached by content (rvdeploy.ccache).

Counts: all executed guest instructions, the RVV ones among them, and the RVV ones weighted by the LMUL in
force (from each vsetvli/vsetivli's immediate; 1/8 for mf8 up to 8 for m8): a vector instruction at LMUL 4
does the work of four at LMUL 1. What they are counted on (a bundle's runner, llama.cpp) and how they become
per-token figures: rvdeploy.bench.cost.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from . import children
from .ccache import compile_c
from .errors import RvdeployError
from .paths import cache_dir

PLUGIN_DIR = Path(__file__).resolve().parent / "qemu_plugin"
PLUGIN_SOURCE = PLUGIN_DIR / "insncount.c"
COUNTLOOP_SOURCE = PLUGIN_DIR / "countloop.c"
SUITE = "trixie"
BUILD_HINT_QEMU = (
    "build it once with `bash scripts/build_qemu_plugins.sh` (scripts/setup.sh does; needs flex, "
    "bison, libglib2.0-dev, pkg-config, ninja-build, dpkg-dev)"
)


def qemu_dir() -> Path:
    return cache_dir() / "qemu-plugins" / SUITE


def plugin_qemu() -> Path:
    """The plugin-capable qemu-riscv64 built by scripts/build_qemu_plugins.sh."""
    exe = qemu_dir() / "bin" / "qemu-riscv64"
    if not os.access(exe, os.X_OK) or not (qemu_dir() / "include" / "qemu-plugin.h").is_file():
        raise RvdeployError(f"no plugin-capable qemu-riscv64 in {qemu_dir()}", hint=BUILD_HINT_QEMU)
    return exe


def plugin_library() -> Path:
    """libinsncount.so, compiled against the built qemu's plugin header; cached by content."""
    include = plugin_qemu().parent.parent / "include"
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise RvdeployError("no C compiler for the qemu plugin", hint="apt-get install gcc")
    glib = children.run(["pkg-config", "--cflags", "glib-2.0"], capture_output=True, text=True)
    if glib.returncode != 0:
        raise RvdeployError(
            "glib-2.0 headers not found (the qemu plugin header includes glib.h)",
            hint="apt-get install libglib2.0-dev pkg-config",
        )
    cmd = [cc, "-shared", "-fPIC", "-O2", "-Wall", "-Werror", f"-I{include}", *glib.stdout.split()]
    return compile_c(
        "qemu-plugin",
        cmd,
        PLUGIN_SOURCE,
        "libinsncount.so",
        what=f"compiling {PLUGIN_SOURCE.name}",
        headers=[include / "qemu-plugin.h"],
    )


def build_countloop() -> Path:
    """The static rv64gcv program of known instruction counts (qemu_plugin/countloop.c)."""
    clang = shutil.which("clang-19") or shutil.which("clang")
    if clang is None:
        raise RvdeployError("clang-19 not found", hint="apt-get install clang-19 lld-19")
    cmd = [clang, "--target=riscv64-linux-gnu", "-march=rv64gcv", "-mabi=lp64d", "-fuse-ld=lld", "-static", "-O2"]
    return compile_c("qemu-plugin", cmd, COUNTLOOP_SOURCE, "countloop", what=f"compiling {COUNTLOOP_SOURCE.name}")


# the counts that per-token figures are made of (parse_counts also gives vsetvl, a diagnostic)
KEYS = ("instructions", "vector_instructions", "vector_lmul_weighted")


def parse_counts(text: str) -> dict:
    lines = [ln for ln in text.splitlines() if ln.startswith("insns=")]
    if not lines:
        raise RvdeployError("the instruction-counting plugin wrote no counts")
    fields = dict(kv.split("=") for kv in lines[-1].split())  # the last process: the launcher execs the tool
    return {
        "instructions": int(fields["insns"]),
        "vector_instructions": int(fields["vector"]),
        # vector instructions weighted by LMUL (the plugin counts eighths: mf8 = 1/8 ... m8 = 8)
        "vector_lmul_weighted": int(fields["lmul8"]) / 8,
        "vsetvl": int(fields["vsetvl"]),
    }


def plugin_env(outfile: Path, tbfile: Path | None = None) -> dict:
    """The environment that loads the counting plugin (`tbfile`: also per block, rvdeploy.dispatch_cost)."""
    blocks = f",tbfile={tbfile}" if tbfile else ""
    return {"QEMU_PLUGIN": f"{plugin_library()},outfile={outfile}{blocks}"}


# what a shell between qemu and us exports of its own (dash: the directory it started in, the one it is in)
SHELL_EXPORTS = ("PWD", "OLDPWD", "SHLVL", "_")


def empty_guest_env(env: dict[str, str]) -> dict[str, str]:
    """`env`, qemu's own environment, plus QEMU_UNSET_ENV naming all of it: the counted program starts with an
    empty environment. qemu-user hands its environment on, and its size moves the program's argv strings,
    whose alignment changes what glibc's string functions execute: a caller's COLUMNS=80 and LINES=24 moved
    the demo's prefill per prompt token by 22 instructions (0.08 %), and the plugin's own paths are in it."""
    names = sorted({*env, *SHELL_EXPORTS, "QEMU_UNSET_ENV"} - {n for n in env if "," in n})
    return {**env, "QEMU_UNSET_ENV": ",".join(names)}
