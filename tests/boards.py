"""Test boards: real sshd on 127.0.0.1 (rvdeploy.sshd), real ssh.

`host_board` runs sessions on this machine with their own HOME (the board's cache lives there), so a host
bundle run over ssh exercises upload, cache, launcher and runtime exactly as on a board. `fake_runtime`
cross-compiles a real static riscv64 ELF that stands in for IREE's tools (it prints a version and its
arguments; it runs no module).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from rvdeploy import sshd

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def host_session_script(home: Path) -> str:
    # the board has iree-base-runtime's tools on PATH, like a board with the pip package installed
    tool_dir = os.path.dirname(shutil.which("iree-run-module") or sys.executable)
    path = f"{tool_dir}:{os.path.dirname(sys.executable)}:/usr/local/bin:/usr/bin:/bin"
    return f"""#!/bin/sh
export HOME={shlex.quote(str(home))} PATH={shlex.quote(path)}
cd "$HOME" || exit 1
if [ -n "$SSH_ORIGINAL_COMMAND" ]; then exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"; fi
exec /bin/sh -i
"""


def start_host_board(state: Path, home: Path, alias: str) -> sshd.Sshd:
    home.mkdir(parents=True, exist_ok=True)
    return sshd.start(state, host_session_script(home), alias=alias)


def fake_runtime(directory: Path, version: str = "3.13.0") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for tool in ("iree-run-module", "iree-benchmark-module"):
        subprocess.run(["clang-19", "--target=riscv64-linux-gnu", "-march=rv64gc", "-mabi=lp64d", "-fuse-ld=lld",
                        "-static", "-O1", f'-DFAKE_VERSION="{version}"', "-o", str(directory / tool),
                        str(FIXTURES / "fake-runtime" / "fake_tool.c")], check=True)
    return directory
