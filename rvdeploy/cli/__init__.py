"""rvdeploy's command line: one small module per command, all work done in rvdeploy.api."""

from __future__ import annotations

import os
import signal
import sys
import traceback

import typer

try:  # typer 0.2x carries its own copy of click; its exceptions are the ones raised
    from typer._click import exceptions as click
except ImportError:  # older typer uses click itself
    from click import exceptions as click

from .. import signals
from ..errors import RvdeployError
from . import bench, build, chat, inspect, pack, probe, run, runtime, sim, targets

_NO_ARGS = getattr(click, "NoArgsIsHelpError", ())  # click >= 8.2; before it, no-args help is no exception

app = typer.Typer(
    name="rvdeploy",
    help="Deploy ONNX LLMs (Llama first) to RISC-V 64 Linux boards with IREE: build a bundle, inspect it, run it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for module in (build, inspect, run, chat, bench, pack, probe, runtime, sim, targets):
    module.register(app)

INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
DEBUG_VAR = "RVDEPLOY_DEBUG"
_stopping = False


def _stop(signum, frame):
    """Every stop signal unwinds like Ctrl-C, so temporary files are removed and child process groups ended
    (rvdeploy.children). Once: a second signal during that clean-up must not cut it short."""
    global _stopping
    if _stopping:
        return
    _stopping = True
    raise KeyboardInterrupt


def _fail(message: str, code: int) -> None:
    print(f"rvdeploy: error: {' '.join(message.split())}", file=sys.stderr)  # one line, whatever the message
    sys.exit(code)


def _unexpected(exc: BaseException) -> None:
    """A failure rvdeploy did not foresee: still one line; the traceback only when asked for."""
    if os.environ.get(DEBUG_VAR) == "1":
        traceback.print_exc()
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename is not None else ""
        _fail(f"{where}{exc.strerror}", 1)
    _fail(
        f"unexpected {type(exc).__name__}: {exc} (a bug in rvdeploy: rerun with {DEBUG_VAR}=1 for the "
        "traceback and report it)",
        1,
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point. Exit 0 on success; any failure is one `rvdeploy: error:` line on stderr: an RvdeployError
    exit 1, a usage error exit 2, an interruption (SIGINT, SIGTERM, SIGHUP) exit 130."""
    global _stopping
    _stopping = False
    for sig in signals.STOP:
        signal.signal(sig, _stop)
    try:
        code = app(args=argv, prog_name="rvdeploy", standalone_mode=False)
    except RvdeployError as exc:
        _fail(str(exc), exc.exit_code)
    except _NO_ARGS as exc:  # `rvdeploy` alone, `rvdeploy runtime`: the help, as typer shows it
        exc.show()
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "rvdeploy"
        _fail(f"{exc.format_message()} (see `{command} --help`)", exc.exit_code)
    except click.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        code = INTERRUPTED
    except BrokenPipeError:  # stdout closed early (`| head`): nothing more to say, and nothing left to flush
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - the one place where any failure becomes one line
        _unexpected(exc)
    if code == INTERRUPTED:
        print("rvdeploy: interrupted", file=sys.stderr)
    sys.exit(code if isinstance(code, int) else 0)
