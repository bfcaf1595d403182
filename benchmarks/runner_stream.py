#!/usr/bin/env python3
"""What a user of `rvdeploy run` waits for: time to first token, decode tokens/s and the runner's peak RSS,
on a board (default: the demo built for rv64gcv-vlen256, under qemu), next to the weight bytes.

  python benchmarks/runner_stream.py [--bundle DIR] [--board qemu] [-p PROMPT] [-n 64] [-r 3] [--json]

A bundle without tokenizer.json gets synthetic ids, one per word of the prompt. Without --bundle the demo is built for rv64gcv-vlen256 into a temporary directory (offline, the riscv64
runtime comes from RVDEPLOY_IREE_SOURCE). Time to first token is wall time from starting the runner's launcher
to the first token id on this side (bundle checks, module load and prefill included); decode tokens/s and
load time are the runner's own figures. Under qemu, wall times are emulation times (not a board's), and the
peak RSS includes the emulator's own memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rvdeploy import api  # noqa: E402
from rvdeploy.bench.measure import synthetic_prompt  # noqa: E402
from rvdeploy.boards import get_board  # noqa: E402
from rvdeploy.bundle import Bundle  # noqa: E402
from rvdeploy.generation import Sampling, runner_args  # noqa: E402
from rvdeploy.tokenizer import TextCodec  # noqa: E402


def one_run(bundle: Bundle, board, ids: list[int], n: int) -> dict:
    args = runner_args(bundle.manifest, ids, n, Sampling(), stop_at_eos=False)
    arrivals = []
    start = time.monotonic()
    with board.start_runner(bundle, args) as proc:
        turn = proc.read_turn(on_token=lambda _: arrivals.append(time.monotonic() - start))
        proc.finish()
    first = arrivals[0] if arrivals else None
    total = time.monotonic() - start
    s = turn.stats
    return {
        "first_token_s": first,
        "total_s": total,
        "load_s": s["load_s"],
        "prefill_s": s["prefill_s"],
        "decode_tokens_per_s": s["decode_steps"] / s["decode_s"] if s["decode_s"] else None,
        "peak_rss_bytes": s["peak_rss_kb"] * 1024,
        "tokens": len(turn.ids),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path)
    ap.add_argument("--board", default="qemu")
    ap.add_argument("-p", "--prompt", default="Beautiful is")
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("-r", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="rvdeploy-bench-") as tmp:
        path = args.bundle or api.build("demo", out=Path(tmp) / "demo", target="rv64gcv-vlen256").bundle.path
        bundle = Bundle.open(path)
        if bundle.manifest.tokenizer:
            ids = TextCodec(bundle.file(bundle.manifest.tokenizer)).encode(args.prompt)
        else:  # a model without tokenizer.json (benchmarks/make_llama.py's): as many synthetic ids as words
            ids = synthetic_prompt(bundle.manifest, len(args.prompt.split()))
        with get_board(args.board) as board:
            runs = [one_run(bundle, board, ids, args.n) for _ in range(args.r)]
        weights = (bundle.path / bundle.manifest.parameters.file).stat().st_size  # before tmp goes
    summary = {
        k: statistics.median(r[k] for r in runs)
        for k in ("first_token_s", "total_s", "load_s", "prefill_s", "decode_tokens_per_s")
    }
    summary.update(
        peak_rss_bytes=max(r["peak_rss_bytes"] for r in runs),
        weight_bytes=weights,
        board=args.board,
        bundle=str(args.bundle or "demo (rv64gcv-vlen256)"),
        prompt_tokens=len(ids),
        new_tokens=args.n,
        runs=runs,
    )
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"{summary['bundle']} on {args.board}, {len(ids)}-token prompt, {args.n} new tokens, median of {args.r}:")
    print(
        f"  time to first token {summary['first_token_s']:.3f} s (load {summary['load_s']:.3f} s, prefill "
        f"{summary['prefill_s']:.3f} s), all {args.n} tokens {summary['total_s']:.3f} s"
    )
    print(f"  decode {summary['decode_tokens_per_s']:.1f} tokens/s")
    print(
        f"  runner peak RSS {summary['peak_rss_bytes'] / 2**20:.1f} MiB, weights {weights / 2**20:.1f} MiB "
        f"({summary['peak_rss_bytes'] / weights:.2f}x)"
    )


if __name__ == "__main__":
    main()
