"""Run the real CLI in a subprocess, and check the one-line error contract."""

from __future__ import annotations

import os
import subprocess
import sys


def rvdeploy(*args, env=None, input=None):
    return subprocess.run(
        [sys.executable, "-m", "rvdeploy", *args],
        capture_output=True,
        text=True,
        input=input,
        env={**os.environ, **(env or {})},
    )


def one_line_error(proc, *needles):
    """stderr is exactly one `rvdeploy: error:` line naming every needle (after any progress lines, "fetch..."),
    and no traceback; returns that line."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.endswith("...")]
    assert len(lines) == 1 and lines[0].startswith("rvdeploy: error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]
