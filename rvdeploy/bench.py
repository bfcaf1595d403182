"""rvdeploy bench: prompt processing (ppP) and text generation (tgN) speed of a bundle on a board, next to the
baseline pipeline or llama.cpp (rvdeploy.peers); upper bounds from a target's published figures (estimate);
executed guest instructions under emulation (cost, rvdeploy.qemu_cost). Everything here returns values and
prints nothing.

Timing comes from the bundle's own runner (rvdeploy-runner, what `run` uses) on the board, one process per
repetition, with llama-bench's meaning of the tests:
- ppP: the runner's prefill of a P-token prompt: P / its prefill seconds.
- tgN: the N decode steps that follow (N+1 new tokens: the first comes from the prefill's logits), each
  reading a KV cache of P tokens and more: N / their seconds.
Greedy, no end-of-sequence stop. Each repetition gives one tokens/s figure per test; the report is mean +-
sample standard deviation over them. What bench reports is what `run` delivers.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import modelconfig, outputs
from .atomic import file_into_place
from .boards import get_board
from .bundle import MANIFEST, Bundle, Manifest
from .bundle.names import CONFIG
from .errors import RvdeployError
from .targets import get_target

_DTYPE_BYTES = {"f32": 4, "f16": 2, "bf16": 2, "f64": 8, "i8": 1}


MAX_THREADS = 64  # IREE's task executor manages at most 64 workers (IREE_TASK_EXECUTOR_MAX_WORKER_COUNT)


def device_flags(threads: int) -> list[str]:
    if not 1 <= threads <= MAX_THREADS:
        raise RvdeployError(f"--threads must be from 1 to {MAX_THREADS} (got {threads})")
    if threads == 1:
        return ["--device=local-sync"]
    return ["--device=local-task", f"--task_topology_max_group_count={threads}"]


def synthetic_prompt(manifest: Manifest, prompt_tokens: int) -> list[int]:
    """P token ids for measuring (the values do not change the work)."""
    vocab = manifest.model.graph.vocab_size or 2
    return [1 + i % (vocab - 1) for i in range(prompt_tokens)]


def measuring_args(manifest: Manifest, prompt_tokens: int, new_tokens: int, threads: int = 1) -> list[str]:
    """The runner's arguments for a measurement: greedy, no EOS stop, THREADS workers."""
    from .generation import Sampling, runner_args

    args = runner_args(manifest, synthetic_prompt(manifest, prompt_tokens), new_tokens, Sampling(),
                       stop_at_eos=False)
    return [a for a in args if not a.startswith("--device=")] + device_flags(threads)


# ---- model facts -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelFacts:
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    vocab: int
    dtype: str
    weight_macs: int  # multiply-adds of the weight contractions per token (projections, MLP, lm_head)
    embedding_params: int  # the token embedding table when not shared with lm_head, else 0
    parameter_bytes: int  # the parameter archive(s) as stored in the bundle

    @property
    def dtype_bytes(self) -> int:
        return _DTYPE_BYTES.get(self.dtype, 4)

    @property
    def params(self) -> int:
        return self.weight_macs + self.embedding_params


def model_facts(bundle: Bundle) -> ModelFacts:
    """Shapes from the manifest (graph facts, the mmt4d pipeline's packed weights) and config.json."""
    m = bundle.manifest
    graph = m.model.graph
    config = {}
    if m.lists(CONFIG):
        config = modelconfig.parse(bundle.read_text(CONFIG), f"{bundle.path}/{CONFIG}")

    def number(key: str, default: int) -> int:  # config.json is the model's, not rvdeploy's: check what is used
        value = config.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise RvdeployError(f"{bundle.path}/config.json: {key} is {value!r}, not a whole number")
        return value

    layers, kvh, hd = graph.num_layers, graph.num_kv_heads, graph.head_dim
    heads = number("num_attention_heads", kvh)
    hidden = number("hidden_size", heads * hd)
    vocab = graph.vocab_size or number("vocab_size", 0)
    packed = m.pipeline.mmt4d.packed_weights if m.pipeline.mmt4d else ()
    inter = number("intermediate_size", 0)
    if packed:
        weight_macs = sum(pw.k * pw.n for pw in packed)
    elif inter:
        per_layer = 2 * hidden * heads * hd + 2 * hidden * kvh * hd + 3 * hidden * inter
        weight_macs = layers * per_layer + hidden * vocab
    else:
        raise RvdeployError(f"{bundle.path}: no packed weights and no config.json intermediate_size: cannot count "
                            "the model's weight contractions")
    tied = bool(config.get("tie_word_embeddings", False))
    return ModelFacts(layers=layers, heads=heads, kv_heads=kvh, head_dim=hd, hidden=hidden, vocab=vocab,
                      dtype=graph.dtype or "f32", weight_macs=weight_macs,
                      embedding_params=0 if tied else vocab * hidden,
                      parameter_bytes=m.parameter_bytes)


