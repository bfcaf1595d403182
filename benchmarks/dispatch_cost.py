#!/usr/bin/env python3
"""Where a riscv64 bundle's executed instructions go, per dispatch: prefill per prompt token and decode per
generated token at each depth, split into the module's dispatches (executable exports) and "runtime" (the
runner, IREE's VM and HAL, libc), with vector and vector x LMUL counts, sorted by cost.

  python benchmarks/dispatch_cost.py BUNDLE [-p 64] [-n 32] [--depth D ...] [--top K] [--json]

Method (rvdeploy.dispatch_cost): the bundle's runner under the plugin-capable qemu (scripts/build_qemu_plugins.sh)
with rvdeploy's counting plugin in its per-block mode; each block's code is located in the riscv64 executable
embedded in model.vmfb (its DWARF names each dispatch's address range) and the counts are taken by difference
as `rvdeploy bench --cost` takes them (prefill: P and 1-token prompts; decode at depth D: N+1 and 1 new
tokens after a D-token prompt), so the totals are bench --cost's figures for the same runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rvdeploy.boards.qemu import QemuBoard  # noqa: E402
from rvdeploy.bundle import Bundle  # noqa: E402
from rvdeploy.dispatch_cost import measure  # noqa: E402
from rvdeploy.errors import RvdeployError  # noqa: E402


def _m(x: float) -> str:
    return f"{x / 1e6:.3f}M" if abs(x) >= 1e5 else f"{x / 1e3:.1f}K"


def table(name: str, phase: dict, top: int) -> str:
    t = phase["total"]
    head = (
        f"### {name}: {_m(t['instructions'])} instructions per token, {_m(t['vector_instructions'])} vector "
        f"({_m(t['vector_lmul_weighted'])} x LMUL)"
    )
    lines = [
        head,
        "",
        "| dispatch | kind | instr/token | share | vector | vector x LMUL |",
        "|---|---|---|---|---|---|",
    ]
    rows = phase["rows"]
    shown, rest = rows[:top], rows[top:]
    for r in shown:
        lines.append(
            f"| {r['dispatch']} | {r['kind']} | {_m(r['instructions'])} | {100 * r['share']:.1f} % | "
            f"{_m(r['vector_instructions'])} | {_m(r['vector_lmul_weighted'])} |"
        )
    if rest:
        s = {
            k: sum(r[k] for r in rest) for k in ("instructions", "vector_instructions", "vector_lmul_weighted", "share")
        }
        lines.append(
            f"| ({len(rest)} more) | | {_m(s['instructions'])} | {100 * s['share']:.1f} % | "
            f"{_m(s['vector_instructions'])} | {_m(s['vector_lmul_weighted'])} |"
        )
    lines += ["", "| kind | instr/token | share | vector | vector x LMUL |", "|---|---|---|---|---|"]
    for r in phase["by_kind"]:
        lines.append(
            f"| {r['kind']} | {_m(r['instructions'])} | {100 * r['share']:.1f} % | "
            f"{_m(r['vector_instructions'])} | {_m(r['vector_lmul_weighted'])} |"
        )
    lines += ["", "| runtime function | instr/token | share |", "|---|---|---|"]
    for r in phase["runtime_functions"][:top]:
        lines.append(f"| {r['function']} | {_m(r['instructions'])} | {100 * r['share']:.1f} % |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("-p", "--prompt-tokens", type=int, default=64)
    ap.add_argument("-n", "--gen-tokens", type=int, default=32)
    ap.add_argument("--depth", type=int, nargs="+", help="decode depths (default: P)")
    ap.add_argument("--top", type=int, default=20, help="dispatch rows shown per phase (the rest summed)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    try:
        result = measure(
            Bundle.open(a.bundle),
            QemuBoard(),
            a.prompt_tokens,
            a.gen_tokens,
            a.depth,
            progress=lambda msg: print(msg, file=sys.stderr, flush=True),
        )
    except RvdeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if a.json:
        print(json.dumps(result, indent=1))
        return 0
    for name, phase in result["phases"].items():
        print(table(name, phase, a.top), end="\n\n")
    if result["folded"]:
        print("folded into an identical dispatch (counted under it): " + ", ".join(result["folded"]))
    for key, run in result["runs"].items():
        print(f"run {key}: {run['instructions']} instructions, {run['vector_instructions']} vector")
    return 0


if __name__ == "__main__":
    sys.exit(main())
