"""Test boards: real sshd on 127.0.0.1 (rvdeploy.sshd), real ssh.

`host_board` runs sessions on this machine with their own HOME (the board's cache lives there), so a host
bundle run over ssh exercises upload, cache, launcher and runtime exactly as on a board.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

from rvdeploy import sshd


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
