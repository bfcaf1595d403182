"""The board-side launcher of a bundle: launcher.sh (a data file) with the bundle's requirements filled in.

The requirements are also in manifest.json; the launcher carries its own copy as shell variables because
a board may have no JSON parser. Every value is quoted with shlex.quote.
"""

from __future__ import annotations

import platform
import shlex
from pathlib import Path

from .targets import Target

TEMPLATE = Path(__file__).resolve().parent / "launcher.sh"
NAME = "launcher.sh"
EXIT_REFUSED = 3
EXIT_NO_RUNTIME = 4


def requirements(target: Target) -> dict:
    """What a board must have to run a bundle for `target`: architecture, exact VLEN, ISA extensions."""
    if target.is_host:
        # a host bundle is compiled for the build machine's CPU (cpu=host): same architecture at least
        return {"arch": platform.machine(), "vlen": 0, "extensions": []}
    exts = [f.lstrip("+") for f in target.cpu_features if f.startswith("+") and not f.startswith("+zvl")]
    # the base ISA is implied by the riscv64 Linux ABI (rv64imafdc, lp64d) even when not listed
    base = ["i", "m", "a", "f", "d", "c"]
    return {"arch": target.arch, "vlen": target.vlen, "extensions": base + [e for e in exts if e not in base]}


def render(req: dict, probe: str | None, runtime_dir: str | None, runtime_hint: str) -> str:
    values = {
        "REQUIRE_ARCH": req["arch"],
        "REQUIRE_VLEN": str(int(req["vlen"])),
        "REQUIRE_EXTENSIONS": " ".join(req["extensions"]),
        "PROBE": probe or "",
        "RUNTIME_DIR": runtime_dir or "",
        "RUNTIME_HINT": runtime_hint,
    }
    block = "\n".join(f"{k}={shlex.quote(v)}" for k, v in values.items())
    return TEMPLATE.read_text().replace("@REQUIREMENTS@", block)
