"""Target profiles: one TOML file per board or ISA profile in the `targets/` data directory.

A target says how to compile for a machine (LLVM triple, ABI, CPU, CPU features in IREE/LLVM spelling), how to
emulate it (a qemu-user 10 `-cpu` string), which VLEN it has (modules are VLEN-specific: a module built for a
larger VLEN computes wrong results on a smaller one), and public performance figures used for estimates, each
with a source line.

Every file is validated when it is loaded; a bad file raises RvdeployError naming the file and the key.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rvdeploy.datafiles import data_dir
from rvdeploy.errors import RvdeployError

#: Keys every target file has (besides the optional [figures] and [sources] tables), with their TOML types.
_SCALAR_KEYS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "summary": str,
    "arch": str,
    "triple": str,
    "abi": str,
    "cpu": str,
    "cpu_features": list,
    "vlen": int,
    "qemu_cpu": str,
    "cores": int,
    "clock_ghz": (float, int),
    "notes": str,
}
_TABLE_KEYS = ("figures", "sources")

#: The figures estimates know about. Per core for the peaks; the whole SoC for DRAM bandwidth.
FIGURE_KEYS = ("peak_gflops_f32", "peak_gflops_f16", "dram_gbps")

ARCHES = ("riscv64", "host")

_FEATURE_RE = re.compile(r"^\+[a-z0-9][a-z0-9.\-]*$")
_ZVL_RE = re.compile(r"^\+zvl(\d+)b$")
_QEMU_VLEN_RE = re.compile(r"(?:^|,)vlen=(\d+)(?:,|$)")


@dataclass(frozen=True)
class Target:
    """One board or ISA profile, as read from targets/NAME.toml."""

    name: str
    summary: str
    arch: str
    triple: str
    abi: str
    cpu: str
    cpu_features: tuple[str, ...]
    vlen: int
    qemu_cpu: str
    cores: int
    clock_ghz: float
    notes: str
    figures: dict[str, float] = field(default_factory=dict, hash=False)
    sources: dict[str, str] = field(default_factory=dict, hash=False)

    @property
    def is_host(self) -> bool:
        return self.arch == "host"

    @property
    def has_vector(self) -> bool:
        return self.vlen > 0

    def to_dict(self) -> dict:
        """JSON-ready; same keys and layout as the TOML file."""
        return {
            "name": self.name,
            "summary": self.summary,
            "arch": self.arch,
            "triple": self.triple,
            "abi": self.abi,
            "cpu": self.cpu,
            "cpu_features": list(self.cpu_features),
            "vlen": self.vlen,
            "qemu_cpu": self.qemu_cpu,
            "cores": self.cores,
            "clock_ghz": self.clock_ghz,
            "notes": self.notes,
            "figures": dict(self.figures),
            "sources": dict(self.sources),
        }


def _targets_dir(directory: str | Path | None) -> Path:
    if directory is None:
        try:
            return data_dir("targets")
        except FileNotFoundError as exc:
            raise RvdeployError(str(exc), hint="reinstall rvdeploy") from None
    path = Path(directory)
    if not path.is_dir():
        raise RvdeployError(f"targets directory {path} does not exist")
    return path


def list_targets(directory: str | Path | None = None) -> list[Target]:
    """Every target in `directory` (default: the shipped targets), sorted by name."""
    root = _targets_dir(directory)
    targets = [load_target_file(path) for path in root.glob("*.toml")]
    return sorted(targets, key=lambda t: t.name)


def get_target(name: str, directory: str | Path | None = None) -> Target:
    """The target called `name`; RvdeployError listing the known names if there is none."""
    root = _targets_dir(directory)
    path = root / f"{name}.toml"
    if name and "/" not in name and "\\" not in name and path.is_file():
        return load_target_file(path)
    known = ", ".join(t.name for t in list_targets(root)) or "(none)"
    raise RvdeployError(f"unknown target '{name}'", hint=f"known targets: {known}")


def load_target_file(path: str | Path) -> Target:
    """Read and validate one target file."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise RvdeployError(f"target file {path}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise RvdeployError(f"target file {path}: cannot read: {exc.strerror or exc}") from None
    return _validate(path, data)


def _fail(path: Path, key: str, problem: str, hint: str | None = None) -> RvdeployError:
    return RvdeployError(f"target file {path}: key '{key}': {problem}", hint=hint)


def _type_name(t: type | tuple[type, ...]) -> str:
    names = {str: "string", int: "integer", float: "float", list: "array", dict: "table"}
    if isinstance(t, tuple):
        return names[t[0]]
    return names[t]


def _is_type(value: Any, t: type | tuple[type, ...]) -> bool:
    # TOML booleans are Python bools, which are ints: never accept them for a number.
    if isinstance(value, bool):
        return False
    return isinstance(value, t)


