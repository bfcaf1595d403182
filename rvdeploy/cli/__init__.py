"""rvdeploy's command line: one small module per command, all work done in rvdeploy.api."""

from __future__ import annotations

import signal
import sys

import typer

from ..errors import RvdeployError
from . import build, inspect, run, targets

app = typer.Typer(
    name="rvdeploy",
    help="Deploy ONNX LLMs (Llama first) to RISC-V 64 Linux boards with IREE: build a bundle, inspect it, run it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for module in (build, inspect, run, targets):
    module.register(app)


def _terminate(signum, frame):  # SIGTERM unwinds like Ctrl-C, so temporary files are removed
    raise KeyboardInterrupt


def main() -> None:
    """Entry point: turns RvdeployError into one line on stderr and exit code 1 (2 for usage errors)."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        app(standalone_mode=False)
    except RvdeployError as exc:
        print(f"rvdeploy: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("rvdeploy: interrupted", file=sys.stderr)
        sys.exit(130)
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", None)
        sys.exit(code if code is not None else getattr(exc, "code", 0))
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(130)
        raise
