"""Measuring one bundle on an open board: the runner's arguments for a measurement (synthetic prompt, greedy, no
EOS stop, THREADS workers) and ppP/tgN over REPS runner processes."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from ..bundle import Bundle, Manifest
from ..errors import RvdeployError
from ..generation import Sampling, runner_args

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
    args = runner_args(manifest, synthetic_prompt(manifest, prompt_tokens), new_tokens, Sampling(), stop_at_eos=False)
    return [a for a in args if not a.startswith("--device=")] + device_flags(threads)


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
        return {
            "pipeline": self.pipeline,
            "test": self.test,
            "t/s": round(self.tokens_per_s, 3),
            "stddev": round(self.stddev, 3),
            "samples": [round(s, 3) for s in self.samples],
            "seconds_per_call": self.seconds_per_call,
            "peak_rss_bytes": self.peak_rss_bytes,
        }


def _stats(samples: list[float]) -> tuple[float, float]:
    return statistics.fmean(samples), statistics.stdev(samples) if len(samples) > 1 else 0.0


def check_lengths(bundle: Bundle, prompt_tokens: int, gen_tokens: int) -> None:
    if prompt_tokens < 1 or gen_tokens < 1:
        raise RvdeployError("-p and -n must be at least 1")
    limit = bundle.manifest.max_context
    if prompt_tokens + gen_tokens > limit:
        raise RvdeployError(f"-p {prompt_tokens} + -n {gen_tokens} exceeds the model's context of {limit} tokens")


def measure(
    bundle: Bundle, board, prompt_tokens: int = 64, gen_tokens: int = 32, reps: int = 5, threads: int = 1
) -> list[Measurement]:
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
            raise RvdeployError(
                f"the runner stopped after {len(turn.ids)} of {gen_tokens + 1} tokens "
                f"({turn.reason or 'no reason given'})"
            )
        stats.append(turn.stats)
    peaks = [s.get("peak_rss_kb", -1) for s in stats]
    peak = max(peaks) * 1024 if min(peaks) > 0 else None
    rows = []
    for test, tokens, key in (
        (f"pp{prompt_tokens}", prompt_tokens, "prefill_s"),
        (f"tg{gen_tokens}", gen_tokens, "decode_s"),
    ):
        seconds = [s[key] for s in stats]
        samples = [tokens / t for t in seconds]
        mean, sd = _stats(samples)
        rows.append(
            Measurement(
                bundle.manifest.pipeline.name,
                test,
                mean,
                sd,
                samples,
                [t / tokens for t in seconds],
                peak_rss_bytes=peak,
            )
        )
    return rows


def iree_runnable(bundle: Bundle) -> str | None:
    """None when the bundle can run on a board of its architecture; else why not (a riscv64 bundle without
    an IREE runtime: none exists on any package registry, the user supplies one)."""
    rt = bundle.manifest.runtime
    if rt.kind == "none":
        return (
            f"IREE rows skipped: {bundle.path} has no {rt.arch or ''} IREE runtime "
            f"({rt.hint or 'register one with `rvdeploy runtime add DIR` and rebuild'})"
        )
    return None
