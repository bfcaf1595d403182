"""Stage: ONNX -> MLIR (torch-onnx dialect) with the weights externalized to an .irpa archive.

Runs IREE's own importer (`iree.compiler.tools.import_onnx`) in a subprocess: it loads every weight
into memory, and a subprocess returns that memory to the system before the next stage.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from . import children
from .bundle.names import PARAMETER_SCOPE as PARAM_SCOPE
from .errors import RvdeployError
from .onnx_shapes import PhaseGraphs

# Tensors with fewer elements stay inline in the MLIR (rope tables, norms' epsilons...).
EXTERNALIZE_MIN_ELEMENTS = 1024


@dataclass(frozen=True)
class ImportedGraphs:
    prefill_mlir: Path
    decode_mlir: Path
    params: Path  # weights of both graphs (same keys), scope PARAM_SCOPE


def _run_import(onnx_path: Path, data_dir: Path, out: Path, params: Path | None, large: bool) -> None:
    cmd = [
        sys.executable,
        "-m",
        "rvdeploy._import_onnx",
        str(onnx_path),
        "-o",
        str(out),
        "--data-dir",
        str(data_dir),
        "--externalize-params",
        f"--num-elements-threshold={EXTERNALIZE_MIN_ELEMENTS}",
        f"--params-scope={PARAM_SCOPE}",
    ]
    if large:  # past protobuf's 2 GB: the importer must not re-serialize the weights into one proto
        cmd.append("--large-model")
    cmd += [f"--save-params-to={params}"] if params else ["--no-save-params"]
    proc = children.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RvdeployError(f"iree-import-onnx failed on {onnx_path.name}: {_first_error(proc.stderr)}")


def _first_error(stderr: str) -> str:
    """The most telling line of an importer traceback, e.g. the unsupported op and node."""
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if re.search(r"(Error|error|Exception|not supported|unsupported)", ln):
            return ln[:300]
    return lines[-1][:300] if lines else "no output"


def import_graphs(phases: PhaseGraphs, workdir: Path) -> ImportedGraphs:
    """Import decode (writing the weights once) and prefill (sharing the same weight keys)."""
    params = workdir / "weights.irpa"
    decode = workdir / "decode.mlir"
    prefill = workdir / "prefill.mlir"
    _run_import(phases.decode, phases.data_dir, decode, params, phases.large)
    _run_import(phases.prefill, phases.data_dir, prefill, None, phases.large)
    return ImportedGraphs(prefill_mlir=prefill, decode_mlir=decode, params=params)
