"""The code stays as ruff lints and formats it (pyproject.toml's [tool.ruff]); fix with `ruff check --fix .`
and `ruff format .`."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

from conftest import ROOT, system_part_missing


def _ruff(*args: str) -> subprocess.CompletedProcess:
    if importlib.util.find_spec("ruff") is None:
        system_part_missing("ruff is not installed (pip install -e '.[test]')")
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True)


def test_ruff_lint():
    proc = _ruff("check", "--no-cache", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_format():
    proc = _ruff("format", "--check", "--no-cache", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr
