"""--board [user@]host[:port] or an ssh-config alias: a board reached with the system's OpenSSH.

The user's ssh config, keys, agent, known_hosts and ProxyJump apply unchanged; rvdeploy adds only
BatchMode (never prompt), timeouts, and connection reuse (one ControlMaster per board session, its
socket in a private temporary directory that is removed afterwards). Host keys are checked exactly as the
user's ssh checks them. RVDEPLOY_SSH_CONFIG names an ssh config file to use instead of ~/.ssh/config (the
emulated board writes one with its host key pinned).

Files go to a content-addressed cache on the board, $HOME/.cache/rvdeploy/blobs/<sha256>, so an unchanged
file is never sent twice; a bundle is a directory of links to blobs, keyed by its manifest's sha256. Files
are streamed through `ssh ... cat` rather than scp: that needs nothing on the board but a POSIX shell
(no sftp-server, works behind a ForceCommand), and each blob's sha256 is checked on arrival before it is
renamed into place. Every value in a remote command is quoted with shlex.quote; the board sees token
ids, never the prompt text.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from .. import children
from ..bundle import MANIFEST, SUMS, Bundle, sha256_file
from ..errors import RvdeployError
from ..probe import describe_unix, probe_binary
from ..qemu_cost import parse_counts
from ..targets import Target, get_target
from .base import ProgramRun
from .launch import NO_SPACE, last_line, raise_for, require_launcher, tool_command
from .runner import RunnerProcess, launcher_command
from .spec import BoardSpec

CONNECT_TIMEOUT = 10  # seconds
COUNT_KIT = "/opt/rvdeploy-count"  # an emulated board's counting qemu (rvdeploy.sim.install_count_kit)
COUNTS_MARK = "--rvdeploy-counts--"
CACHE = '"$HOME"/.cache/rvdeploy'  # expanded by the board's shell
SSH_ERRORS = {  # ssh's stderr -> what to do
    "Host key verification failed": "the board's host key is unknown or changed: check it, then add it to "
    "known_hosts (ssh once by hand)",
    "Permission denied": "ssh could not log in without a prompt: load a key into ssh-agent or set IdentityFile",
    "Could not resolve hostname": "check the host name or add an ssh config alias",
    "Connection refused": "is sshd running on the board, on that port?",
    "timed out": "the board did not answer: check that it is on and reachable",
    "No route to host": "the board is not reachable from here",
}


class SshBoard:
    can_count = True  # when the board carries the counting qemu (`rvdeploy sim up`): checked on first use

    def __init__(self, spec: BoardSpec):
        self.user, self.host, self.port = spec.user, spec.host, spec.port
        self.name = spec.name
        self._control: Path | None = None
        self._count_kit_found = False  # the board has the counting qemu (checked on first use)

    # ---- connection ---------------------------------------------------------------------------------
    def __enter__(self):
        for tool in ("ssh",):
            if shutil.which(tool) is None:
                raise RvdeployError(f"{tool} not found", hint="apt-get install openssh-client")
        self._control = Path(tempfile.mkdtemp(prefix="rvdeploy-ssh-"))  # mode 0700: the socket is private
        return self

    def __exit__(self, *exc):
        if self._control is not None:
            try:  # ends the shared connection (its master process); a failure here must not hide another
                children.run([*self._ssh_base(), "-O", "exit", "--", self.host], capture_output=True, timeout=30)
            except (RvdeployError, OSError):
                pass
            shutil.rmtree(self._control, ignore_errors=True)
            self._control = None
        return False

    def _ssh_base(self) -> list[str]:
        if self._control is None:
            raise RuntimeError("SshBoard used outside `with`")
        args = ["ssh"]
        if os.environ.get("RVDEPLOY_SSH_CONFIG"):
            args += ["-F", os.environ["RVDEPLOY_SSH_CONFIG"]]
        args += [
            "-o",
            "BatchMode=yes",
            "-o",
            f"ConnectTimeout={CONNECT_TIMEOUT}",
            "-o",
            "ServerAliveInterval=15",
            "-o",
            "ServerAliveCountMax=4",
            "-o",
            "ControlMaster=auto",
            "-o",
            f"ControlPath={self._control}/cm",
            "-o",
            "ControlPersist=120",
        ]
        if self.port:
            args += ["-p", self.port]
        if self.user:
            args += ["-l", self.user]
        return args

    def sh(self, script: str, *, stdin=None, check_connect: bool = True) -> subprocess.CompletedProcess:
        """Run a POSIX sh script on the board (every value in it already quoted)."""
        proc = children.run(
            [*self._ssh_base(), "--", self.host, script], stdin=stdin or subprocess.DEVNULL, capture_output=True
        )
        proc.stdout = proc.stdout.decode(errors="replace")
        proc.stderr = proc.stderr.decode(errors="replace")
        if check_connect and proc.returncode == 255:
            line = last_line(proc.stderr)
            hint = next((h for k, h in SSH_ERRORS.items() if k in proc.stderr), None)
            raise RvdeployError(f"cannot reach board {self.name}: {line}", hint=hint)
        return proc

    # ---- content-addressed upload ---------------------------------------------------------------------
    def _missing(self, hashes: list[str]) -> set[str]:
        script = (
            f"mkdir -p {CACHE}/blobs && cd {CACHE}/blobs && "
            f"for h in {' '.join(shlex.quote(h) for h in sorted(set(hashes)))}; do "
            '[ -f "$h" ] || echo "$h"; done'
        )
        proc = self.sh(script)
        if proc.returncode != 0:
            self._fail("cannot prepare the board's cache", proc.stderr)
        return set(proc.stdout.split())

    def _fail(self, what: str, stderr: str) -> None:
        if NO_SPACE in stderr:
            raise RvdeployError(
                f"board {self.name}: no space left on device in ~/.cache/rvdeploy ({what})",
                hint="free space on the board (or remove ~/.cache/rvdeploy there) and run again",
            )
        raise RvdeployError(f"board {self.name}: {what}: {last_line(stderr)}")

    def upload(self, files: dict[str, Path]) -> dict[str, str]:
        """Send the files (name -> local path) the board does not have yet; returns name -> sha256."""
        hashes = {name: sha256_file(path) for name, path in files.items()}
        missing = self._missing(list(hashes.values()))
        sent = set()
        for name, h in sorted(hashes.items()):
            if h not in missing or h in sent:
                continue
            q = shlex.quote(h)
            script = (
                f'b={CACHE}/blobs; t="$b/.incoming-$$"; trap \'rm -f "$t"\' EXIT; set -e; cat > "$t"; '
                f'[ "$(sha256sum < "$t" | cut -d" " -f1)" = {q} ] || '
                f'{{ echo "arrived damaged" >&2; exit 1; }}; mv "$t" "$b"/{q}; trap - EXIT'
            )
            with open(files[name], "rb") as f:
                proc = self.sh(script, stdin=f)
            if proc.returncode != 0:
                size = files[name].stat().st_size
                self._fail(f"uploading {name} ({size / 1e6:.1f} MB)", proc.stderr)
            sent.add(h)
        return hashes

    def _bundle_files(self, bundle: Bundle) -> dict[str, Path]:
        names = [MANIFEST, SUMS] + [f.path for f in bundle.manifest.files]
        return {n: bundle.path / n for n in names}

    def _materialize(self, bundle: Bundle) -> str:
        """Upload what is missing and return a shell snippet that lays the bundle out (links to blobs) and
        cd's into it."""
        hashes = self.upload(self._bundle_files(bundle))
        bid = shlex.quote(hashes[MANIFEST])
        executables = {f.path for f in bundle.manifest.files if f.executable}
        lines = [
            f'c={CACHE}; d="$c/bundles"/{bid}',
            'if [ ! -f "$d/.complete" ]; then',
            'rm -rf "$d.tmp"; mkdir -p "$d.tmp"',
        ]
        for sub in sorted({str(Path(n).parent) for n in hashes if Path(n).parent != Path(".")}):
            lines.append(f'mkdir -p "$d.tmp"/{shlex.quote(sub)}')
        for name, h in sorted(hashes.items()):
            if name in executables:
                lines.append(f'chmod 755 "$c/blobs"/{shlex.quote(h)}')
            lines.append(f'ln -s "$c/blobs"/{shlex.quote(h)} "$d.tmp"/{shlex.quote(name)}')
        lines += ['touch "$d.tmp/.complete"; rm -rf "$d"; mv "$d.tmp" "$d"', "fi", 'cd "$d"']
        return "set -e\n" + "\n".join(lines) + "\nset +e\n"

    # ---- board API --------------------------------------------------------------------------------------
    def isa_target(self, bundle: Bundle) -> Target:
        """The bundle's target: the board's launcher refuses a bundle its ISA does not match."""
        return get_target(bundle.manifest.target.name)

    def start_runner(self, bundle: Bundle, args: list[str]) -> RunnerProcess:
        """The bundle's runner through its launcher on the board, live over the shared connection (tokens
        stream back as the runner prints them; stdin carries further turns)."""
        require_launcher(bundle)
        script = self._materialize(bundle) + shlex.join(launcher_command(args))
        return RunnerProcess([*self._ssh_base(), "--", self.host, script], f"board {self.name}", bundle)

    def run_tool(self, bundle: Bundle, tool: str, args: list[str]) -> ProgramRun:
        """Run an IREE tool through the bundle's launcher on the board (ARGS relative to the bundle)."""
        require_launcher(bundle)
        proc = self.sh(self._materialize(bundle) + shlex.join(tool_command(tool, args)))
        raise_for(f"board {self.name}", proc.returncode, proc.stderr, bundle, tool=tool)
        return ProgramRun(proc.stdout, proc.stderr, proc.returncode, None)

    def _program_command(self, exe: Path, args: list[str | Path], prefix: str = "") -> str:
        """Upload EXE and every Path argument to the blob cache; the shell command that runs EXE there
        (after PREFIX, a shell word or nothing)."""
        files = {"exe": exe, **{f"arg{i}": a for i, a in enumerate(args) if isinstance(a, Path)}}
        hashes = self.upload(files)
        words = [
            '"$b"/' + shlex.quote(hashes[f"arg{i}"]) if isinstance(a, Path) else shlex.quote(a)
            for i, a in enumerate(args)
        ]
        exe_blob = f'"$b"/{shlex.quote(hashes["exe"])}'
        return f"b={CACHE}/blobs; chmod 755 {exe_blob} || exit 1; {prefix}{exe_blob} {' '.join(words)}"

    def run_program(self, exe: Path, args: list[str | Path], *, cpu: str = "") -> ProgramRun:
        """Run a program that is not a bundle's (llama.cpp's tools) on the board: EXE and every Path argument
        go to the board's blob cache first and are named by their blob path. `cpu` (a qemu -cpu string) does
        not apply to a board."""
        proc = self.sh(self._program_command(exe, args))
        raise_for(f"board {self.name}", proc.returncode, proc.stderr, tool=exe.name)
        return ProgramRun(proc.stdout, proc.stderr, proc.returncode, None)

    # ---- executed-instruction counts (bench --cost), on an emulated board only -----------------------------
    def _require_counting_qemu(self) -> None:
        """Once per board session, before the counted command would upload anything (a GGUF can be GBs)."""
        if self._count_kit_found:
            return
        if self.sh(f"test -x {COUNT_KIT}/qemu-riscv64").returncode != 0:
            raise RvdeployError(
                f"board {self.name} cannot count instructions: only an emulated board from "
                "`rvdeploy sim up` carries the counting qemu",
                hint="use --board qemu[:TARGET]; `rvdeploy sim up` installs it when the plugin "
                "qemu is built (scripts/build_qemu_plugins.sh)",
            )
        self._count_kit_found = True

    def _counted(self, command: str, what: str) -> dict:
        """Run COMMAND on the board under its counting qemu (COUNT_KIT, installed by `rvdeploy sim up`) and
        return the counts of its last process. Callers check for the counting qemu first."""
        script = (
            f"t=$(mktemp) || exit 1; export RVDEPLOY_RUN_PREFIX={COUNT_KIT}/qemu-riscv64 "
            f'QEMU_PLUGIN="{COUNT_KIT}/libinsncount.so,outfile=$t"; ( {command} ) >/dev/null; rc=$?; '
            f'echo {COUNTS_MARK}; cat "$t"; rm -f "$t"; exit $rc'
        )
        proc = self.sh(script)
        raise_for(f"board {self.name}", proc.returncode, proc.stderr, tool=what)
        return parse_counts(proc.stdout.split(COUNTS_MARK, 1)[-1])

    def count_program(self, exe: Path, args: list[str | Path], *, cpu: str = "") -> tuple[dict, ProgramRun]:
        self._require_counting_qemu()
        # the program itself runs under the counting qemu, not the shell around it
        command = self._program_command(exe, args, prefix='"$RVDEPLOY_RUN_PREFIX" ')
        return self._counted(command, exe.name), ProgramRun("", "", 0, None)

    def count_tool(self, bundle: Bundle, tool: str, args: list[str]) -> tuple[dict, ProgramRun]:
        require_launcher(bundle)
        self._require_counting_qemu()
        counts = self._counted(self._materialize(bundle) + shlex.join(tool_command(tool, args)), tool)
        return counts, ProgramRun("", "", 0, None)

    def check(self, bundle: Bundle) -> None:
        """Upload and run only the launcher's checks (hashes, ISA, VLEN)."""
        require_launcher(bundle)
        proc = self.sh(self._materialize(bundle) + "sh launcher.sh check")
        raise_for(f"board {self.name}", proc.returncode, proc.stderr, bundle)

    def probe(self) -> dict:
        proc = self.sh("uname -m")
        arch = proc.stdout.strip()
        if proc.returncode != 0 or not arch:
            raise RvdeployError(f"board {self.name}: `uname -m` failed: {last_line(proc.stderr)}")
        if arch != "riscv64":
            proc = self.sh("nproc 2>/dev/null || getconf _NPROCESSORS_ONLN; echo ---; cat /proc/meminfo")
            nproc, _, meminfo = proc.stdout.partition("---")
            return describe_unix(arch, nproc, meminfo)
        exe = probe_binary()
        h = shlex.quote(self.upload({"probe": exe})["probe"])
        proc = self.sh(f'p={CACHE}/blobs/{h}; chmod 755 "$p" && "$p"')
        raise_for(f"board {self.name}", proc.returncode, proc.stderr)
        try:
            return json.loads(proc.stdout)
        except json.JSONDecodeError:
            raise RvdeployError(f"board {self.name}: the probe printed no JSON: {last_line(proc.stdout)}") from None
