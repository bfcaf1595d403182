"""`bench`: the whole run: the options checked, the bounds (--estimate), the comparisons prepared (baseline
bundle, llama.cpp), then either timings (measure) or instruction counts (cost) of each on one board."""

from __future__ import annotations

from pathlib import Path

from ..boards import get_board
from ..boards.base import NEEDS_EMULATION
from ..bundle import Bundle
from ..errors import RvdeployError
from ..peers import llamabench
from ..peers.llamacpp import prepare
from .baseline import Builder, baseline_bundle
from .cost import measure_cost
from .estimate import estimate
from .measure import check_lengths, iree_runnable, measure
from .report import BenchReport, bundle_label, cost_ratios, ratios


def bench(
    bundle_path: Path,
    *,
    board: str | None = None,
    prompt_tokens: int = 64,
    gen_tokens: int = 32,
    reps: int = 5,
    threads: int = 1,
    compare: str | None = None,
    baseline: Path | None = None,
    hf_model: str | None = None,
    gguf_types: list[str] | None = None,
    estimate_target: str | None = None,
    estimate_only: bool = False,
    cost: bool = False,
    on_stage=None,
    build: Builder,
) -> BenchReport:
    """BUILD makes the baseline bundle when --compare baseline needs one (rvdeploy.api.bench passes api.build)."""
    bundle = Bundle.open(bundle_path)
    bundle.verify()
    check_lengths(bundle, prompt_tokens, gen_tokens)
    report = BenchReport(board, threads, prompt_tokens, gen_tokens, reps, bundles=[bundle_label(bundle)])
    if compare not in (None, "baseline", "llama.cpp"):
        raise RvdeployError(f"unknown --compare {compare!r}", hint="baseline or llama.cpp")
    if (hf_model or gguf_types) and compare != "llama.cpp":
        raise RvdeployError("--hf-model and --gguf-type belong to --compare llama.cpp")
    if estimate_only or estimate_target:
        report.estimate = estimate(bundle, estimate_target or bundle.manifest.target.name, prompt_tokens)
    if estimate_only:
        return report
    if not board:
        raise RvdeployError("--board is required (or --estimate for bounds without a board)")
    b = get_board(board)  # the --board text parsed here, once; the board is opened below
    if cost and not b.can_count:  # before anything is built for the comparison
        raise RvdeployError(NEEDS_EMULATION)
    llama = None
    if compare == "llama.cpp":
        llama = prepare(bundle, b, hf_model, gguf_types, on_stage)
    bundles = [bundle]
    why_not = iree_runnable(bundle)
    if why_not:  # a riscv64 bundle without a runtime: only llama.cpp's rows can be measured
        if llama is None:
            raise RvdeployError(why_not.removeprefix("IREE rows skipped: "))
        report.notes.append(why_not)
        bundles = []
    if compare == "baseline":
        other, built_now = baseline_bundle(bundle, baseline, on_stage, build=build)
        if built_now:
            report.notes.append(f"built the baseline bundle {other.path}")
        bundles.append(other)
        report.bundles.append(bundle_label(other))
    main = bundle.manifest.pipeline.name
    with b:
        if cost:
            report.cost = {bd.manifest.pipeline.name: measure_cost(bd, b, prompt_tokens, gen_tokens) for bd in bundles}
            for t in llama.ggufs if llama else ():
                report.cost[llamabench.backend(t)] = llamabench.measure_cost(b, llama, t, prompt_tokens, gen_tokens)
        else:
            for bd in bundles:
                report.results += measure(bd, b, prompt_tokens, gen_tokens, reps, threads)
            for t in llama.ggufs if llama else ():
                label, rows = llamabench.measure(b, llama, t, prompt_tokens, gen_tokens, reps, threads)
                report.bundles.append(label)
                report.results += rows
    if cost:
        report.cost_ratios = cost_ratios(report.cost, main)
    else:
        report.ratios = ratios(report.results, main)
    return report
