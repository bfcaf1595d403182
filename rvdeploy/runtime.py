"""How a bundle's `generate` entry point is invoked with stock `iree-run-module`, on any board.

The command line is the same on the host (iree-base-runtime's tools) and on a board (a riscv64 build of
the same tools): only the tool path and the file paths differ.
"""

from __future__ import annotations

import re

from .bundle.names import PARAMETER_SCOPE as PARAM_SCOPE
from .errors import RvdeployError

_RESULT = re.compile(r"^\s*(\d+)xi64=(.*)$", re.MULTILINE)


def generate_args(
    vmfb: str, params: str, prompt_ids: list[int], max_new_tokens: int, device: str = "local-sync"
) -> list[str]:
    """Arguments after the tool name. local-sync: one thread, deterministic, no worker pool to start."""
    if not prompt_ids:
        raise RvdeployError("empty prompt: nothing to generate from")
    if max_new_tokens < 1:
        raise RvdeployError(f"--max-new-tokens must be at least 1 (got {max_new_tokens})")
    ids = ",".join(str(int(i)) for i in prompt_ids)
    return [
        f"--module={vmfb}",
        f"--parameters={PARAM_SCOPE}={params}",
        f"--device={device}",
        "--function=generate",
        f"--input=1x{len(prompt_ids)}xi64={ids}",
        f"--input=i64={int(max_new_tokens)}",
    ]


def parse_generate_output(stdout: str) -> list[int]:
    m = _RESULT.search(stdout)
    if not m:
        raise RvdeployError(
            "iree-run-module printed no token ids: " + (stdout.strip().splitlines() or ["(nothing)"])[-1][:200]
        )
    values = m.group(2).split()
    if len(values) != int(m.group(1)):
        raise RvdeployError(f"iree-run-module printed {len(values)} of {m.group(1)} token ids (truncated output?)")
    return [int(v) for v in values]