def bundle_label(bundle: Bundle) -> dict:
    m = bundle.manifest
    facts = model_facts(bundle)
    return {"model": f"{m.model.id} {m.model.variant or ''}".strip(), "size_bytes": m.model_bytes,
            "params": facts.params, "pipeline": m.pipeline.name, "target": m.target.name,
            "bundle": str(bundle.path)}


# ---- measurement ----------------------------------------------------------------------------------------
@dataclass
class Measurement:
    pipeline: str
    test: str  # "pp64", "tg32"
    tokens_per_s: float  # mean over repetitions
    stddev: float
    samples: list[float]  # tokens/s, one per repetition
    seconds_per_call: list[float]
    peak_rss_bytes: int | None = None  # where this machine sees the process (qemu board): emulator included

    def to_dict(self) -> dict:
        return {"pipeline": self.pipeline, "test": self.test, "t/s": round(self.tokens_per_s, 3),
                "stddev": round(self.stddev, 3), "samples": [round(s, 3) for s in self.samples],
                "seconds_per_call": self.seconds_per_call, "peak_rss_bytes": self.peak_rss_bytes}


def _stats(samples: list[float]) -> tuple[float, float]:
    return statistics.fmean(samples), statistics.stdev(samples) if len(samples) > 1 else 0.0


def check_lengths(bundle: Bundle, prompt_tokens: int, gen_tokens: int) -> None:
    if prompt_tokens < 1 or gen_tokens < 1:
        raise RvdeployError("-p and -n must be at least 1")
    limit = bundle.manifest.max_context
    if prompt_tokens + gen_tokens > limit:
        raise RvdeployError(f"-p {prompt_tokens} + -n {gen_tokens} exceeds the model's context of {limit} tokens")


def measure(bundle: Bundle, board, prompt_tokens: int = 64, gen_tokens: int = 32, reps: int = 5,
            threads: int = 1) -> list[Measurement]:
    """ppP and tgN of one bundle on an open board (a board object inside `with`): REPS runner processes."""
    check_lengths(bundle, prompt_tokens, gen_tokens + 1)
    if reps < 1:
        raise RvdeployError(f"-r must be at least 1 (got {reps})")
    args = measuring_args(bundle.manifest, prompt_tokens, gen_tokens + 1, threads)
    stats = []
    for _ in range(reps):
        with board.start_runner(bundle, args) as proc:
            turn = proc.read_turn()
            proc.finish()
        if turn.stats.get("decode_steps") != gen_tokens:
            raise RvdeployError(f"the runner stopped after {len(turn.ids)} of {gen_tokens + 1} tokens "
                                f"({turn.reason or 'no reason given'})")
        stats.append(turn.stats)
    peaks = [s.get("peak_rss_kb", -1) for s in stats]
    peak = max(peaks) * 1024 if min(peaks) > 0 else None
    rows = []
    for test, tokens, key in ((f"pp{prompt_tokens}", prompt_tokens, "prefill_s"),
                              (f"tg{gen_tokens}", gen_tokens, "decode_s")):
        seconds = [s[key] for s in stats]
        samples = [tokens / t for t in seconds]
        mean, sd = _stats(samples)
        rows.append(Measurement(bundle.manifest.pipeline.name, test, mean, sd, samples,
                                [t / tokens for t in seconds], peak_rss_bytes=peak))
    return rows


