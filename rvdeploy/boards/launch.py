"""What every board has in common: the bundle's launcher.sh runs the IREE tool after its checks, and its
failures (and the runtime's) become one-line errors that say what to do."""

from __future__ import annotations

from ..bundle import Bundle
from ..errors import RvdeployError
from ..launcher import EXIT_NO_RUNTIME, EXIT_REFUSED

HWPROBE_MISSING = "riscv_hwprobe syscall failed"
HWPROBE_HINT = (
    "the board's kernel or emulator lacks the riscv_hwprobe syscall that IREE's riscv64 runtime needs: "
    "qemu-user older than 8.1 (Debian 12: apt-get install -t bookworm-backports qemu-user) or Linux "
    "older than 6.4 on a real board (upgrade its kernel)"
)
NO_SPACE = "No space left on device"


def tool_command(tool: str, args: list[str]) -> list[str]:
    """The launcher invocation of any IREE tool (iree-run-module, iree-benchmark-module) with ARGS whose
    paths are relative to the bundle directory."""
    return ["sh", "launcher.sh", "run", tool, *args]


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no output"


def raise_for(
    where: str, returncode: int, stderr: str, bundle: Bundle | None = None, tool: str = "iree-run-module"
) -> None:
    """Turn a failed launcher/runtime run into one RvdeployError (nothing when it succeeded)."""
    if returncode == 0:
        return
    if HWPROBE_MISSING in stderr:
        raise RvdeployError(f"{where}: the runtime died with '{HWPROBE_MISSING}'", hint=HWPROBE_HINT)
    if NO_SPACE in stderr:
        raise RvdeployError(f"{where}: no space left on device", hint="free space on the board and run again")
    if returncode == EXIT_REFUSED:
        msg = last_line(stderr).removeprefix("rvdeploy-launcher: ")
        raise RvdeployError(f"{where} {msg}")
    if returncode == EXIT_NO_RUNTIME:
        name = bundle.path if bundle else "the bundle"
        arch = bundle.manifest.requirements.arch if bundle else ""
        raise RvdeployError(
            f"{name} has no {arch} IREE runtime to run on {where}",
            hint=last_line(stderr).split(": no runtime: ", 1)[-1],
        )
    raise RvdeployError(f"{tool} failed on {where}: {last_line(stderr)}")


def require_launcher(bundle: Bundle) -> None:
    if not bundle.manifest.launcher:
        raise RvdeployError(
            f"{bundle.path} has no board-side launcher (built by an older rvdeploy)", hint="rebuild the bundle"
        )
