"""The --board value, parsed once into a BoardSpec: `local` (this machine), `qemu[:TARGET]` (qemu-user here) or
`[user@]host[:port]` / an ssh config alias (a board over ssh). boards.get_board makes the board it names."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from ..errors import RvdeployError

BOARD_HELP = (
    "local (this machine, host bundles), qemu[:TARGET] (riscv64 bundles under qemu-user), or "
    "[user@]host[:port] / an ssh config alias (a board over ssh)"
)
_HOST_RE = re.compile(r"^[A-Za-z0-9_.\-\[\]:%]+$")
_USER_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


@dataclass(frozen=True)
class BoardSpec:
    kind: Literal["local", "qemu", "ssh"]
    name: str  # the board's name in messages and reports
    target: str | None = None  # qemu:TARGET: the target profile to emulate (None: each bundle's own)
    user: str | None = None  # ssh: [user@]host[:port]
    host: str = ""
    port: str | None = None

    @classmethod
    def parse(cls, text: str) -> BoardSpec:
        if not text:
            raise RvdeployError("empty --board", hint=BOARD_HELP)
        if text == "local":
            return cls("local", text)
        if text == "qemu" or text.startswith("qemu:"):
            target = text.partition(":")[2] or None
            return cls("qemu", f"qemu:{target}" if target else "qemu", target=target)
        user, host, port = parse_ssh(text)
        return cls("ssh", text, user=user, host=host, port=port)


def board_spec(value: str | BoardSpec) -> BoardSpec:
    """VALUE as a BoardSpec: parsed when it is the --board text, as it is when it already is one."""
    return value if isinstance(value, BoardSpec) else BoardSpec.parse(value)


def parse_ssh(spec: str) -> tuple[str | None, str, str | None]:
    """'[user@]host[:port]' -> (user, host, port). A bare name may be an ssh-config alias. Checked before
    anything is sent: no name lookup for a spec that is not one."""
    at, sep, rest = spec.rpartition("@")
    host, port = rest, None
    if rest.count(":") == 1:
        host, port = rest.split(":")
        # ASCII digits only: str.isdigit() accepts '²', which int() then refuses
        if not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) < 65536:
            raise RvdeployError(f"--board {spec!r}: port {port!r} is not a number from 1 to 65535")
    user = at if sep else None
    # a leading '-' would be read by ssh as an option (e.g. -oProxyCommand=...); 'user@' needs a user
    if (
        not host
        or host.startswith("-")
        or not _HOST_RE.fullmatch(host)
        or (user is not None and not _USER_RE.fullmatch(user))
    ):
        raise RvdeployError(f"--board {spec!r}: not [user@]host[:port] or an ssh config alias")
    return user, host, port