# ---- the baseline bundle ----------------------------------------------------------------------------------
def _same_model(a: Manifest, b: Manifest) -> bool:
    keys = lambda m: (m.model.id, m.model.variant, m.model.revision, m.target.name, m.compiler.version)
    return keys(a) == keys(b)


def default_baseline_path(bundle: Bundle) -> Path:
    return bundle.path.with_name(bundle.path.name + "-baseline")


def baseline_bundle(bundle: Bundle, path: Path | None = None, on_stage=None) -> tuple[Bundle, bool]:
    """The same model built with --pipeline baseline: `path` if given (it must be one), else BUNDLE-baseline
    next to the bundle, reused when it matches (model, variant, revision, target, compiler) and built
    otherwise. Returns (bundle, built_now)."""
    m = bundle.manifest
    if m.pipeline.name == "baseline":
        raise RvdeployError(f"{bundle.path} is itself a baseline bundle: --compare baseline compares an mmt4d bundle "
                            "with it")
    if path is not None:
        other = Bundle.open(path)
        if other.manifest.pipeline.name != "baseline" or not _same_model(m, other.manifest):
            raise RvdeployError(f"--baseline-bundle {path}: not a baseline build of the same model, target and "
                                f"compiler as {bundle.path}")
        return other, False
    path = default_baseline_path(bundle)
    if (path / MANIFEST).is_file():
        other = Bundle.open(path)
        if other.manifest.pipeline.name == "baseline" and _same_model(m, other.manifest):
            return other, False
        if other.manifest.pipeline.name != "baseline":
            raise RvdeployError(f"{path} exists and is not a baseline bundle", hint="pass --baseline-bundle DIR")
    elif path.exists():
        raise RvdeployError(f"{path} exists and is not a bundle", hint="remove it or pass --baseline-bundle DIR")
    source = m.model.source
    model = "demo" if source == "demo" else m.model.id
    if source in ("dir", "file") and not Path(model).exists():
        raise RvdeployError(f"cannot rebuild {bundle.path}'s model with the baseline pipeline: {model} is not here",
                            hint="build it with --pipeline baseline and pass --baseline-bundle DIR")
    from . import api

    kwargs = {"on_stage": on_stage} if on_stage else {}
    result = api.build(model, out=path, variant=m.model.variant or "fp32",
                       revision=m.model.revision, target=m.target.name, pipeline="baseline",
                       force=True, **kwargs)
    return result.bundle, True


# ---- the whole run ------------------------------------------------------------------------------------------
@dataclass
class BenchReport:
    board: str | None
    threads: int
    prompt_tokens: int
    gen_tokens: int
    reps: int
    bundles: list[dict] = field(default_factory=list)  # bundle_label per pipeline
    results: list[Measurement] = field(default_factory=list)
    ratios: dict = field(default_factory=dict)  # test -> {other: bundle t/s / other t/s}
    estimate: dict | None = None
    cost: dict | None = None  # pipeline or llama.cpp backend -> per-token counts
    cost_ratios: dict = field(default_factory=dict)  # phase -> {other: bundle instructions / other's}
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "results"}
        d["results"] = [r.to_dict() for r in self.results]
        d["method"] = {"pp": f"P / the runner's prefill time for a {self.prompt_tokens}-token prompt",
                       "tg": f"N / the time of the runner's N decode steps after a {self.prompt_tokens}-token prompt",
                       "stat": "mean and sample stddev over -r runner processes"}
        return d


def ratios(results: list[Measurement], main: str) -> dict:
    """test -> {other pipeline: main's t/s / other's t/s} (above 1: the bundle is faster)."""
    by = {(r.pipeline, r.test): r.tokens_per_s for r in results}
    out: dict = {}
    for (pipe, test), value in by.items():
        mine = by.get((main, test))
        if pipe != main and mine and value:
            out.setdefault(test, {})[pipe] = round(mine / value, 3)
    return out


