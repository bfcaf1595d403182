"""--cost: executed guest instructions per prompt token and per generated token, counted under the plugin-capable
qemu (rvdeploy.qemu_cost) on an emulated board that can count (Board.can_count).

Method: wall time under qemu is no proxy for RVV code (vector instructions are emulated by slow helpers), but
a run's counts repeat exactly (runner.c keeps its printed timings and its threads' start-up from varying
them). Process start-up (module load, parameter reads) is large, so per-token figures are differences of whole
runs of the bundle's runner (what `run` executes; device local-sync, greedy, no EOS stop):
  per prompt token    = (count(P-token prompt, 1 new token) - count(1-token prompt, 1 new token)) / (P - 1)
  per generated token = (count(P-token prompt, N+1 new tokens) - count(P-token prompt, 1 new token)) / N
"""

from __future__ import annotations

from pathlib import Path

from ..boards.base import require_counting
from ..boards.qemu import QemuBoard
from ..bundle import Bundle
from ..errors import RvdeployError
from ..generation import RUNNER
from ..qemu_cost import KEYS
from ..runtimes import BUILD_HINT
from .measure import measuring_args


def count_program(argv: list[str], cpu: str) -> dict:
    """Counts for one riscv64 program run under the plugin qemu (no bundle: tests and calibration)."""
    return QemuBoard().count_program(Path(argv[0]), argv[1:], cpu=cpu)[0]


def per_unit(fewer: dict, more: dict, units: int) -> dict:
    """What each of `units` more tokens (or steps) adds, from the counts of two runs that differ by them."""
    return {k: (more[k] - fewer[k]) / units for k in KEYS}


def by_difference(c11: dict, cp1: dict, cpn: dict, prompt_tokens: int, gen_tokens: int) -> dict:
    """Per-token figures from counts of (1-token prompt, 1 new), (P, 1 new), (P, N+1 new)."""
    return {
        "per_prompt_token": per_unit(c11, cp1, prompt_tokens - 1),
        "per_generated_token": per_unit(cp1, cpn, gen_tokens),
        "runs": {
            "prompt1_new1": c11,
            f"prompt{prompt_tokens}_new1": cp1,
            f"prompt{prompt_tokens}_new{gen_tokens + 1}": cpn,
        },
    }


def measure_cost(bundle: Bundle, board, prompt_tokens: int, gen_tokens: int) -> dict:
    """Per-token instruction counts of a riscv64 bundle's runner (what `run` executes) on an open emulated
    board, one thread: (1-token prompt, 1 new), (P, 1 new) and (P, N+1 new) by difference."""
    m = bundle.manifest
    if m.target.arch != "riscv64":
        raise RvdeployError(
            f"{bundle.path} is a {m.target.name} bundle: --cost counts riscv64 instructions",
            hint="build for a riscv64 target, e.g. --target rv64gcv-vlen256",
        )
    if m.runtime.kind != "bundled":
        raise RvdeployError(
            f"{bundle.path} needs a riscv64 IREE runtime to be measured under qemu and has none", hint=BUILD_HINT
        )
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
