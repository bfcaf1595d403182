"""Deterministic cost under emulation: executed guest instructions (and RVV vector instructions) per prompt
token and per generated token, counted by rvdeploy's TCG plugin (qemu_plugin/insncount.c) in a
plugin-capable qemu-riscv64.

No Debian binary of qemu loads plugins, so scripts/build_qemu_plugins.sh builds qemu-riscv64 (linux-user)
with --enable-plugins from Debian trixie's qemu source package, once, into the cache; the plugin itself is
compiled here on first use (gcc, against that source's qemu-plugin.h) and cached by the hash of its source.

Counts: all executed guest instructions, the RVV ones among them, and the RVV ones weighted by the LMUL in
force (from each vsetvli/vsetivli's immediate; 1/8 for mf8 up to 8 for m8): a vector instruction at LMUL 4
does the work of four at LMUL 1.

Method: wall time under qemu is no proxy for RVV code (vector instructions are emulated by slow helpers), but
single-threaded instruction counts repeat to ~0.001 %. Process start-up (module load, parameter reads) is
large, so per-token figures are differences of whole runs of the bundle's runner (what `run` executes; device
local-sync, greedy, no EOS stop):
  per prompt token    = (count(P-token prompt, 1 new token) - count(1-token prompt, 1 new token)) / (P - 1)
  per generated token = (count(P-token prompt, N+1 new tokens) - count(P-token prompt, 1 new token)) / N
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from . import children
from .atomic import file_into_place
from .bundle import Bundle
from .errors import RvdeployError
from .generation import RUNNER
from .paths import cache_dir
from .runtimes import BUILD_HINT

PLUGIN_DIR = Path(__file__).resolve().parent / "qemu_plugin"
PLUGIN_SOURCE = PLUGIN_DIR / "insncount.c"
COUNTLOOP_SOURCE = PLUGIN_DIR / "countloop.c"
SUITE = "trixie"
BUILD_HINT_QEMU = ("build it once with `bash scripts/build_qemu_plugins.sh` (scripts/setup.sh does; needs flex, "
                   "bison, libglib2.0-dev, pkg-config, ninja-build, dpkg-dev)")


def qemu_dir() -> Path:
    return cache_dir() / "qemu-plugins" / SUITE


def plugin_qemu() -> Path:
    """The plugin-capable qemu-riscv64 built by scripts/build_qemu_plugins.sh."""
    exe = qemu_dir() / "bin" / "qemu-riscv64"
    if not os.access(exe, os.X_OK) or not (qemu_dir() / "include" / "qemu-plugin.h").is_file():
        raise RvdeployError(f"no plugin-capable qemu-riscv64 in {qemu_dir()}", hint=BUILD_HINT_QEMU)
    return exe


def _compile_cached(name: str, source: Path, cmd: list[str], extra_key: bytes = b"") -> Path:
    key = hashlib.sha256(source.read_bytes() + extra_key + " ".join(cmd).encode()).hexdigest()[:16]
    stem, dot, suffix = name.partition(".")
    out = cache_dir() / "qemu-plugins" / f"{stem}-{key}{dot}{suffix}"
    if out.is_file():
        return out
    with file_into_place(out) as tmp:
        proc = children.run([*cmd, "-o", str(tmp), str(source)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RvdeployError(f"compiling {source.name} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
        os.chmod(tmp, 0o755)
    return out


def plugin_library() -> Path:
    """libinsncount.so, compiled against the built qemu's plugin header; cached by source hash."""
    include = plugin_qemu().parent.parent / "include"
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise RvdeployError("no C compiler for the qemu plugin", hint="apt-get install gcc")
    glib = children.run(["pkg-config", "--cflags", "glib-2.0"], capture_output=True, text=True)
    if glib.returncode != 0:
        raise RvdeployError("glib-2.0 headers not found (the qemu plugin header includes glib.h)",
                            hint="apt-get install libglib2.0-dev pkg-config")
    cmd = [cc, "-shared", "-fPIC", "-O2", "-Wall", "-Werror", f"-I{include}", *glib.stdout.split()]
    return _compile_cached("libinsncount.so", PLUGIN_SOURCE, cmd, (include / "qemu-plugin.h").read_bytes())