def cost_ratios(cost: dict, main: str) -> dict:
    """phase -> {other: main's instructions per token / other's} (below 1: the bundle executes fewer)."""
    out: dict = {}
    if main not in cost:
        return out
    for phase in ("per_prompt_token", "per_generated_token"):
        mine = cost[main][phase]["instructions"]
        for other, c in cost.items():
            if other != main and c[phase]["instructions"]:
                out.setdefault(phase, {})[other] = round(mine / c[phase]["instructions"], 3)
    return out


def iree_runnable(bundle: Bundle) -> str | None:
    """None when the bundle can run on a board of its architecture; else why not (a riscv64 bundle without
    an IREE runtime: none exists on any package registry, the user supplies one)."""
    rt = bundle.manifest.runtime
    if rt.kind == "none":
        return (f"IREE rows skipped: {bundle.path} has no {rt.arch or ''} IREE runtime "
                f"({rt.hint or 'register one with `rvdeploy runtime add DIR` and rebuild'})")
    return None


def bench(bundle_path: Path, *, board: str | None = None, prompt_tokens: int = 64, gen_tokens: int = 32,
          reps: int = 5, threads: int = 1, compare: str | None = None, baseline: Path | None = None,
          hf_model: str | None = None, gguf_types: list[str] | None = None,
          estimate_target: str | None = None, estimate_only: bool = False, cost: bool = False,
          on_stage=None) -> BenchReport:
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
    if cost and board == "local":  # before anything is built for the comparison
        from .qemu_cost import NEEDS_EMULATION

        raise RvdeployError(NEEDS_EMULATION)
    llama = None
    if compare == "llama.cpp":
        from .peers.llamacpp import prepare

        llama = prepare(bundle, board, hf_model, gguf_types, on_stage)
    bundles = [bundle]
    why_not = iree_runnable(bundle)
    if why_not:  # a riscv64 bundle without a runtime: only llama.cpp's rows can be measured
        if llama is None:
            raise RvdeployError(why_not.removeprefix("IREE rows skipped: "))
        report.notes.append(why_not)
        bundles = []
    if compare == "baseline":
        other, built_now = baseline_bundle(bundle, baseline, on_stage)
        if built_now:
            report.notes.append(f"built the baseline bundle {other.path}")
        bundles.append(other)
        report.bundles.append(bundle_label(other))
    main = bundle.manifest.pipeline.name
    from .peers import llamabench  # here: it imports this module
    from .qemu_cost import measure_cost

    with get_board(board) as b:
        if cost:
            report.cost = {bd.manifest.pipeline.name: measure_cost(bd, b, prompt_tokens, gen_tokens)
                           for bd in bundles}
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


# ---- estimate ---------------------------------------------------------------------------------------------
def estimate(bundle: Bundle, target: str, prompt_tokens: int = 64) -> dict:
    """Bytes read and FLOPs per token, and roofline upper bounds for `target` from its public figures:
      FLOPs/token = 2 x (multiply-adds of the weight contractions + attention at context P, i.e. QK^T and AV:
                    2 x layers x heads x head_dim x P)
      bytes/token = weight-contraction parameters x dtype bytes + one embedding row + the KV cache read at
                    context P (2 x layers x kv_heads x head_dim x P x dtype bytes)
      pp <= cores x peak GFLOP/s (of the model's dtype) / FLOPs per token;  tg <= DRAM GB/s / bytes per token."""
    tgt = get_target(target)
    f = model_facts(bundle)
    p = prompt_tokens
    attention_macs = 2 * f.layers * f.heads * f.head_dim * p
    flops = 2 * (f.weight_macs + attention_macs)
    kv_bytes = 2 * f.layers * f.kv_heads * f.head_dim * p * f.dtype_bytes
    bytes_per_token = f.weight_macs * f.dtype_bytes + f.hidden * f.dtype_bytes + kv_bytes
    peak_key = "peak_gflops_f16" if f.dtype in ("f16", "bf16") else "peak_gflops_f32"
    figures = tgt.figures
    missing = [k for k in (peak_key, "dram_gbps") if k not in figures]
    if missing or not tgt.cores:
        raise RvdeployError(f"target {tgt.name} has no {', '.join(missing) or 'core count'} figure to estimate with",
                            hint="pass --target with a board profile, e.g. --target spacemit-k1")
    pp_bound = tgt.cores * figures[peak_key] * 1e9 / flops
    tg_bound = figures["dram_gbps"] * 1e9 / bytes_per_token
    return {"target": tgt.name, "prompt_tokens": p, "dtype": f.dtype, "params": f.params,
            "parameter_bytes": f.parameter_bytes, "weight_macs_per_token": f.weight_macs,
            "attention_macs_per_token": attention_macs, "flops_per_token": flops,
            "kv_bytes_per_token": kv_bytes, "bytes_per_token": bytes_per_token,
            "cores": tgt.cores, peak_key: figures[peak_key], "dram_gbps": figures["dram_gbps"],
            "pp_max_tokens_per_s": pp_bound, "tg_max_tokens_per_s": tg_bound,
            "sources": {k: tgt.sources.get(k) for k in (peak_key, "dram_gbps")}}


