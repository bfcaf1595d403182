"""The emulated board: a Debian trixie riscv64 userland (debootstrap), run through binfmt_misc and qemu-user
with the chosen CPU (VLEN, extensions), behind an OpenSSH server on 127.0.0.1 whose sessions chroot into
it. To rvdeploy (and to a user with ssh) it is a riscv64 board: `uname -m` says riscv64, the probe reads
the emulated vlenb, the launcher runs there.

The userland is built once (about 1-2 minutes: debootstrap's first stage here, second stage under
emulation) and cached under the user cache directory; `up` then takes a second. Needs root (debootstrap,
chroot, binfmt_misc) and qemu-user >= 8.1.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import children, sshd
from .boards.qemu import MIN_VERSION, UPGRADE_HINT, checked_qemu, qemu_version
from .boards.ssh import COUNT_KIT
from .errors import RvdeployError
from .paths import cache_dir, state_dir
from .targets import get_target

SUITE = "trixie"  # bookworm has no riscv64 port; trixie is served by the same mirror
PACKAGES = ["openssh-sftp-server"]  # so scp/sftp work too (coreutils' sha256sum is in minbase)
READY = ".rvdeploy-userland"
BINFMT = Path("/proc/sys/fs/binfmt_misc")
BINFMT_CONF = ("/usr/share/qemu/binfmt.d/qemu-riscv64.conf", "/usr/lib/binfmt.d/qemu-riscv64.conf")
BOOTSTRAP_CPU = "rv64"  # the second stage needs no vector unit
Step = Callable[[str], None]


def _noop(_: str) -> None:
    pass


@dataclass(frozen=True)
class Sim:
    name: str
    board: str  # the --board value
    ssh_config: Path
    qemu_cpu: str
    vlen: int
    userland: Path
    pid: int
    port: int
    running: bool

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "board": self.board,
            "ssh_config": str(self.ssh_config),
            "qemu_cpu": self.qemu_cpu,
            "vlen": self.vlen,
            "userland": str(self.userland),
            "pid": self.pid,
            "port": self.port,
            "running": self.running,
            "env": f"RVDEPLOY_SSH_CONFIG={shlex.quote(str(self.ssh_config))}",
        }


def default_userland() -> Path:
    return cache_dir() / "sim" / f"{SUITE}-riscv64"


def debian_mirror() -> str:
    """The Debian mirror this machine's apt already uses (never a host written into rvdeploy)."""
    files = [
        "/etc/apt/sources.list",
        *sorted(glob.glob("/etc/apt/sources.list.d/*.list")),
        *sorted(glob.glob("/etc/apt/sources.list.d/*.sources")),
    ]
    for f in files:
        try:
            text = Path(f).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            line = line.strip()
            if not line.startswith(("deb ", "URIs:")):
                continue
            for url in re.findall(r"(?:https?)://\S+", line):
                if re.search(r"/debian/?$", url):
                    return url.rstrip("/")
    raise RvdeployError(
        "no Debian mirror found in /etc/apt/sources.list*",
        hint="the emulated board debootstraps from the mirror apt uses; configure apt first",
    )


def cpu_for(vlen: int, cpu: str | None) -> tuple[str, int]:
    """The qemu -cpu string and its VLEN: --cpu as given, else the rv64gcv-vlenN target's."""
    if cpu:
        m = re.search(r"(?:^|,)vlen=(\d+)", cpu)
        has_v = "v=true" in cpu.split(",")
        return cpu, (int(m.group(1)) if m else 128) if has_v else 0
    try:
        return get_target(f"rv64gcv-vlen{vlen}").qemu_cpu, vlen
    except RvdeployError:
        if vlen not in (128, 256, 512, 1024):
            raise RvdeployError(f"--vlen {vlen}: qemu supports 128, 256, 512 and 1024") from None
        return f"rv64,v=true,vlen={vlen},elen=64,vext_spec=v1.0", vlen


def _require_root() -> None:
    if os.geteuid() != 0:
        raise RvdeployError(
            "the emulated board needs root (debootstrap, chroot, binfmt_misc)", hint="run `sudo rvdeploy sim up`"
        )


def binfmt_entry(text: str) -> dict:
    """/proc/sys/fs/binfmt_misc/NAME's text -> {"enabled": bool, "interpreter": str | None, "flags": str}."""
    lines = text.splitlines()
    fields = dict(ln.split(None, 1) for ln in lines[1:] if len(ln.split(None, 1)) == 2)
    return {
        "enabled": bool(lines) and lines[0] == "enabled",
        "interpreter": fields.get("interpreter"),
        "flags": fields.get("flags:", ""),
    }


def with_fix_binary(rule: str) -> str:
    """A binfmt_misc registration line (':name:type:offset:magic:mask:interpreter:flags') with the F flag."""
    rule = rule.strip()
    head, sep, flags = rule.rpartition(rule[0])
    return rule if "F" in flags else f"{head}{sep}{flags}F"


