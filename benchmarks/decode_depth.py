#!/usr/bin/env python3
"""Executed riscv64 instructions per decode step at a given context depth, for a bundle whose module keeps its
KV cache, without prefilling that context under qemu; llama.cpp beside it, at the same depth.

  python benchmarks/decode_depth.py BUNDLE --depth 256 [-n 4] [--check] [--llama-model DIR --type f32] [--json]
  python benchmarks/decode_depth.py --table FILE.json

Why: at the Llama-3.2-1B shape an emulated prefill of 256 tokens takes hours, and `bench --cost -p 256` needs
two of them for a decode figure. A decode step's work does not depend on what the cache holds (fixed-capacity
cache, attention over positions 0..D, no data-dependent branches in the generated code or the kernels), so
the runner's measurement flag --cached_tokens=D-1 starts it as if D-1 tokens were cached and the one-token
prompt goes through decode at position D-1. By difference, as `bench --cost` does:
  per generated token at depth D = (count(cached D-1, 1 + N decode steps) - count(cached D-1, 1 step)) / N
(decode steps at positions D..D+N-1, the ones `bench --cost -p D -n N` counts). --check also counts it that
way, with the real D-token prefill, and prints both (use it on a small model; the two agree to the count).

llama.cpp has no such flag: its side is llama-bench's real `-p 0 -d D -n N+1` against `-n 1` (two runs with
the D-token prefill: hours at the 1B shape, minutes on make_llama.py's llama-3.2-1b-attention, which has the
1B's attention in 2 of its 16 layers). --table FILE prints the table of a JSON this script wrote, running nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rvdeploy.bench.cost import measure_cost, per_unit  # noqa: E402
from rvdeploy.bench.measure import measuring_args  # noqa: E402
from rvdeploy.boards import get_board  # noqa: E402
from rvdeploy.bundle import Bundle  # noqa: E402
from rvdeploy.errors import RvdeployError  # noqa: E402
from rvdeploy.generation import RUNNER  # noqa: E402
from rvdeploy.peers import llamabench, llamacpp  # noqa: E402
from rvdeploy.targets import get_target  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def iree_runs(bundle: Bundle, board, depth: int, n: int) -> list:
    """The two runner runs (1 and N+1 decode steps) whose difference is N decode steps at depth D."""
    if not bundle.manifest.kv_cache:
        raise RvdeployError(
            f"{bundle.path}: its module takes the KV cache as inputs (no in-place cache), so a decode at depth "
            "cannot start without the prefill; use `rvdeploy bench --cost -p D`"
        )
    if depth < 2 or depth + n > bundle.manifest.max_context:
        raise RvdeployError(f"--depth {depth} -n {n}: needs 2 <= D and D + N <= {bundle.manifest.max_context}")
    cached = [f"--cached_tokens={depth - 1}"]
    return [
        lambda new=new: board.count_tool(bundle, RUNNER, measuring_args(bundle.manifest, 1, new) + cached)[0]
        for new in (1, n + 1)
    ]


def llama_runs(board, llama, gguf_type: str, depth: int, n: int) -> list:
    gguf = llama.ggufs[gguf_type]
    return [
        lambda new=new: board.count_program(
            llama.tools / llamabench.TOOL,
            llamabench.bench_args(gguf, "tg", depth, new, 1, 1, warmup=False),
            cpu=llama.cpu,
        )[0]
        for new in (1, n + 1)
    ]


def table(doc: dict) -> str:
    """Markdown: one row per backend, one column per depth, ratios against the first llama.cpp row, and the
    growth per token of context from the first depth to the last."""
    rows = doc["rows"]
    depths = sorted({int(d) for by_depth in rows.values() for d in by_depth})
    ref = next((v for k, v in rows.items() if k.startswith("llama.cpp")), None)
    grows = len(depths) > 1
    head = [f"decode at depth {d}" for d in depths] + [
        f"growth per context token ({depths[0]} -> {depths[-1]})"
    ] * grows
    lines = ["| backend | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]

    def at(by_depth: dict | None, d: int) -> dict | None:
        return (by_depth or {}).get(d) or (by_depth or {}).get(str(d))  # int keys, or str from JSON

    for name, by_depth in rows.items():
        cells = []
        for d in depths:
            c, r = at(by_depth, d), at(ref, d)
            ratio = f" ({c['instructions'] / r['instructions']:.2f}x)" if c and r and ref is not by_depth else ""
            cells.append(f"{c['instructions'] / 1e6:.2f}M{ratio}" if c else "-")
        if grows:
            first, last = at(by_depth, depths[0]), at(by_depth, depths[-1])
            span = depths[-1] - depths[0]
            cells.append(
                f"{(last['instructions'] - first['instructions']) / span / 1e3:.2f}K" if first and last else "-"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    ap.add_argument(
        "bundle", type=Path, nargs="?", help="a riscv64 bundle with an in-place KV cache (manifest kv_cache)"
    )
    ap.add_argument("--depth", type=int, nargs="+", default=[256], help="context depths D (tokens)")
    ap.add_argument("-n", type=int, default=4, help="decode steps counted per depth")
    ap.add_argument("--check", action="store_true", help="also count with the real D-token prefill")
    ap.add_argument("--llama-model", type=Path, help="HF checkpoint directory: llama.cpp at the same depths")
    ap.add_argument("--type", default="f32", help="llama.cpp GGUF type (f32, f16, q8_0, q4_0)")
    ap.add_argument("--table", type=Path, help="print the table of this script's JSON output, run nothing")
    ap.add_argument("-j", "--jobs", type=int, default=2, help="qemu runs at once")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    if a.table:
        print(table(json.loads(a.table.read_text())))
        return
    if a.bundle is None:
        ap.error("give a BUNDLE (or --table FILE)")
    bundle = Bundle.open(a.bundle)
    target = bundle.manifest.target.name
    jobs: dict[tuple[str, int], list] = {}
    with get_board(f"qemu:{target}") as board:
        for d in a.depth:
            jobs[("rvdeploy", d)] = iree_runs(bundle, board, d, a.n)
        if a.llama_model:
            llama = llamacpp.for_target(get_target(target), a.llama_model, [a.type], log)
            for d in a.depth:
                jobs[(f"llama.cpp {a.type}", d)] = llama_runs(board, llama, a.type, d, a.n)
        log(f"{sum(map(len, jobs.values()))} counting runs under qemu, {a.jobs} at once")
        with ThreadPoolExecutor(a.jobs) as ex:
            futures = {key: [ex.submit(f) for f in runs] for key, runs in jobs.items()}
            if a.check:
                checks = {d: ex.submit(measure_cost, bundle, board, d, a.n) for d in a.depth}
            rows: dict[str, dict] = {}
            for (name, d), (one, many) in futures.items():
                counts = (one.result(), many.result())
                rows.setdefault(name, {})[d] = {**per_unit(*counts, a.n), "runs": counts}
                log(f"{name} at depth {d}: {rows[name][d]['instructions'] / 1e6:.2f}M per decode step")
            if a.check:
                rows["rvdeploy, real prefill (check)"] = {
                    d: f.result()["per_generated_token"] for d, f in checks.items()
                }
    doc = {"bundle": str(a.bundle), "target": target, "n": a.n, "rows": rows}
    if a.json:
        print(json.dumps(doc, indent=1, default=str))
        return
    print(table(doc))


if __name__ == "__main__":
    try:
        main()
    except RvdeployError as exc:
        sys.exit(f"decode_depth: {exc}")
