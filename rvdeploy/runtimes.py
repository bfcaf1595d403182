"""Registered IREE runtime builds: riscv64 (IREE's tools and rvdeploy's runner) and this machine's (the
runner; IREE's own host tools come from iree-base-runtime).

No package registry has a riscv64 IREE runtime: `rvdeploy runtime build` cross-compiles one from IREE's
sources (rvdeploy.runtime_build) and registers it; `rvdeploy runtime add DIR` registers one built elsewhere
(the directory is recorded with the sha256 of each tool, not copied: a changed or moved build is noticed at
`build` time). `build` copies the registered runtime that matches the target's architecture into the
bundle's runtime/.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .bundle import sha256_file
from .errors import RvdeployError
from .paths import config_dir
from .runtime_build import tools as arch_tools

RUNNER = "rvdeploy-runner"
TOOLS = arch_tools("riscv64")  # a riscv64 runtime: iree-run-module, iree-benchmark-module, rvdeploy-runner
HOST_TOOLS = arch_tools("host")  # this machine's: the runner (IREE's tools are iree-base-runtime's)
REGISTRY = "runtimes.json"
EM_RISCV = 243
_ELF_MACHINES = {EM_RISCV: "riscv64", 62: "x86_64", 183: "aarch64"}
_VERSION_RE = re.compile(r"\d+\.\d+(?:\.\d+)?(?:[.\-+]?(?:rc|dev)?\d*)*")
BUILD_HINT = (
    "run `rvdeploy runtime build` (IREE's sources: --source DIR|FILE.tar.gz or $RVDEPLOY_IREE_SOURCE "
    "offline) and rebuild the bundle, or register a build of your own with `rvdeploy runtime add DIR`"
)
# Bytes every IREE runtime tool contains (its VM's symbol prefix in messages); any other riscv64 ELF (the
# probe, a shell) lacks them.
_IREE_MARKER = b"iree_vm_"


@dataclass(frozen=True)
class Runtime:
    path: Path
    arch: str
    version: str
    tools: dict  # tool name -> sha256
    source: dict | None = None  # where the tools came from (rvdeploy runtime build's BUILD.json), if known

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "arch": self.arch,
            "version": self.version,
            "tools": dict(self.tools),
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, d, where: Path) -> "Runtime":
        try:
            return cls(Path(d["path"]), str(d["arch"]), str(d["version"]), dict(d["tools"]), d.get("source"))
        except (KeyError, TypeError, ValueError) as exc:
            raise RvdeployError(
                f"{where}: a runtime entry is malformed ({exc.__class__.__name__}: {exc})",
                hint="remove the file and register the runtimes again",
            )


def elf_arch(path: Path) -> str | None:
    """The ELF header's machine for a 64-bit little-endian ELF, or None if `path` is not one."""
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError:
        return None
    if len(head) < 20 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:  # ELFCLASS64, little endian
        return None
    machine = int.from_bytes(head[18:20], "little")
    return _ELF_MACHINES.get(machine, f"machine-{machine}")


def _tool_version(exe: Path, arch: str) -> str:
    """`TOOL --version` (run under qemu-user when the tool is not for this machine). IREE's runtime tools of
    3.13 have no --version flag: then a VERSION file next to the tools, else 'unknown'."""
    cmd = [str(exe), "--version"]
    if arch == "riscv64" and os.uname().machine != "riscv64":
        qemu = shutil.which("qemu-riscv64")
        cmd = [qemu, *cmd] if qemu else []
    if cmd:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            text = proc.stdout + proc.stderr
            if proc.returncode == 0:
                for line in text.splitlines():
                    m = _VERSION_RE.search(line) if "version" in line.lower() else None
                    if m:
                        return m.group(0)
        except (OSError, subprocess.TimeoutExpired):
            pass
    vfile = exe.parent / "VERSION"
    if vfile.is_file():
        return vfile.read_text().strip().splitlines()[0] if vfile.read_text().strip() else "unknown"
    return "unknown"


