#!/usr/bin/env python3
"""Host cost proxy: executed x86-64 instructions per prompt token and per generated token, per pipeline.

  python benchmarks/make_llama.py mid /tmp/bench/models/mid      # once
  python benchmarks/host_cost.py [--model DIR] [--pipelines mmt4d baseline] [--rebuild]

riscv64 modules cannot run here, so this measures host (`--target host`) bundles of the same model built
with each pipeline. Each bundle's `generate` entry point is run with the real `iree-run-module` binary of
iree-base-runtime (not its Python console-script wrapper), with the command line of
rvdeploy.runtime.generate_args (--device=local-sync), under
`valgrind --tool=callgrind --cache-sim=no` (instruction counts are deterministic; wall time is not used).

Two things valgrind 3.19 cannot do, and what this script does about them:
  * AVX-512: the host target compiles for `--iree-llvmcpu-target-cpu=host`, which on an AVX-512 machine
    emits EVEX instructions valgrind rejects ("unrecognised instruction", SIGILL). The bundles are therefore
    built through rvdeploy's Python API with that one flag replaced by `--host-cpu` (default x86-64-v3:
    AVX2+FMA, whose 8x8x1 f32 mmt4d ukernel is the tile rvdeploy's host entry in tiles.toml uses). The
    manifest records the flags actually used. `--host-cpu host` keeps rvdeploy's flag unchanged.
  * io_uring: iree-run-module's async proactor waits in io_uring_enter, which valgrind does not treat as a
    blocking syscall: the process deadlocks. Under valgrind only, a seccomp filter makes io_uring_setup fail
    with ENOSYS, and IREE falls back to its portable (POSIX) proactor. Plain runs are left alone.
Per-token figures are differences, so process start-up and module load cancel out:
  decode  = (1-token prompt, 33 new tokens) - (1-token prompt, 1 new token), / 32
  prefill = (64-token prompt, 1 new token)  - (1-token prompt, 1 new token), / 63
Prompt ids are seeded random ids < vocab. Peak RSS is `/usr/bin/time -v`'s maximum resident set size of a
plain (non-valgrind) run with the 64-token prompt and 33 new tokens. Bundles are built with
rvdeploy.api.build(target="host", pipeline=P, force=True) into OUT-DIR/NAME-host-CPU-PIPELINE unless one
for that pipeline and CPU is already there (--rebuild forces it).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from rvdeploy.bundle.names import MODULE, PARAMETERS  # noqa: E402
from rvdeploy.runtime import generate_args, parse_generate_output  # noqa: E402


def iree_run_module() -> str:
    import iree._runtime_libs as libs

    return os.path.join(os.path.dirname(libs.__file__), "iree-run-module")


def build(model: str, pipeline: str, out: Path, cpu: str, rebuild: bool) -> str | None:
    """Build the host bundle through rvdeploy's Python API (host CPU flag replaced); returns an error line or None."""
    from rvdeploy import (
        api,
        pipeline as pipelines,  # the compile stage reads pipelines.compile_flags when it runs
    )
    from rvdeploy.bundle import MANIFEST, Bundle
    from rvdeploy.errors import RvdeployError

    host_flag = "--iree-llvmcpu-target-cpu=host"
    if not rebuild and (out / MANIFEST).is_file():
        m = Bundle.open(out).manifest
        if (
            m.pipeline.name == pipeline
            and m.target.name == "host"
            and f"--iree-llvmcpu-target-cpu={cpu}" in m.pipeline.compiler_flags
        ):
            print(f"[{pipeline}] reusing {out}", file=sys.stderr)
            return None
    original = pipelines.compile_flags

    def flags(target, pipe):
        fl = list(original(target, pipe))
        if host_flag not in fl:
            raise RvdeployError(f"host flags no longer contain {host_flag}: {fl}")
        return [f"--iree-llvmcpu-target-cpu={cpu}" if f == host_flag else f for f in fl]

    print(f"[{pipeline}] building {out} (rvdeploy.api.build, target host, {cpu})", file=sys.stderr)
    t0 = time.perf_counter()
    pipelines.compile_flags = flags
    try:
        api.build(model, out=out, target="host", pipeline=pipeline, force=True)
    except RvdeployError as e:
        return str(e)
    except Exception as e:  # a bug inside rvdeploy: report it, do not fix it here
        return f"{type(e).__name__}: {e}"
    finally:
        pipelines.compile_flags = original
    print(f"[{pipeline}] built in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return None


def _deny_io_uring() -> None:
    """preexec_fn: seccomp filter, io_uring_setup (x86-64 nr 425) -> ENOSYS, everything else allowed."""
    prog = [
        (0x20, 0, 0, 4),
        (0x15, 0, 3, 0xC000003E),  # ld arch; != x86_64 -> allow
        (0x20, 0, 0, 0),
        (0x15, 0, 1, 425),  # ld nr; == io_uring_setup?
        (0x06, 0, 0, 0x00050000 | 38),  # ret ERRNO(ENOSYS)
        (0x06, 0, 0, 0x7FFF0000),
    ]  # ret ALLOW
    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in prog))

    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = Fprog(len(prog), ctypes.cast(code, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) or libc.prctl(22, 2, ctypes.byref(fprog), 0, 0):  # NO_NEW_PRIVS; SECCOMP
        os._exit(97)


def callgrind(tool: str, bundle: Path, prompt: list[int], n: int, scratch: Path) -> tuple[int, float, list[int]]:
    """(instructions, wall seconds, generated ids) of one generate run under callgrind."""
    outfile = scratch / f"callgrind.{len(prompt)}x{n}.out"
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--cache-sim=no",
        f"--callgrind-out-file={outfile}",
        tool,
        *generate_args(str(bundle / MODULE), str(bundle / PARAMETERS), prompt, n),
    ]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=_deny_io_uring)
    secs = time.perf_counter() - t0
    if p.returncode != 0:
        lines = [ln for ln in p.stderr.splitlines() if ln.strip() and not ln.startswith("==")]
        raise RuntimeError(
            f"callgrind run failed (exit {p.returncode}): {(lines or p.stderr.strip().splitlines() or ['?'])[-1]}"
        )
    m = re.search(r"^(?:totals|summary):\s+(\d+)", outfile.read_text(errors="replace"), re.MULTILINE)
    if not m:
        raise RuntimeError(f"no totals line in {outfile}")
    return int(m.group(1)), secs, parse_generate_output(p.stdout)


