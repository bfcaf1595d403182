#!/usr/bin/env python3
"""Executed riscv64 instructions per token on the emulated board: rvdeploy's mmt4d pipeline, the baseline
pipeline and llama.cpp f32 / f16 / Q8_0 / Q4_0, one thread, one table.

  python benchmarks/make_llama.py mid /tmp/bench/models/mid        # once: ONNX + HF checkpoint, same weights
  python benchmarks/mid_table.py [--model DIR] [--target spacemit-k1] [-p 64] [-n 32] [--depth 256] [--types T ...]
                                 [--quantize [int8] [q4]] [--json]

The same at the Llama-3.2-1B shape (about 15 minutes for two types; 11 GB of model files, 5 GB peak):
  python benchmarks/make_llama.py llama-3.2-1b DIR
  python benchmarks/mid_table.py --model DIR --types f32 q4_0 -p 16 -n 8

Method (rvdeploy.qemu_cost, rvdeploy.peers.llamabench): counts from rvdeploy's TCG plugin in the
plugin-capable qemu-riscv64 (scripts/build_qemu_plugins.sh), by difference so that start-up cancels:
  per prompt token    = (P-token prompt - 1-token prompt) / (P - 1)
  per generated token = (N+1 - 1 generated tokens after a P-token context) / N
IREE bundles run their `generate` entry point with the bundle's riscv64 IREE runtime; llama.cpp runs
llama-bench (`-p P -n 0` / `-p 0 -n N -d P`, --no-warmup -r 1 -t 1), built for the target's ISA from the
llama-cpp-python sdist, on GGUFs converted from the same checkpoint by llama.cpp's convert_hf_to_gguf.py
(Q4_0 by llama-quantize). Peak RSS is the qemu process's maximum resident set (emulator included).

The IREE bundles carry the registered riscv64 IREE runtime, built from IREE's sources on first use
(`rvdeploy runtime build`; offline, RVDEPLOY_IREE_SOURCE names the source archive); a runtime that cannot be
had is reported in the IREE rows instead of figures. The anchor column holds the issue's figures for the model's
shape (make_llama.json), and the goals line its targets for mmt4d against llama.cpp f32.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rvdeploy import api  # noqa: E402
from rvdeploy.bench.cost import measure_cost  # noqa: E402
from rvdeploy.bench.measure import iree_runnable  # noqa: E402
from rvdeploy.boards import get_board  # noqa: E402
from rvdeploy.errors import RvdeployError  # noqa: E402
from rvdeploy.peers import gguf, llamabench, llamacpp  # noqa: E402
from rvdeploy.targets import get_target  # noqa: E402

TYPES = ("f32", "f16", "q8_0", "q4_0")
# The anchors (VLEN 256, one thread; instructions per prompt / generated token), by make_llama shape:
# "mid" stands for its 12M-parameter model (hidden 512, 4 layers), "llama-3.2-1b" for the 1B shape. The IREE
# baseline anchors are upstream IREE without data tiling (static decode graph). GOALS: mmt4d / llama.cpp f32.
ANCHORS = {
    "mid": {
        "llama.cpp F32": (1.42e6, 3.28e6),
        "llama.cpp F16": (1.34e6, 8.94e6),
        "llama.cpp Q8_0": (4.28e6, 6.02e6),
        "llama.cpp Q4_0": (2.52e6, 4.39e6),
        "baseline": (1.40e6, 3.67e6),
    },
    "llama-3.2-1b": {"llama.cpp F32": (106e6, 220e6), "baseline": (151e6, 137e6)},
}
GOALS = {"mid": (0.6, 0.8), "llama-3.2-1b": (0.75, 0.5)}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def iree_rows(
    model: Path, target: str, out: Path, p: int, n: int, quantize: tuple[str, ...] = (), depths: tuple[int, ...] = ()
) -> dict:
    rows = {}
    try:
        api.build_runtime(progress=lambda phase, done, total: None if done else log(phase))
    except RvdeployError as exc:  # nothing to run the bundles with: do not build them just to skip them
        log(f"no riscv64 IREE runtime: {exc}")
        return {pipeline: {"skipped": f"no riscv64 IREE runtime ({exc.message})"} for pipeline in ("mmt4d", "baseline")}
    # (row name, pipeline, --quantize): the fp32 pipelines, then the mmt4d pipeline on quantized weights
    builds = [("mmt4d", "mmt4d", None), ("baseline", "baseline", None)] + [
        (f"mmt4d --quantize {q}", "mmt4d", q) for q in quantize
    ]
    for pipeline, pipe, quant in builds:
        log(f"building the {pipeline} bundle")
        bundle = api.build(
            str(model),
            out=out / f"mid-{target}-{pipeline.replace(' --quantize ', '-')}",
            target=target,
            pipeline=pipe,
            quantize=quant,
            force=True,
        ).bundle
        why = iree_runnable(bundle)
        if why:
            rows[pipeline] = {"skipped": why.removeprefix("IREE rows skipped: ")}
            continue
        log(f"counting {pipeline} under qemu")
        with get_board(f"qemu:{target}") as board:
            rows[pipeline] = measure_cost(bundle, board, p, n)
            for d in depths:  # decode after a D-token context: the growth with context
                rows[pipeline].setdefault("decode_at_depth", {})[d] = measure_cost(bundle, board, d, n)[
                    "per_generated_token"
                ]
    return rows


def llama_rows(model: Path, target: str, p: int, n: int, types: list[str], depths: tuple[int, ...] = ()) -> dict:
    llama = llamacpp.for_target(get_target(target), model, types, log)
    rows = {}
    with get_board(f"qemu:{target}") as board:
        for t in types:
            log(f"counting llama.cpp {t} under qemu")
            row = rows[llamabench.backend(t)] = llamabench.measure_cost(board, llama, t, p, n)
            for d in depths:
                row.setdefault("decode_at_depth", {})[d] = llamabench.measure_cost(board, llama, t, d, n)[
                    "per_generated_token"
                ]
    return rows


def fmt_m(x: float | None) -> str:
    return f"{x / 1e6:.2f}M" if x is not None else "-"


def table(rows: dict, shape: str | None, p: int, depths: tuple[int, ...] = ()) -> str:
    ref = rows.get("llama.cpp F32")
    anchors = ANCHORS.get(shape, {})
    lines = [
        "| backend | prefill instr/token | decode instr/token | prefill vector (x LMUL) | "
        "decode vector (x LMUL) | vs llama.cpp f32 (prefill / decode) | "
        + "".join(f"decode at depth {d} (vs f32) | " for d in depths)
        + f"growth per context token ({p} -> {depths[-1]}) | " * bool(depths)
        + "peak RSS | issue's anchor (prefill / decode) |",
        "|---|---|---|---|---|---|" + "---|" * (len(depths) + bool(depths)) + "---|---|",
    ]
    for name, c in rows.items():
        anchor = anchors.get(name)
        anchor_text = f"{fmt_m(anchor[0])} / {fmt_m(anchor[1])}" if anchor else "-"
        if "skipped" in c:
            lines.append(
                f"| IREE {name} | not measured: {c['skipped']} | | | | |"
                + " |" * (len(depths) + bool(depths))
                + f" | {anchor_text} |"
            )
            continue
        pp, tg = c["per_prompt_token"], c["per_generated_token"]
        vs = (
            (
                f"{pp['instructions'] / ref['per_prompt_token']['instructions']:.2f}x / "
                f"{tg['instructions'] / ref['per_generated_token']['instructions']:.2f}x"
            )
            if ref
            else "-"
        )
        rss = c.get("peak_rss_bytes")
        label = name if name.startswith("llama.cpp") else f"IREE {name}"
        at = c.get("decode_at_depth", {})
        deep = ""
        for d in depths:
            x, r = at.get(d, {}).get("instructions"), ((ref or {}).get("decode_at_depth") or {}).get(d)
            deep += f"{fmt_m(x)}" + (f" ({x / r['instructions']:.2f}x)" if x and r else "") + " | "
        if depths:
            last = at.get(depths[-1], {}).get("instructions")
            deep += f"{(last - tg['instructions']) / (depths[-1] - p) / 1e3:.1f}K | " if last else "- | "
        lines.append(
            f"| {label} | {fmt_m(pp['instructions'])} | {fmt_m(tg['instructions'])} | "
            f"{fmt_m(pp['vector_instructions'])} ({fmt_m(pp['vector_lmul_weighted'])}) | "
            f"{fmt_m(tg['vector_instructions'])} ({fmt_m(tg['vector_lmul_weighted'])}) | {vs} | {deep}"
            f"{f'{rss / 2**20:.0f} MiB' if rss else '-'} | "
            f"{anchor_text} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    ap.add_argument(
        "--model",
        type=Path,
        default=Path("/tmp/bench/models/mid"),
        help="directory from make_llama.py (model.onnx + model.safetensors)",
    )
    ap.add_argument("--target", default="spacemit-k1")
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench/bundles"))
    ap.add_argument("-p", type=int, default=64)
    ap.add_argument("-n", type=int, default=32)
    ap.add_argument("--types", nargs="+", default=list(TYPES), choices=TYPES, help="llama.cpp GGUF types")
    ap.add_argument(
        "--quantize",
        nargs="*",
        default=["int8", "q4"],
        choices=["int8", "q4"],
        help="also the mmt4d pipeline with --quantize (rows beside llama.cpp's Q8_0 / Q4_0)",
    )
    ap.add_argument(
        "--depth",
        type=int,
        nargs="*",
        default=[256],
        help="also decode per token after a context of D tokens (the growth with context)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not gguf.is_checkpoint(args.model):
        sys.exit(f"{args.model}: no model.safetensors + config.json: run benchmarks/make_llama.py mid {args.model}")
    try:
        shape = json.loads((args.model / "make_llama.json").read_text()).get("shape")
    except (OSError, json.JSONDecodeError):
        shape = None  # not from make_llama.py: no anchors to show
    t0 = time.perf_counter()
    try:
        depths = tuple(args.depth)
        rows = {
            **iree_rows(args.model, args.target, args.out, args.p, args.n, tuple(args.quantize), depths),
            **llama_rows(args.model, args.target, args.p, args.n, args.types, depths),
        }
    except RvdeployError as e:
        sys.exit(f"error: {e}")
    if args.json:
        print(
            json.dumps(
                {"target": args.target, "prompt_tokens": args.p, "gen_tokens": args.n, "depths": depths, "rows": rows},
                indent=1,
            )
        )
        return
    print(
        f"{args.model.name}: {args.target}, one thread, P={args.p}, N={args.n} "
        f"(executed guest instructions per token, by difference; {time.perf_counter() - t0:.0f} s)"
    )
    print(table(rows, shape, args.p, depths))
    if shape in GOALS:
        pp, tg = GOALS[shape]
        print(f"\ngoals ({shape}): mmt4d prefill <= {pp}x and decode <= {tg}x llama.cpp f32; never above baseline")


if __name__ == "__main__":
    main()