# ---- plot -------------------------------------------------------------------------------------------------------
def plot_path(path: Path | str, force: bool = False) -> Path:
    """Where --plot writes, checked before anything is measured: a .png file name (matplotlib would add the
    suffix to any other name and write elsewhere), not a directory, an existing plot only with --force."""
    if Path(path).suffix.lower() != ".png":
        raise RvdeployError(f"--plot {path}: give a file name ending in .png")
    return outputs.file(path, force, outputs.PLOT, flag="--plot")


def plot(report: BenchReport, path: Path, force: bool = False) -> Path:
    """A bar chart of tokens/s per test and pipeline, with stddev error bars (matplotlib: the `bench` extra),
    written beside PATH and renamed into place."""
    path = plot_path(path, force)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RvdeployError("--plot needs matplotlib", hint='pip install "rvdeploy[bench]"') from None
    if not report.results:
        raise RvdeployError("--plot needs measurements (not --estimate or --cost alone)")
    tests = list(dict.fromkeys(r.test for r in report.results))
    pipes = list(dict.fromkeys(r.pipeline for r in report.results))
    by = {(r.pipeline, r.test): r for r in report.results}
    fig, axes = plt.subplots(1, len(tests), figsize=(4.2 * len(tests), 3.8), squeeze=False)
    colors = ["#2a7ab9", "#b0b0b0", "#e08a2c", "#5aa85a", "#9467bd", "#c44e52"]
    for ax, test in zip(axes[0], tests):
        vals = [by[(p, test)].tokens_per_s if (p, test) in by else 0 for p in pipes]
        errs = [by[(p, test)].stddev if (p, test) in by else 0 for p in pipes]
        bars = ax.bar(pipes, vals, yerr=errs, capsize=6, color=[colors[i % len(colors)] for i in range(len(pipes))])
        ax.tick_params(axis="x", labelrotation=20 if len(pipes) > 2 else 0, labelsize=8)
        for bar, v, e in zip(bars, vals, errs):  # the value above its error bar
            ax.annotate(f"{v:,.0f}", (bar.get_x() + bar.get_width() / 2, bar.get_height() + e), ha="center",
                        va="bottom", fontsize=9, xytext=(0, 3), textcoords="offset points")
        vs = ", ".join(f"x{r:.2f} vs {other}" for other, r in report.ratios.get(test, {}).items())
        ax.set_title(test + (f"  ({vs})" if vs else ""), fontsize=10)
        ax.set_ylabel("tokens/s")
        ax.margins(y=0.15)
    label = report.bundles[0]
    fig.suptitle(f"{label['model']} on {report.board}, {report.threads} thread(s), {report.reps} reps")
    fig.tight_layout()
    try:
        with file_into_place(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
    return path


def human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.2f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


def human_count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(n)

