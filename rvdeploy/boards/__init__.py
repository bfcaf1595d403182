"""Where a bundle runs. Each board starts the bundle's runner live (start_runner: token ids stream back),
runs IREE tools and other programs, and can say what it has (probe). Boards are context managers: an ssh
board holds one shared connection while in use."""

from __future__ import annotations

from .local import LocalBoard
from ..errors import RvdeployError

BOARD_HELP = ("local (this machine, host bundles), qemu[:TARGET] (riscv64 bundles under qemu-user), or "
              "[user@]host[:port] / an ssh config alias (a board over ssh)")


def get_board(spec: str):
    if not spec:
        raise RvdeployError("empty --board", hint=BOARD_HELP)
    if spec == "local":
        return LocalBoard()
    if spec == "qemu" or spec.startswith("qemu:"):
        from .qemu import QemuBoard

        return QemuBoard(spec.partition(":")[2] or None)
    from .ssh import SshBoard

    return SshBoard(spec)
