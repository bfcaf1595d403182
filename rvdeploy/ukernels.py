"""Which mmt4d microkernel library a build links, and the project's own one compiled to LLVM bitcode.

Two libraries:
  upstream  IREE's builtin RVV tiles (iree_uk_mmt4d_tile_*_riscv_64_v): f32 N0 = VLEN/8, LMUL 4.
  project   ukernels/rvd_mmt4d.c: an `iree_uk_mmt4d` that replaces the builtin one (all element types) with
            f32 tiles N0 = VLEN/4 (decode: LMUL 8, K unrolled by 4; prefill: 3 rows of LMUL 8)
            s8 x s8 -> s32 tiles N0 = VLEN/4 (int8 models; same shapes, int16-widened vwmacc into int32),
            and RVV s16 x s16 / s16 x s8 -> s32 kernels IREE runs as generic C. Measured per multiply-add in
            benchmarks/ukernel_cost.py (static inner-loop analysis): decode 0.32-0.34x upstream's instructions,
            prefill 0.65x (VLEN 128/256/512), hence the default.

The project library is compiled with clang-19 for the target's exact VLEN (the bitcode carries
vscale_range; a mismatch with the target's +zvl crashes LLVM), its `target-features` / `target-cpu`
attributes stripped so IREE inlines it into the dispatches, cached by content (rvdeploy.ccache: the sources,
the commands and the clang version), and passed to iree-compile as
`--iree-link-bitcode=riscv_64=PATH` (user bitcode overrides the builtin `iree_uk_mmt4d`).
Host and non-vector targets always use upstream (nothing to link: the host has IREE's x86 kernels, and
without V no mmt4d is generated).
"""

from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from . import ccache, children
from .datafiles import data_dir
from .errors import RvdeployError
from .targets import Target

LIBRARIES = {
    "project": "rvdeploy's RVV mmt4d kernels (ukernels/rvd_mmt4d.c) linked as LLVM bitcode over IREE's",
    "upstream": "IREE's builtin mmt4d ukernels",
}
DEFAULT = "project"
SOURCES = ("rvd_mmt4d.c", "rvd_mmt4d.h")
# Function names the project's kernels leave in IREE's *.optimized.ll (inlined `<name>.exit` blocks).
KERNEL_PREFIX = "rvdeploy_uk_mmt4d_tile_"
_CLANGS = ("clang-19", "clang")
_LLVM_AS = ("llvm-as-19", "llvm-as")
_STRIP_RE = re.compile(r' "target-(?:features|cpu)"="[^"]*"')


@dataclass(frozen=True)
class UkernelChoice:
    library: str  # what the build uses: "project" | "upstream"
    requested: str
    bitcode: Path | None  # project bitcode to link, None for upstream
    note: str = ""
    info: dict | None = None  # clang version, flags, source and bitcode hashes (project)

    def to_dict(self) -> dict:
        d = {"library": self.library, "requested": self.requested, "description": LIBRARIES[self.library]}
        if self.note:
            d["note"] = self.note
        if self.info:
            d.update(self.info)
        return d

    def compile_flags(self) -> list[str]:
        return [f"--iree-link-bitcode=riscv_64={self.bitcode}"] if self.bitcode else []


def source_dir() -> Path:
    return data_dir("ukernels")


def _find(names: tuple[str, ...], what: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise RvdeployError(
        f"{what} not found (looked for {', '.join(names)}): needed to build the project's mmt4d microkernels",
        hint="install clang-19 and llvm-19 (scripts/setup.sh does), or pass --ukernels upstream",
    )


def clang_flags(target: Target) -> list[str]:
    return [
        "--target=riscv64-unknown-elf",
        f"-march=rv64gcv_zvl{target.vlen}b",
        f"-mabi={target.abi}",
        "-O3",
        "-ffreestanding",
        "-fno-builtin",
        "-fno-jump-tables",
        "-fvisibility=hidden",
    ]


def build_bitcode(target: Target) -> tuple[Path, dict]:
    """ukernels/rvd_mmt4d.c -> bitcode for this target's VLEN, cached; returns (path, provenance)."""
    clang = _find(_CLANGS, "clang")
    llvm_as = _find(_LLVM_AS, "llvm-as")
    version = ccache.tool_version(clang)
    flags = clang_flags(target)
    src = source_dir()
    sources = [src / name for name in SOURCES]
    compile_ll = [clang, *flags, "-S", "-emit-llvm"]
    # the recipe: clang to IR, the target attributes stripped, llvm-as to bitcode (the sources by content only,
    # so that checkouts in other places share the cache)
    key = ccache.key(sources=sources, command=[*compile_ll, "strip-target-attrs", llvm_as], tool_version=version)
    info = {
        "clang": version,
        "clang_flags": flags,
        "source_sha256": ccache.sources_digest(sources),
        "cache_key": key[:16],
    }

    def build(bc: Path) -> None:
        ll = bc.with_name(bc.name + ".ll")
        try:
            proc = children.run([*compile_ll, str(src / "rvd_mmt4d.c"), "-o", str(ll)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RvdeployError(f"clang failed on ukernels/rvd_mmt4d.c: {proc.stderr.strip()[:300]}")
            ll.write_text(_STRIP_RE.sub("", ll.read_text()))
            proc = children.run([llvm_as, str(ll), "-o", str(bc)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RvdeployError(f"llvm-as failed on the ukernel IR: {proc.stderr.strip()[:300]}")
        finally:
            ll.unlink(missing_ok=True)

    out = ccache.build_once(ccache.entry("ukernels", f"rvd_mmt4d-vlen{target.vlen}.bc", key), build)
    info["bitcode_sha256"] = hashlib.sha256(out.read_bytes()).hexdigest()
    return out, info


def choose(target: Target, requested: str | None) -> UkernelChoice:
    requested = requested or DEFAULT
    if requested not in LIBRARIES:
        raise RvdeployError(f"unknown ukernel library {requested!r}", hint="known: " + ", ".join(LIBRARIES))
    if requested == "upstream":
        return UkernelChoice("upstream", requested, None)
    if target.is_host or target.arch != "riscv64" or not target.has_vector:
        why = "host target" if target.is_host else "no RVV on this target"
        return UkernelChoice("upstream", requested, None, note=f"{why}: the project's RVV kernels do not apply")
    bitcode, info = build_bitcode(target)
    return UkernelChoice("project", requested, bitcode, info=info)
