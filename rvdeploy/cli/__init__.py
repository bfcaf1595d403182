"""rvdeploy's command line: one small module per command, all work done in rvdeploy.api."""

from __future__ import annotations

import signal
import sys

import typer

from ..errors import RvdeployError
from . import bench, build, inspect, pack, probe, run, runtime, sim, targets

app = typer.Typer(
    name="rvdeploy",
    help="Deploy ONNX LLMs (Llama first) to RISC-V 64 Linux boards with IREE: build a bundle, inspect it, run it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for module in (build, inspect, run, bench, pack, probe, runtime, sim, targets):
    module.register(app)


def _terminate(signum, frame):  # SIGTERM unwinds like Ctrl-C, so temporary files are removed
    print("rvdeploy: interrupted", file=sys.stderr)
    raise KeyboardInterrupt


def main() -> None:
    """Entry point. Typer handles usage errors (exit 2) and Ctrl-C (exit 130); an RvdeployError becomes
    one line on stderr and exit code 1."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        app()
    except RvdeployError as exc:
        print(f"rvdeploy: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
