"""A private OpenSSH server on 127.0.0.1: its own config, host key and client key, key-only login, and a
ForceCommand that decides where sessions run (the emulated board's chroot, or a directory on this machine
for tests). The client side gets an ssh config file with the host key pinned in its own known_hosts, so
host-key checking stays on.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import RvdeployError

SSHD = "/usr/sbin/sshd"  # sshd refuses to re-exec itself unless started by absolute path
STATE = "sshd.json"


@dataclass(frozen=True)
class Sshd:
    state: Path  # private directory: keys, configs, log
    alias: str  # the Host name in ssh_config
    port: int
    pid: int

    @property
    def ssh_config(self) -> Path:
        return self.state / "ssh_config"

    def to_dict(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()} | {
            "ssh_config": str(self.ssh_config)
        }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True, capture_output=True
    )


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def start(state: Path, session_script: str, alias: str, user: str = "root") -> Sshd:
    """Start sshd -D in its own session (it outlives this process; stop() ends it by pid)."""
    if not Path(SSHD).is_file() or shutil.which("ssh-keygen") is None:
        raise RvdeployError(f"{SSHD} not found", hint="apt-get install openssh-server openssh-client")
    state.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o700)
    for name in ("host_ed25519", "client_ed25519"):
        for f in (state / name, state / f"{name}.pub"):
            f.unlink(missing_ok=True)
    _keygen(state / "host_ed25519", f"rvdeploy-{alias}-host")
    _keygen(state / "client_ed25519", f"rvdeploy-{alias}-client")
    shutil.copyfile(state / "client_ed25519.pub", state / "authorized_keys")
    session = state / "session.sh"
    session.write_text(session_script)
    os.chmod(session, 0o755)
    port = free_port()
    (state / "sshd_config").write_text(
        "\n".join(
            [
                f"ListenAddress 127.0.0.1:{port}",
                f"HostKey {state / 'host_ed25519'}",
                f"AuthorizedKeysFile {state / 'authorized_keys'}",
                f"PidFile {state / 'sshd.pid'}",
                f"AllowUsers {user}",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                # the key files live in a private 0700 directory that may sit under /tmp (mode 1777), which
                # StrictModes would reject
                "StrictModes no",
                "X11Forwarding no",
                "AllowTcpForwarding no",
                "PermitTunnel no",
                "Subsystem sftp /usr/lib/openssh/sftp-server",  # run through ForceCommand, inside the session's root
                f"ForceCommand {session}",
                "LogLevel ERROR",
            ]
        )
        + "\n"
    )
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation directory
    log = open(state / "sshd.log", "ab")
    proc = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(state / "sshd_config")],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    log.close()
    deadline = time.time() + 15
    while not _listening(port):
        if proc.poll() is not None or time.time() > deadline:
            tail = (state / "sshd.log").read_text(errors="replace").strip().splitlines()[-1:] or ["no log"]
            _kill(proc.pid)
            raise RvdeployError(f"sshd did not start on 127.0.0.1:{port}: {tail[0][:200]}")
        time.sleep(0.1)
    host_pub = (state / "host_ed25519.pub").read_text().split()
    (state / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    (state / "ssh_config").write_text(
        "\n".join(
            [
                f"Host {alias}",
                "  HostName 127.0.0.1",
                f"  Port {port}",
                f"  User {user}",
                f"  IdentityFile {state / 'client_ed25519'}",
                "  IdentitiesOnly yes",
                f"  UserKnownHostsFile {state / 'known_hosts'}",
                "  StrictHostKeyChecking yes",  # the key is pinned above: a different one is an error
            ]
        )
        + "\n"
    )
    sshd = Sshd(state, alias, port, proc.pid)
    (state / STATE).write_text(json.dumps(sshd.to_dict(), indent=2) + "\n")
    return sshd


def load(state: Path) -> Sshd | None:
    f = state / STATE
    if not f.is_file():
        return None
    d = json.loads(f.read_text())
    return Sshd(Path(d["state"]), d["alias"], int(d["port"]), int(d["pid"]))


def alive(sshd: Sshd) -> bool:
    """The pid is still our sshd (its command line names our config), not a reused pid."""
    try:
        cmdline = Path(f"/proc/{sshd.pid}/cmdline").read_bytes()  # sshd rewrites it (setproctitle)
    except OSError:
        return False
    return str(sshd.state / "sshd_config").encode() in cmdline


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"  # a zombie has exited


def _kill(pid: int) -> None:
    """SIGTERM the process group we started (sshd -D leads it), SIGKILL after 5 s, reap if it is our child."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.time() + wait
        while not _gone(pid) and time.time() < deadline:
            time.sleep(0.05)
        if _gone(pid):
            break
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop(sshd: Sshd) -> None:
    if alive(sshd):
        _kill(sshd.pid)
    (sshd.state / STATE).unlink(missing_ok=True)