def _validate(path: Path, data: dict[str, Any]) -> Target:
    allowed = set(_SCALAR_KEYS) | set(_TABLE_KEYS)
    for key in data:
        if key not in allowed:
            raise _fail(path, key, "unknown key", hint=f"allowed keys: {', '.join(sorted(allowed))}")
    for key, t in _SCALAR_KEYS.items():
        if key not in data:
            raise _fail(path, key, "missing")
        if not _is_type(data[key], t):
            raise _fail(path, key, f"must be a {_type_name(t)}, got {type(data[key]).__name__}")

    name = data["name"]
    if name != path.stem:
        raise _fail(path, "name", f"is '{name}' but must equal the file name stem '{path.stem}'")
    for key in ("name", "summary", "notes"):
        if not data[key].strip():
            raise _fail(path, key, "must not be empty")

    arch = data["arch"]
    if arch not in ARCHES:
        raise _fail(path, "arch", f"is '{arch}', must be one of: {', '.join(ARCHES)}")

    features = data["cpu_features"]
    for i, feat in enumerate(features):
        if not isinstance(feat, str) or not _FEATURE_RE.match(feat):
            raise _fail(path, "cpu_features", f"entry {i} ({feat!r}) is not an LLVM feature like '+zvl256b'")
    if len(set(features)) != len(features):
        dups = sorted({f for f in features if features.count(f) > 1})
        raise _fail(path, "cpu_features", f"duplicate entries: {', '.join(dups)}")

    vlen, cores, clock = data["vlen"], data["cores"], float(data["clock_ghz"])
    if vlen < 0:
        raise _fail(path, "vlen", "must be >= 0")
    if cores < 0:
        raise _fail(path, "cores", "must be >= 0")
    if clock < 0 or not math.isfinite(clock):
        raise _fail(path, "clock_ghz", "must be a finite number >= 0")

    if arch == "host":
        expected = {"triple": "host", "cpu": "host", "abi": "", "qemu_cpu": ""}
        for key, value in expected.items():
            if data[key] != value:
                raise _fail(path, key, f"must be {value!r} for a host target")
        if features:
            raise _fail(path, "cpu_features", "must be empty for a host target (the compiler detects them)")
        if vlen != 0:
            raise _fail(path, "vlen", "must be 0 for a host target")
    else:
        _validate_riscv(path, data, features, vlen)

    figures, sources = _validate_figures(path, data)
    return Target(
        name=name,
        summary=data["summary"],
        arch=arch,
        triple=data["triple"],
        abi=data["abi"],
        cpu=data["cpu"],
        cpu_features=tuple(features),
        vlen=vlen,
        qemu_cpu=data["qemu_cpu"],
        cores=cores,
        clock_ghz=clock,
        notes=data["notes"],
        figures=figures,
        sources=sources,
    )


def _validate_riscv(path: Path, data: dict[str, Any], features: list[str], vlen: int) -> None:
    if not data["triple"].startswith("riscv64"):
        raise _fail(path, "triple", f"'{data['triple']}' is not a riscv64 triple")
    for key in ("abi", "cpu"):
        if not data[key]:
            raise _fail(path, key, "must not be empty for a riscv64 target")
    qemu = data["qemu_cpu"]
    if not qemu.startswith("rv64"):
        raise _fail(path, "qemu_cpu", f"'{qemu}' must start with a qemu riscv64 CPU model such as 'rv64'")

    zvl = sorted(int(m.group(1)) for f in features if (m := _ZVL_RE.match(f)))
    qemu_props = qemu.split(",")[1:]
    qemu_vlen = [int(m.group(1)) for m in _QEMU_VLEN_RE.finditer(qemu)]
    if vlen == 0:
        if "+v" in features or zvl:
            raise _fail(path, "vlen", "is 0 but cpu_features has +v or +zvl*b")
        if "v=true" in qemu_props or qemu_vlen:
            raise _fail(path, "qemu_cpu", "enables a vector unit but vlen is 0")
        return
    if vlen < 128 or vlen & (vlen - 1):
        raise _fail(path, "vlen", f"{vlen} is not a power of two >= 128 (RVV 1.0 'V' needs VLEN >= 128)")
    if "+v" not in features:
        raise _fail(path, "cpu_features", f"vlen is {vlen} but '+v' is missing")
    if not zvl or zvl[-1] != vlen:
        found = f"+zvl{zvl[-1]}b" if zvl else "no +zvl*b"
        raise _fail(path, "cpu_features", f"vlen is {vlen} but the largest zvl is {found}", hint=f"add '+zvl{vlen}b'")
    if "v=true" not in qemu_props:
        raise _fail(path, "qemu_cpu", "has a vector target (vlen > 0) but no 'v=true'")
    if qemu_vlen != [vlen]:
        raise _fail(path, "qemu_cpu", f"must set vlen={vlen} exactly once (found {qemu_vlen or 'none'})")


def _validate_figures(path: Path, data: dict[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    tables = {}
    for key in _TABLE_KEYS:
        table = data.get(key, {})
        if not isinstance(table, dict):
            raise _fail(path, key, f"must be a table, got {type(table).__name__}")
        tables[key] = table
    figures: dict[str, float] = {}
    for key, value in tables["figures"].items():
        full = f"figures.{key}"
        if key not in FIGURE_KEYS:
            raise _fail(path, full, "unknown figure", hint=f"known figures: {', '.join(FIGURE_KEYS)}")
        if not _is_type(value, (float, int)) or not math.isfinite(value) or value <= 0:
            raise _fail(path, full, f"must be a positive number, got {value!r}")
        figures[key] = float(value)
    sources: dict[str, str] = {}
    for key, value in tables["sources"].items():
        full = f"sources.{key}"
        if key not in figures:
            raise _fail(path, full, "is a source for a figure that is not given in [figures]")
        if not isinstance(value, str) or not value.strip():
            raise _fail(path, full, "must be a non-empty string")
        sources[key] = value
    for key in figures:
        if key not in sources:
            raise _fail(path, f"figures.{key}", "has no source", hint=f'add sources.{key} = "..."')
    return figures, sources