def plain_peak_rss(tool: str, bundle: Path, prompt: list[int], n: int) -> tuple[int | None, float, list[int]]:
    with tempfile.NamedTemporaryFile(suffix=".time", delete=False) as f:
        tf = f.name
    cmd = [
        "/usr/bin/time",
        "-v",
        "-o",
        tf,
        tool,
        *generate_args(str(bundle / MODULE), str(bundle / PARAMETERS), prompt, n),
    ]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    secs = time.perf_counter() - t0
    text = Path(tf).read_text()
    os.unlink(tf)
    if p.returncode != 0:
        raise RuntimeError(f"plain run failed: {(p.stderr.strip().splitlines() or ['?'])[-1]}")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    return (int(m.group(1)) * 1024 if m else None), secs, parse_generate_output(p.stdout)


def vocab_size(model: str) -> int:
    p = Path(model)
    for cfg in (p / "config.json", p.parent / "config.json"):
        if cfg.is_file():
            return int(json.loads(cfg.read_text())["vocab_size"])
    sys.exit(f"no config.json beside {model}: cannot pick token ids < vocab")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    ap.add_argument("--model", default="/tmp/bench/models/mid", help="model directory (default: %(default)s)")
    ap.add_argument("--pipelines", nargs="+", default=["mmt4d", "baseline"], choices=["mmt4d", "baseline"])
    ap.add_argument(
        "--out-dir",
        type=Path,
        default=Path("/tmp/bench/out"),
        help="bundles go to OUT-DIR/NAME-host-PIPELINE (default: %(default)s)",
    )
    ap.add_argument("--rebuild", action="store_true", help="rebuild bundles even if present")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=33)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--host-cpu",
        default="x86-64-v3",
        help="replaces --iree-llvmcpu-target-cpu=host in the build (default: %(default)s; valgrind "
        "cannot run AVX-512 code)",
    )
    args = ap.parse_args()
    if not shutil.which("valgrind") or not Path("/usr/bin/time").exists():
        sys.exit("needs valgrind and /usr/bin/time (Debian packages valgrind, time)")

    tool = iree_run_module()
    vocab = vocab_size(args.model)
    rng = random.Random(args.seed)
    long_prompt = [rng.randrange(vocab) for _ in range(args.prompt_len)]
    one = long_prompt[:1]
    print(f"model {args.model}: vocab {vocab}; prompt ids (seed {args.seed}) {long_prompt[:8]}...", file=sys.stderr)
    name = Path(args.model).name

    rows, failures = [], []
    for pipeline in args.pipelines:
        bundle = args.out_dir / f"{name}-host-{args.host_cpu}-{pipeline}"
        err = build(args.model, pipeline, bundle, args.host_cpu, args.rebuild)
        if err:
            failures.append(f"{pipeline}: build failed: {err}")
            continue
        try:
            with tempfile.TemporaryDirectory(prefix="callgrind-") as tmp:
                runs = {}
                for key, prompt, n in (
                    ("1x1", one, 1),
                    (f"1x{args.new_tokens}", one, args.new_tokens),
                    (f"{args.prompt_len}x1", long_prompt, 1),
                ):
                    instr, secs, ids = callgrind(tool, bundle, prompt, n, Path(tmp))
                    runs[key] = instr
                    print(
                        f"[{pipeline}] callgrind prompt {len(prompt)} tokens, {n} new: {instr:,} instructions "
                        f"({secs:.1f} s under valgrind), ids {ids[:6]}{'...' if len(ids) > 6 else ''}",
                        file=sys.stderr,
                    )
            rss, secs, ids = plain_peak_rss(tool, bundle, long_prompt, args.new_tokens)
            print(
                f"[{pipeline}] plain run prompt {len(long_prompt)}, {args.new_tokens} new: {secs:.2f} s, "
                f"ids {ids[:6]}...",
                file=sys.stderr,
            )
        except RuntimeError as e:
            failures.append(f"{pipeline}: {e}")
            continue
        decode = (runs[f"1x{args.new_tokens}"] - runs["1x1"]) / (args.new_tokens - 1)
        prefill = (runs[f"{args.prompt_len}x1"] - runs["1x1"]) / (args.prompt_len - 1)
        rows.append((pipeline, prefill, decode, runs["1x1"], rss))

    print()
    print(f"host CPU for codegen: {args.host_cpu}; model {args.model}")
    print(
        f"| pipeline | prefill instr/token | decode instr/token | run with 1-token prompt, 1 new token "
        f"(start-up) | peak RSS, plain run ({args.prompt_len}-token prompt, {args.new_tokens} new) |"
    )
    print("|---|---:|---:|---:|---:|")
    for pipeline, prefill, decode, base, rss in rows:
        print(
            f"| {pipeline} | {prefill / 1e6:.2f}M | {decode / 1e6:.2f}M | {base / 1e6:.1f}M | "
            f"{'n/a' if rss is None else f'{rss / 2**20:.0f} MiB'} |"
        )
    for f in failures:
        print(f"FAILED {f}")


if __name__ == "__main__":
    main()