def ensure_binfmt(root: Path = BINFMT) -> bool:
    """riscv64 ELF files run through qemu-user (>= 8.1) via binfmt_misc, with the F (fix binary) flag: the
    kernel opens the interpreter when the entry is registered, so it is found from inside the board's chroot,
    where /usr/libexec/qemu-binfmt does not exist. True when this call registered the entry."""
    if not (root / "register").exists():
        r = children.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(root)], capture_output=True, text=True)
        if r.returncode != 0:
            raise RvdeployError(
                f"cannot mount binfmt_misc: {r.stderr.strip()[:200]}",
                hint="run as root on a host (or a privileged container)",
            )
    entry = root / "qemu-riscv64"
    registered_now = False
    if not entry.exists():
        conf = next((c for c in BINFMT_CONF if Path(c).is_file()), None)
        if conf is None:
            raise RvdeployError("qemu-user's binfmt definition for riscv64 is missing", hint=UPGRADE_HINT)
        (root / "register").write_text(with_fix_binary(Path(conf).read_text()) + "\n")
        registered_now = True
    info = binfmt_entry(entry.read_text())
    interp = info["interpreter"]
    if "F" not in info["flags"]:
        raise RvdeployError(
            f"binfmt_misc's riscv64 entry {entry} has flags {info['flags'] or '(none)'!r}, without "
            f"F (fix binary): inside the board's chroot the kernel would look for {interp} there "
            "and debootstrap fails with 'No such file or directory'",
            hint=f"remove the entry (echo -1 > {entry}) and run `rvdeploy sim up` again: it "
            "registers qemu-user's definition with F",
        )
    if not info["enabled"]:
        entry.write_text("1\n")
    if interp and Path(interp).exists():
        # Debian's interpreter is a symlink named *-binfmt-P (argv0 mode): ask the qemu it points to
        try:
            v = qemu_version(str(Path(interp).resolve()))
        except RvdeployError:
            return registered_now  # a wrapper we cannot ask; the runtime's hwprobe error still explains
        if v[:2] < MIN_VERSION:
            raise RvdeployError(
                f"binfmt_misc runs riscv64 programs with {interp}, qemu {'.'.join(map(str, v))}: "
                "IREE's riscv64 runtime needs 8.1 or newer",
                hint=UPGRADE_HINT,
            )
    return registered_now


def ensure_userland(directory: Path, on_step: Step = _noop) -> Path:
    """Debootstrap the riscv64 userland into `directory` unless a finished one is there (marker file)."""
    if (directory / READY).is_file():
        return directory
    if shutil.which("debootstrap") is None:
        raise RvdeployError("debootstrap not found", hint="apt-get install debootstrap")
    if directory.exists() and any(directory.iterdir()):
        raise RvdeployError(
            f"{directory} exists and is not a finished rvdeploy userland", hint="remove it or pass another --dir"
        )
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    log = directory.with_name(directory.name + ".log")
    mirror = debian_mirror()
    steps = [
        (
            "debootstrap (first stage)",
            [
                "debootstrap",
                "--foreign",
                "--variant=minbase",
                "--arch=riscv64",
                "--include=" + ",".join(PACKAGES),
                SUITE,
                str(partial),
                mirror,
            ],
            {},
        ),
        (
            "debootstrap (second stage, emulated)",
            ["chroot", str(partial), "/debootstrap/debootstrap", "--second-stage"],
            {"QEMU_CPU": BOOTSTRAP_CPU},
        ),
    ]
    with open(log, "wb") as out:
        for what, cmd, env in steps:
            on_step(what)
            r = children.run(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env})
            if r.returncode != 0:
                tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
                raise RvdeployError(f"{what} failed: {tail[0][:200]}", hint=f"full log: {log}")
    # package lists and downloaded .debs are not needed on the board
    for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for f in (partial / sub).glob("*"):
            if f.is_file():
                f.unlink()
    (partial / READY).write_text(json.dumps({"suite": SUITE, "packages": PACKAGES}) + "\n")
    os.rename(partial, directory)
    log.unlink(missing_ok=True)
    return directory


def _shared_libraries(exe: Path) -> tuple[list[Path], Path | None]:
    """(libraries, dynamic loader) that `ldd` resolves for an x86-64 executable or library here."""
    out = children.run(["ldd", str(exe)], capture_output=True, text=True).stdout
    libs, loader = [], None
    for line in out.splitlines():
        m = re.search(r"=>\s*(/\S+)", line)
        if m:
            libs.append(Path(m.group(1)))
        elif line.strip().startswith("/"):
            loader = Path(line.split()[0])
    return libs, loader