def build_countloop() -> Path:
    """The static rv64gcv program of known instruction counts (qemu_plugin/countloop.c)."""
    clang = shutil.which("clang-19") or shutil.which("clang")
    if clang is None:
        raise RvdeployError("clang-19 not found", hint="apt-get install clang-19 lld-19")
    cmd = [clang, "--target=riscv64-linux-gnu", "-march=rv64gcv", "-mabi=lp64d", "-fuse-ld=lld", "-static", "-O2"]
    return _compile_cached("countloop", COUNTLOOP_SOURCE, cmd)


def parse_counts(text: str) -> dict:
    lines = [ln for ln in text.splitlines() if ln.startswith("insns=")]
    if not lines:
        raise RvdeployError("the instruction-counting plugin wrote no counts")
    fields = dict(kv.split("=") for kv in lines[-1].split())  # the last process: the launcher execs the tool
    return {"instructions": int(fields["insns"]), "vector_instructions": int(fields["vector"]),
            # vector instructions weighted by LMUL (the plugin counts eighths: mf8 = 1/8 ... m8 = 8)
            "vector_lmul_weighted": int(fields["lmul8"]) / 8, "vsetvl": int(fields["vsetvl"])}


def plugin_env(outfile: Path) -> dict:
    return {"QEMU_PLUGIN": f"{plugin_library()},outfile={outfile}"}


def count_program(argv: list[str], cpu: str) -> dict:
    """Counts for one riscv64 program run under the plugin qemu (no bundle: tests and calibration)."""
    from .boards.qemu import QemuBoard

    return QemuBoard().count_program(Path(argv[0]), argv[1:], cpu=cpu)[0]


def by_difference(c11: dict, cp1: dict, cpn: dict, prompt_tokens: int, gen_tokens: int) -> dict:
    """Per-token figures from counts of (1-token prompt, 1 new), (P, 1 new), (P, N+1 new)."""
    keys = ("instructions", "vector_instructions", "vector_lmul_weighted")
    return {
        "per_prompt_token": {k: (cp1[k] - c11[k]) / (prompt_tokens - 1) for k in keys},
        "per_generated_token": {k: (cpn[k] - cp1[k]) / gen_tokens for k in keys},
        "runs": {"prompt1_new1": c11, f"prompt{prompt_tokens}_new1": cp1,
                 f"prompt{prompt_tokens}_new{gen_tokens + 1}": cpn},
    }


NEEDS_EMULATION = ("--cost counts executed instructions under emulation: use --board qemu[:TARGET] or an "
                   "emulated board (`rvdeploy sim up`)")


def require_counting(board) -> None:
    """Counting needs an emulated board: --board qemu[:TARGET] or one from `rvdeploy sim up` (ssh)."""
    if not hasattr(board, "count_tool"):
        raise RvdeployError(NEEDS_EMULATION)


def measure_cost(bundle: Bundle, board, prompt_tokens: int, gen_tokens: int) -> dict:
    """Per-token instruction counts of a riscv64 bundle's runner (what `run` executes) on an open emulated
    board, one thread: (1-token prompt, 1 new), (P, 1 new) and (P, N+1 new) by difference."""
    from .bench import measuring_args

    m = bundle.manifest
    if m.target.arch != "riscv64":
        raise RvdeployError(f"{bundle.path} is a {m.target.name} bundle: --cost counts riscv64 instructions",
                            hint="build for a riscv64 target, e.g. --target rv64gcv-vlen256")
    if m.runtime.kind != "bundled":
        raise RvdeployError(f"{bundle.path} needs a riscv64 IREE runtime to be measured under qemu and has none",
                            hint=BUILD_HINT)
    if prompt_tokens < 2:
        raise RvdeployError("--cost needs -p 2 or more (per prompt token = difference of P and 1 token prompts)")
    require_counting(board)
    counts, peaks = {}, []
    for key, prompt, new in (("11", 1, 1), ("p1", prompt_tokens, 1), ("pn", prompt_tokens, gen_tokens + 1)):
        counts[key], run = board.count_tool(bundle, RUNNER, measuring_args(m, prompt, new))
        peaks.append(run.peak_rss_bytes)
    result = by_difference(counts["11"], counts["p1"], counts["pn"], prompt_tokens, gen_tokens)
    result["peak_rss_bytes"] = max((v for v in peaks if v), default=None)
    result["board"] = board.name
    return result
