"""rvdeploy bench: pp/tg tokens per second on a board (llama-bench's table), the baseline pipeline beside it,
roofline bounds without a board (--estimate), executed instructions under emulation (--cost)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import api
from ..bench.measure import MAX_THREADS
from ..bench.report import BenchReport
from ._options import MAX_REPS, MAX_TOKENS, BundleArg, Json
from ._output import err, human_count, human_size, out, print_json, print_table, stage_progress
from ._plot import plot, plot_path


def bench(
    bundle: BundleArg,
    board: Annotated[
        Optional[str],
        typer.Option(
            "--board", "-b", help="Where to measure: local, qemu[:TARGET], \\[user@]host[:port] (as for `run`)."
        ),
    ] = None,
    prompt_tokens: Annotated[
        int, typer.Option("--prompt-tokens", "-p", min=1, max=MAX_TOKENS, help="Prompt length P (ppP).")
    ] = 64,
    gen_tokens: Annotated[
        int,
        typer.Option(
            "--gen-tokens",
            "-n",
            min=1,
            max=MAX_TOKENS,
            help="Generated tokens N (tgN: N tokens after a P-token prompt, for the bundle's runner as for llama.cpp).",
        ),
    ] = 32,
    reps: Annotated[
        int, typer.Option("--reps", "-r", min=1, max=MAX_REPS, help="Repetitions (mean +- stddev over them).")
    ] = 5,
    threads: Annotated[
        int,
        typer.Option(
            "--threads", "-t", min=1, max=MAX_THREADS, help="1: local-sync; T>1: local-task with T worker groups."
        ),
    ] = 1,
    compare: Annotated[
        Optional[str],
        typer.Option(
            "--compare",
            help="baseline: also the same model built with "
            "--pipeline baseline (built next to BUNDLE if absent). "
            "llama.cpp: llama.cpp's llama-bench on the same board and "
            "threads, the same weights as GGUF (llama.cpp built for the "
            "board's ISA once, ~3 min; needs the model's HF weights).",
        ),
    ] = None,
    baseline_bundle: Annotated[
        Optional[Path],
        typer.Option("--baseline-bundle", help="An existing baseline bundle of the same model for --compare baseline."),
    ] = None,
    hf_model: Annotated[
        Optional[str],
        typer.Option(
            "--hf-model",
            help="--compare llama.cpp: the model's Hugging "
            "Face checkpoint (DIR or REPO with config.json and "
            "*.safetensors); default: beside the ONNX the bundle was "
            "built from, or the same hub repo.",
        ),
    ] = None,
    gguf_type: Annotated[
        Optional[list[str]],
        typer.Option(
            "--gguf-type",
            help="--compare llama.cpp: GGUF "
            "type(s) to run, repeatable: f32, f16, q8_0, q4_0 "
            "(default: the bundle's precision).",
        ),
    ] = None,
    estimate: Annotated[
        bool,
        typer.Option(
            "--estimate",
            help="Bytes and FLOPs per token and upper bounds on pp/tg from the target's figures (no board).",
        ),
    ] = False,
    target: Annotated[
        Optional[str], typer.Option("--target", help="Target whose figures --estimate uses (default: the bundle's).")
    ] = None,
    cost: Annotated[
        bool,
        typer.Option(
            "--cost",
            help="Executed guest instructions (all, vector, vector x LMUL) "
            "per prompt/generated token, one thread, on an emulated board: --board "
            "qemu[:TARGET] or one from `rvdeploy sim up` (plugin-capable qemu).",
        ),
    ] = False,
    plot_file: Annotated[
        Optional[Path],
        typer.Option("--plot", help="Write a bar chart (PNG) of the results (needs matplotlib: the `bench` extra)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --plot file.")] = False,
    json_: Json = False,
) -> None:
    """Measure prompt processing (ppP) and generation (tgN) speed of a bundle on a board."""
    if plot_file is not None:  # before minutes of measuring, not after
        plot_file = plot_path(plot_file, force)
    with stage_progress(api.BUILD_STAGES, quiet=json_) as hook:
        report = api.bench(
            bundle,
            board=board,
            prompt_tokens=prompt_tokens,
            gen_tokens=gen_tokens,
            reps=reps,
            threads=threads,
            compare=compare,
            baseline=baseline_bundle,
            hf_model=hf_model,
            gguf_types=gguf_type,
            estimate_target=target,
            estimate_only=estimate,
            cost=cost,
            on_stage=hook,
        )
    if plot_file is not None:
        path = plot(report, plot_file, force)
        err.print(f"wrote {path}")
    for note in report.notes:
        err.print(note, soft_wrap=True, markup=False)
    if json_:
        print_json(report.to_dict())
        return
    _print(report)


def _print(report: BenchReport) -> None:
    labels = {b["pipeline"]: b for b in report.bundles}
    main = report.bundles[0]["pipeline"]
    if report.results:
        rows = []
        for r in report.results:
            b = labels[r.pipeline]
            backend = r.pipeline if r.pipeline.startswith("llama.cpp") else f"IREE {r.pipeline}"
            rows.append(
                (
                    b["model"],
                    human_size(b["size_bytes"]),
                    human_count(b["params"]),
                    backend,
                    report.threads,
                    r.test,
                    f"{r.tokens_per_s:,.2f} ± {r.stddev:,.2f}",
                    _rss(r.peak_rss_bytes),
                )
            )
        print_table(None, ["model", "size", "params", "backend", "threads", "test", "t/s", "peak RSS"], rows)
        for test, by in report.ratios.items():
            for other, ratio in by.items():
                out.print(f"{test}: {main} / {other} = {ratio:.2f}x (t/s)")
        tg = f"{report.gen_tokens} tokens after a {report.prompt_tokens}-token prompt (the runner's decode steps"
        if any(r.pipeline.startswith("llama.cpp") for r in report.results):
            tg += f"; llama.cpp: -n {report.gen_tokens} -d {report.prompt_tokens}"
        tg += ")"
        out.print(f"[dim]board {report.board}, {report.reps} repetitions; tg = {tg}[/dim]")
    if report.estimate:
        e = report.estimate
        peak = next(k for k in e if k.startswith("peak_gflops"))
        print_table(
            f"estimate for {e['target']} (upper bounds, context {e['prompt_tokens']})",
            ["quantity", "value"],
            [
                ("FLOPs per token", f"{e['flops_per_token']:,}"),
                ("bytes read per generated token", f"{e['bytes_per_token']:,}"),
                (f"pp <= {e['cores']} cores x {e[peak]:g} GFLOP/s / FLOPs", f"{e['pp_max_tokens_per_s']:,.1f} t/s"),
                (f"tg <= {e['dram_gbps']:g} GB/s / bytes", f"{e['tg_max_tokens_per_s']:,.1f} t/s"),
            ],
        )
    if report.cost:
        rows = []
        for pipe, c in report.cost.items():
            for phase, test in (
                ("per_prompt_token", f"pp{report.prompt_tokens}"),
                ("per_generated_token", f"tg{report.gen_tokens}"),
            ):
                ratio = report.cost_ratios.get(phase, {}).get(pipe)
                rows.append(
                    (
                        pipe,
                        test,
                        f"{c[phase]['instructions']:,.0f}",
                        f"{c[phase]['vector_instructions']:,.0f}",
                        f"{c[phase]['vector_lmul_weighted']:,.0f}",
                        f"{ratio:.2f}x" if ratio else "",
                        _rss(c.get("peak_rss_bytes")),
                    )
                )
        print_table(
            "executed guest instructions per token (qemu, one thread, by difference)",
            ["backend", "test", "instructions", "vector", "vector x LMUL", f"{main} / this", "peak RSS"],
            rows,
        )


def _rss(n: int | None) -> str:
    return human_size(n) if n else "-"


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