def _build_info(d: Path) -> dict | None:
    """rvdeploy runtime build's record beside the tools (BUILD.json), when there is a valid one."""
    try:
        info = json.loads((d / "BUILD.json").read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _is_iree_tool(exe: Path) -> bool:
    with open(exe, "rb") as f:
        tail = b""
        while chunk := f.read(1 << 20):
            if _IREE_MARKER in tail + chunk:
                return True
            tail = chunk[-len(_IREE_MARKER) :]
    return False


def required_tools(arch: str) -> tuple[str, ...]:
    return TOOLS if arch == "riscv64" else HOST_TOOLS


def inspect_runtime(directory: Path | str) -> Runtime:
    """Validate a runtime build directory: its tools present, executables, 64-bit ELF for one architecture
    (riscv64, or this machine's), and IREE's programs at that (not any ELF)."""
    d = Path(directory).expanduser().resolve()
    if not d.is_dir():
        raise RvdeployError(f"runtime directory not found: {d}")
    runner_arch = elf_arch(d / RUNNER) if (d / RUNNER).is_file() else None
    wanted = required_tools(runner_arch or "riscv64")
    arches = set()
    tools = {}
    for name in wanted:
        exe = d / name
        if not exe.is_file():
            # a CMake build tree keeps them under tools/
            if (d / "tools" / name).is_file():
                raise RvdeployError(f"{d} has no {name}, but {d / 'tools'} has: pass that directory")
            raise RvdeployError(
                f"{d} is not an rvdeploy runtime: {name} is missing",
                hint="`rvdeploy runtime build --source IREE_SOURCE` builds IREE's tools with "
                f"{RUNNER} from any IREE source tree",
            )
        arch = elf_arch(exe)
        if arch is None:
            raise RvdeployError(f"{exe} is not a 64-bit little-endian ELF executable")
        if not os.access(exe, os.X_OK):
            raise RvdeployError(f"{exe} is not executable", hint=f"chmod +x {exe}")
        if not _is_iree_tool(exe):
            raise RvdeployError(
                f"{exe} is a {arch} program but not IREE's {name}",
                hint="pass the directory of an IREE runtime build (`rvdeploy runtime build` makes one)",
            )
        arches.add(arch)
        tools[name] = sha256_file(exe)
    if len(arches) != 1:
        raise RvdeployError(f"{d}: the tools are built for different architectures ({', '.join(sorted(arches))})")
    arch = arches.pop()
    if arch not in ("riscv64", platform.machine()):
        raise RvdeployError(
            f"{d}: the tools are {arch} ELF files, neither riscv64 nor this machine's",
            hint="register riscv64 builds, or this machine's runner",
        )
    info = _build_info(d)
    if info and info.get("version"):
        return Runtime(d, arch, str(info["version"]), tools, info.get("source"))
    return Runtime(d, arch, _tool_version(d / wanted[0], arch), tools)


def _registry_file() -> Path:
    return config_dir() / REGISTRY


def registered() -> list[Runtime]:
    f = _registry_file()
    if not f.is_file():
        return []
    try:
        doc = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RvdeployError(f"{f}: invalid JSON ({exc})", hint="remove the file and add the runtimes again")
    entries = doc.get("runtimes") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise RvdeployError(
            f'{f}: not a runtime registry (expected {{"runtimes": [...]}})',
            hint="remove the file and add the runtimes again",
        )
    return [Runtime.from_dict(r, f) for r in entries]


def add(directory: Path | str) -> Runtime:
    """Register (or refresh) a runtime build. The newest registration of an architecture is the default."""
    rt = inspect_runtime(directory)
    others = [r for r in registered() if r.path != rt.path]
    f = _registry_file()
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix(".tmp")
    tmp.write_text(json.dumps({"runtimes": [r.to_dict() for r in others + [rt]]}, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, f)
    return rt


def for_arch(arch: str, explicit: Path | str | None = None) -> Runtime | None:
    """The runtime a bundle for `arch` gets: `explicit` (--runtime) if given, else the newest registered one
    for that architecture, re-validated (a rebuilt or deleted directory is an error, not a silent change)."""
    if explicit is not None:
        rt = inspect_runtime(explicit)
        if rt.arch != arch:
            raise RvdeployError(f"--runtime {explicit}: {rt.arch} tools, the target is {arch}")
        return rt
    matches = [r for r in registered() if r.arch == arch]
    if not matches:
        return None
    rt = matches[-1]
    current = inspect_runtime(rt.path) if rt.path.is_dir() else None
    if current is None:
        raise RvdeployError(
            f"the registered {arch} runtime {rt.path} no longer exists",
            hint=f"register it again with `rvdeploy runtime add DIR` ({_registry_file()})",
        )
    if current.tools != rt.tools:
        raise RvdeployError(
            f"the registered {arch} runtime in {rt.path} changed since it was added",
            hint=f"run `rvdeploy runtime add {rt.path}` again to record the new build",
        )
    return rt


def host_runtime_version() -> str:
    try:
        return metadata.version("iree-base-runtime")
    except metadata.PackageNotFoundError:
        return "unknown"


def release(version: str) -> str | None:
    """'3.13.0rc20261016' -> '3.13.0': the part that must agree between compiler and runtime."""
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version or "")
    return ".".join(g or "0" for g in m.groups()) if m else None


def version_warning(runtime_version: str, compiler_version: str) -> str | None:
    rv, cv = release(runtime_version), release(compiler_version)
    if rv is None:
        return (
            f"the runtime's version is unknown; it must match the compiler ({compiler_version}): "
            "a VM bytecode or HAL ABI mismatch fails at module load"
        )
    if rv != cv:
        return (
            f"runtime version {runtime_version} differs from the compiler's {compiler_version}: "
            "IREE does not promise that modules load across releases"
        )
    return None
