"""llama.cpp's llama-bench on a board, measured the way rvdeploy measures a bundle:
- ppP: `llama-bench -p P -n 0` (one P-token batch from an empty context);
- tgN: `llama-bench -p 0 -n N -d P` (N tokens generated one at a time after a P-token context), so both
  sides time generation at the same context;
- cost: executed instructions under the plugin qemu, one thread, no warm-up, one repetition, by difference
  as for bundles (rvdeploy.bench.cost):
    per prompt token    = (count(-p P) - count(-p 1)) / (P - 1)
    per generated token = (count(-n N+1 -d P) - count(-n 1 -d P)) / N
  model loading and the depth-P prefill are in both runs of a pair and cancel.
llama.cpp's own defaults stay (f16 KV cache, its thread pool, weight repacking): what its users get.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..bench.cost import by_difference
from ..bench.measure import Measurement
from ..boards.base import Board, require_counting
from ..errors import RvdeployError
from .llamacpp import LlamaCpp

TOOL = "llama-bench"


def backend(gguf_type: str) -> str:
    return f"llama.cpp {gguf_type.upper()}"


def bench_args(
    gguf: Path, test: str, prompt_tokens: int, gen_tokens: int, reps: int, threads: int, warmup: bool = True
) -> list[str | Path]:
    """llama-bench's arguments for the pp or tg test (the GGUF as a Path: a file to ship to the board)."""
    if test == "pp":
        shape = ["-p", str(prompt_tokens), "-n", "0"]
    elif test == "tg":
        shape = ["-p", "0", "-n", str(gen_tokens), "-d", str(prompt_tokens)]
    else:
        raise ValueError(test)
    args: list[str | Path] = ["-m", gguf, *shape, "-r", str(reps), "-t", str(threads), "-o", "json"]
    return args if warmup else [*args, "--no-warmup"]


def parse_json(stdout: str) -> dict:
    """The one test record of a llama-bench -o json run."""
    start = stdout.find("[")
    try:
        doc = json.loads(stdout[start:]) if start >= 0 else None
    except json.JSONDecodeError:
        doc = None
    if not doc or not isinstance(doc, list) or "avg_ts" not in doc[0]:
        last = (stdout.strip().splitlines() or ["(nothing)"])[-1][:200]
        raise RvdeployError(f"{TOOL} printed no JSON report: {last}")
    return doc[0]


def label(record: dict, gguf_type: str, target: str) -> dict:
    """The row label, as bench.report.bundle_label gives it for a bundle."""
    return {
        "model": record.get("model_type", "?"),
        "size_bytes": int(record.get("model_size", 0)),
        "params": int(record.get("model_n_params", 0)),
        "pipeline": backend(gguf_type),
        "target": target,
        "gguf": record.get("model_filename"),
        "build_commit": record.get("build_commit"),
        "type_k": record.get("type_k"),
        "type_v": record.get("type_v"),
    }


def measure(
    board: Board, llama: LlamaCpp, gguf_type: str, prompt_tokens: int, gen_tokens: int, reps: int, threads: int
) -> tuple[dict, list[Measurement]]:
    """ppP and tgN of llama.cpp on one GGUF type, on an open board; returns (label, rows)."""
    rows, record = [], {}
    gguf = llama.ggufs[gguf_type]
    for test, name in (("pp", f"pp{prompt_tokens}"), ("tg", f"tg{gen_tokens}")):
        run = board.run_program(
            llama.tools / TOOL, bench_args(gguf, test, prompt_tokens, gen_tokens, reps, threads), cpu=llama.cpu
        )
        record = parse_json(run.stdout)
        samples = [float(s) for s in record.get("samples_ts") or [record["avg_ts"]]]
        seconds = [float(ns) * 1e-9 for ns in record.get("samples_ns") or [record["avg_ns"]]]
        rows.append(
            Measurement(
                backend(gguf_type),
                name,
                float(record["avg_ts"]),
                float(record.get("stddev_ts", 0)),
                samples,
                seconds,
                peak_rss_bytes=run.peak_rss_bytes,
            )
        )
    return label(record, gguf_type, llama.target), rows


def measure_cost(board: Board, llama: LlamaCpp, gguf_type: str, prompt_tokens: int, gen_tokens: int) -> dict:
    """Per-token instruction counts of llama.cpp on one GGUF type on an emulated board (one thread), with the
    peak RSS of the runs where this machine sees them."""
    require_counting(board)
    if prompt_tokens < 2:
        raise RvdeployError("--cost needs -p 2 or more (per prompt token = difference of P and 1 token prompts)")
    runs = {
        "11": ("pp", 1, 0),
        "p1": ("pp", prompt_tokens, 0),
        "pn": ("tg", prompt_tokens, gen_tokens + 1),
        "p1g": ("tg", prompt_tokens, 1),
    }
    counts, peaks = {}, {}
    for key, (test, p, n) in runs.items():
        counts[key], run = board.count_program(
            llama.tools / TOOL, bench_args(llama.ggufs[gguf_type], test, p, n, 1, 1, warmup=False), cpu=llama.cpu
        )
        peaks[key] = run.peak_rss_bytes
    # prompt side: -p P vs -p 1; generation side: N+1 vs 1 generated tokens after the same depth-P context
    result = by_difference(counts["11"], counts["p1"], counts["pn"], prompt_tokens, gen_tokens)
    gen = by_difference(counts["11"], counts["p1g"], counts["pn"], prompt_tokens, gen_tokens)
    result["per_generated_token"] = gen["per_generated_token"]
    result["runs"] = {
        "prompt1": counts["11"],
        f"prompt{prompt_tokens}": counts["p1"],
        f"depth{prompt_tokens}_gen1": counts["p1g"],
        f"depth{prompt_tokens}_gen{gen_tokens + 1}": counts["pn"],
    }
    result["peak_rss_bytes"] = max((v for v in peaks.values() if v), default=None)
    result["board"] = board.name
    result["gguf_bytes"] = llama.ggufs[gguf_type].stat().st_size
    return result
