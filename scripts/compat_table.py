#!/usr/bin/env python3
"""Print the README's exporter x precision compatibility table, generated from the test fixtures and the
support tables (never written by hand; tests/test_genai.py checks that the README holds exactly this).

  python3 scripts/compat_table.py            # prints the table
  python3 scripts/compat_table.py --write    # replaces it in README.md (between the compat-table markers)

Rows: every fixture the tests build against onnxruntime (tests/fixtures/...: `check` run on it, and what the
rewrites do to it), then every setting `check` refuses (rvdeploy/fused_ops.toml, rvdeploy/unsupported_ops.toml).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rvdeploy.errors import RvdeployError  # noqa: E402
from rvdeploy.fused_ops import fused_ops  # noqa: E402
from rvdeploy.genai_interface import read_config  # noqa: E402
from rvdeploy.graphinfo import inspect_graph, unsupported_ops  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
# (fixture graph, the tests that build it and compare with onnxruntime)
ROWS = [
    ("tiny-hf/model.onnx", "tests/test_build_numerics.py"),
    ("genai/qwen2-hf/model.onnx", "tests/test_genai.py"),
    ("genai/llama-fp32/model.onnx", "tests/test_genai.py"),
    ("genai/llama-int4/model.onnx", "tests/test_genai.py"),
    ("genai/qwen2-fp32/model.onnx", "tests/test_genai.py"),
    ("genai/qwen2-int4/model.onnx", "tests/test_genai.py"),
]
BEGIN, END = "<!-- compat-table: begin (scripts/compat_table.py) -->", "<!-- compat-table: end -->"


def _family(path: Path) -> str:
    name = path.parent.name
    return "Llama" if name.startswith(("tiny", "llama")) else "Qwen2" if name.startswith("qwen2") else name


def _fixture_row(rel: str, tests: str) -> str:
    path = FIXTURES / rel
    exporter = "onnxruntime-genai builder" if read_config(path) else "optimum"
    try:
        g = inspect_graph(path)
    except RvdeployError as e:
        return f"| {exporter} | {_family(path)} | ? | refused: {e} | `{rel}` |"
    ops = g.op_counts
    precision = "int4 (MatMulNBits)" if "com.microsoft::MatMulNBits" in ops else g.dtype
    fused = sorted({k.split("::")[1] for k in ops if k.split("::")[0] == "com.microsoft" or k in fused_ops()})
    how = "supported" + (f" ({', '.join(fused)} rewritten to standard ONNX)" if fused else "")
    return f"| {exporter} | {_family(path)} | {precision} | {how}; tested by {tests} | `{rel}` |"


def _refusal_rows() -> list[str]:
    rows = []
    for key, op in fused_ops().items():
        domain, name = key.split("::")
        for attr, values in op.attributes.items():
            rows.append(
                f"| any | {domain or 'ai.onnx'} {name} | {attr} other than {', '.join(map(str, values))} "
                f"| refused by `check`: {op.hint} | |"
            )
        for i, inp in op.absent_inputs.items():
            rows.append(f"| any | {domain or 'ai.onnx'} {name} | input {inp} | refused by `check`: {op.hint} | |")
    for op in unsupported_ops().values():
        rows.append(f"| any | {op.display} | any | refused by `check`: {op.reason}; {op.hint} | |")
    return rows


def table() -> str:
    lines = ["| exporter | model / op | precision / setting | rvdeploy | fixture |", "|---|---|---|---|---|"]
    lines += [_fixture_row(rel, tests) for rel, tests in ROWS]
    lines += _refusal_rows()
    return "\n".join(lines)


def block() -> str:
    return f"{BEGIN}\n{table()}\n{END}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write", action="store_true", help="replace the table in README.md")
    args = ap.parse_args()
    if not args.write:
        print(table())
        return
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < 0:
        sys.exit(f"README.md has no {BEGIN} ... {END} block")
    readme.write_text(text[:start] + block() + text[end + len(END) :])


if __name__ == "__main__":
    main()