def install_count_kit(userland: Path) -> bool:
    """Put the plugin-capable qemu (this machine's executable with its shared libraries and loader) and the
    counting plugin into the userland at COUNT_KIT, so that `bench --cost` counts on this board over ssh:
    the board's shell starts them like any program (the kernel runs the x86-64 loader natively inside the
    chroot). False when no plugin qemu has been built (scripts/build_qemu_plugins.sh)."""
    from .qemu_cost import plugin_library, plugin_qemu

    try:
        qemu, plugin = plugin_qemu(), plugin_library()
    except RvdeployError:
        return False
    kit = userland / COUNT_KIT.lstrip("/")
    tmp = kit.with_name(kit.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "lib").mkdir(parents=True)
    libs, loader = _shared_libraries(qemu)
    libs += _shared_libraries(plugin)[0]
    if loader is None:
        raise RvdeployError(f"ldd found no dynamic loader for {qemu}")
    for lib in libs:
        shutil.copyfile(lib, tmp / "lib" / lib.name)
    shutil.copyfile(loader, tmp / "ld.so")
    shutil.copyfile(qemu, tmp / "qemu-riscv64.bin")
    shutil.copyfile(plugin, tmp / "libinsncount.so")
    (tmp / "qemu-riscv64").write_text(
        f"#!/bin/sh\n# rvdeploy sim: the counting qemu-riscv64 (x86-64, run by its own loader)\n"
        f'k={COUNT_KIT}\nexec "$k/ld.so" --library-path "$k/lib" "$k/qemu-riscv64.bin" "$@"\n'
    )
    for f in (tmp / "ld.so", tmp / "qemu-riscv64.bin", tmp / "qemu-riscv64"):
        f.chmod(0o755)
    shutil.rmtree(kit, ignore_errors=True)
    os.replace(tmp, kit)
    return True


def session_script(userland: Path, qemu_cpu: str) -> str:
    """sshd's ForceCommand: run the session's command (or a login shell) inside the riscv64 userland, with
    qemu's CPU set through the environment (binfmt_misc starts qemu-riscv64, which reads QEMU_CPU)."""
    root = shlex.quote(str(userland))
    return f"""#!/bin/sh
# rvdeploy emulated board: every session runs in the riscv64 userland {userland}
exec /usr/sbin/chroot {root} /usr/bin/env -i HOME=/root USER=root LOGNAME=root SHELL=/bin/sh \\
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin TERM="${{TERM:-dumb}}" \\
  QEMU_CPU={shlex.quote(qemu_cpu)} \\
  /bin/sh -c 'cd "$HOME" || exit 1; if [ -n "$1" ]; then exec /bin/sh -c "$1"; else exec /bin/bash -l; fi' \\
  sh "$SSH_ORIGINAL_COMMAND"
"""


def _state(name: str) -> Path:
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise RvdeployError(f"--name {name!r}: use letters, digits, '-' and '_'")
    return state_dir() / "sim" / name


def _sim(name: str, info: dict, server: sshd.Sshd | None) -> Sim:
    return Sim(
        name=name,
        board=info["alias"],
        ssh_config=Path(info["ssh_config"]),
        qemu_cpu=info["qemu_cpu"],
        vlen=info["vlen"],
        userland=Path(info["userland"]),
        pid=info["pid"],
        port=info["port"],
        running=server is not None and sshd.alive(server),
    )


def up(
    vlen: int = 256, cpu: str | None = None, directory: Path | None = None, name: str = "rvsim", on_step: Step = _noop
) -> Sim:
    _require_root()
    state = _state(name)
    current = sshd.load(state)
    if current is not None and sshd.alive(current):
        raise RvdeployError(
            f"emulated board {name!r} is already up (sshd pid {current.pid})",
            hint=f"`rvdeploy sim down --name {name}` first, or pick another --name",
        )
    qemu_cpu, vlen = cpu_for(vlen, cpu)
    checked_qemu()
    on_step("binfmt_misc")
    registered = ensure_binfmt()
    userland = ensure_userland(Path(directory) if directory else default_userland(), on_step)
    counting = install_count_kit(userland)
    on_step("sshd")
    server = sshd.start(state, session_script(userland, qemu_cpu), alias=name)
    info = {
        **server.to_dict(),
        "qemu_cpu": qemu_cpu,
        "vlen": vlen,
        "userland": str(userland),
        "binfmt_registered": registered,
        "counting": counting,
    }
    (state / "sim.json").write_text(json.dumps(info, indent=2) + "\n")
    return _sim(name, info, server)


def status(name: str = "rvsim") -> Sim | None:
    state = _state(name)
    f = state / "sim.json"
    if not f.is_file():
        return None
    return _sim(name, json.loads(f.read_text()), sshd.load(state))


def down(name: str = "rvsim") -> bool:
    """Stop the board's sshd (by pid), remove its keys and configs; keep the cached userland. binfmt_misc's
    riscv64 entry is removed only if `up` registered it and no other emulated board is running."""
    state = _state(name)
    f = state / "sim.json"
    if not f.is_file():
        return False
    info = json.loads(f.read_text())
    server = sshd.load(state)
    if server is not None:
        sshd.stop(server)
    shutil.rmtree(state, ignore_errors=True)
    others = [s for s in (state_dir() / "sim").glob("*/sim.json")]
    if info.get("binfmt_registered") and not others and (BINFMT / "qemu-riscv64").exists():
        try:
            (BINFMT / "qemu-riscv64").write_text("-1\n")
        except OSError:
            pass
    return True
