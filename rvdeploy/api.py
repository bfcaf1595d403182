"""The Python API behind the CLI: build, run and inspect, each a chain of named stages.

Stages return values and never print; a caller that wants progress passes `on_stage`, which is called
with each stage's name before it runs.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import runtime_build
from .bench.run import bench as run_bench
from .boards import get_board
from .build import (
    bundle as bundle_stage,
    check,
    compile as compile_stage,
    entrypoints,
    fetch,
    import_,
    inspect as inspect_stage,
    lower,
    runtime as runtime_stage,
    weights,
)
from .build.chain import Stage, StageHook, run as run_stages
from .build.context import BuildContext, BuildRequest
from .build.runtime import build_and_register as build_runtime  # noqa: F401 (the API's name for it)
from .bundle import Bundle, outputs, pack_bundle, unpack_bundle
from .bundle.names import DISPATCHES
from .dispatches import DYN, ContractionRow, DispatchReport, summarize
from .errors import RvdeployError
from .layout import padded
from .pipeline import PIPELINES
from .quantize import FORMATS as QUANT_FORMATS
from .session import RunResult, run as session_run
from .source import DEFAULT_MODEL
from .targets import get_target
from .ukernels import LIBRARIES as UKERNEL_LIBRARIES

# The build, stage by stage (rvdeploy/build/: one module per stage, named as printed here).
BUILD_CHAIN = (
    Stage("fetch", fetch.run),
    Stage("check", check.run),
    Stage("runtime", runtime_stage.run),
    Stage("import", import_.run),
    Stage("entry points", entrypoints.run),
    Stage("mmt4d lowering", lower.run, when=lower.applies),
    Stage("pack weights", weights.run),
    Stage("compile", compile_stage.run),
    Stage("inspect", inspect_stage.run),
    Stage("bundle", bundle_stage.run),
)
BUILD_STAGES = tuple(stage.name for stage in BUILD_CHAIN)


def _noop(_: str) -> None:
    pass


@dataclass(frozen=True)
class BuildResult:
    bundle: Bundle
    seconds: dict  # stage -> wall seconds
    warnings: tuple[str, ...] = ()
    archive: Path | None = None  # the .tar.gz, when asked for
    runtime_built: runtime_build.RuntimeBuild | None = None  # a riscv64 runtime this build had to make


def build(
    model: str = DEFAULT_MODEL,
    *,
    out: Path,
    variant: str = "fp32",
    revision: str | None = None,
    target: str = "host",
    pipeline: str = "mmt4d",
    force: bool = False,
    workdir: Path | None = None,
    runtime: Path | str | None = None,
    tar: bool = False,
    ukernels: str | None = None,
    quantize: str | None = None,
    max_context: int | None = None,
    no_runtime: bool = False,
    on_stage: StageHook = _noop,
    on_progress: runtime_build.Progress = runtime_build.no_progress,
) -> BuildResult:
    """`ukernels`: the mmt4d microkernel library, "project" or "upstream" (rvdeploy.ukernels; default
    rvdeploy.ukernels.DEFAULT). Only the mmt4d pipeline on a riscv64 RVV target links the project's.
    `quantize`: "int8" or "q4" quantizes the (fp32) graph first with rvdeploy.quantize.
    `max_context`: the context length for a model without config.json (or a lower one than its own).
    `runtime`: the runtime directory to bundle (default: the registered one; with none registered one is
    built from IREE's sources, rvdeploy.runtime_build, unless `no_runtime`)."""
    if pipeline not in PIPELINES:
        raise RvdeployError(f"unknown pipeline {pipeline!r}", hint="known pipelines: " + ", ".join(PIPELINES))
    if ukernels is not None and ukernels not in UKERNEL_LIBRARIES:
        raise RvdeployError(f"unknown ukernel library {ukernels!r}", hint="known: " + ", ".join(UKERNEL_LIBRARIES))
    if quantize is not None and quantize not in QUANT_FORMATS:
        raise RvdeployError(f"unknown quantization {quantize!r}", hint="known: " + ", ".join(QUANT_FORMATS))
    tgt = get_target(target)
    # what may be written is settled before minutes of work, not after
    out = outputs.directory(out, force)
    archive = outputs.file(archive_path(out), force, outputs.ARCHIVE, flag="--tar") if tar else None
    request = BuildRequest(
        model,
        variant,
        revision,
        tgt,
        pipeline,
        ukernels,
        quantize,
        max_context,
        runtime,
        no_runtime,
        out,
        force,
        archive,
        on_progress,
    )
    own_workdir = workdir is None
    work = Path(tempfile.mkdtemp(prefix="rvdeploy-build-")) if own_workdir else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        ctx, seconds = run_stages(BUILD_CHAIN, BuildContext(request, work), on_stage)
        return BuildResult(ctx.bundle, seconds, tuple(ctx.warnings), archive, ctx.runtime_built)
    finally:
        if own_workdir:
            shutil.rmtree(work, ignore_errors=True)


def archive_path(bundle_dir: Path) -> Path:
    bundle_dir = Path(bundle_dir)
    return bundle_dir.with_name(bundle_dir.name + ".tar.gz")


def pack(bundle_path: Path, out: Path | None = None, force: bool = False) -> Path:
    return pack_bundle(bundle_path, out or archive_path(outputs.absolute(bundle_path)), force=force)


def unpack(archive: Path, out: Path, force: bool = False) -> Bundle:
    return unpack_bundle(archive, out, force=force)


def run(bundle_path: Path, *, board: str, prompt: str, max_new_tokens: int = 32, **options) -> RunResult:
    """Generate on a board through the bundle's runner (rvdeploy.session.run: sampling, --chat, streaming)."""
    return session_run(bundle_path, board=board, prompt=prompt, max_new_tokens=max_new_tokens, **options)


def bench(bundle_path: Path, **kwargs):
    """pp/tg on a board, the baseline beside it, estimates, emulated cost: rvdeploy.bench.run.bench, which builds
    a missing baseline bundle with this module's build."""
    return run_bench(bundle_path, build=build, **kwargs)


def probe(board: str) -> dict:
    """What the board has: architecture, VLEN, ISA extensions, cores, memory."""
    with get_board(board) as b:
        return {"board": b.name, **b.probe()}


PADDING_PROMPT = 64  # prefill padding depends on the prompt length: reported for this one


def _padding(row: ContractionRow, packed: dict) -> float | None:
    """Fraction of an mmt4d row's multiply-adds spent on padding (N rounded up to N0, M up to M0)."""
    if not row.mmt4d or len(row.operands) != 2:
        return None
    lhs, rhs = row.operands
    if len(lhs) < 2 or len(rhs) < 4 or lhs[-2] < 1 or DYN in rhs[-4:]:
        return None  # a dynamic or short shape: no padding figure
    m0, (n1, k1, n0, k0) = lhs[-2], rhs[-4:]
    n = packed.get((n1, k1, n0, k0))
    if n is None:
        return None
    m = 1 if row.entry == "decode" else PADDING_PROMPT
    return 1.0 - (m * n) / (padded(m, m0) * n1 * n0)


def inspect(bundle_path: Path) -> dict:
    bundle = Bundle.open(bundle_path)
    report = DispatchReport.parse(bundle.read_text(DISPATCHES), f"{bundle.path}/{DISPATCHES}")
    dispatches = report.to_dict()
    mm = bundle.manifest.pipeline.mmt4d
    packed = {pw.packed_shape: pw.n for pw in mm.packed_weights} if mm else {}
    for row, contraction in zip(dispatches["contractions"], report.contractions):
        row["padding"] = _padding(contraction, packed)
    summary = summarize(report)
    summary["padding_note"] = (
        f"padding: decode exact (one token); prefill for a {PADDING_PROMPT}-token prompt (M rounded up to M0)"
    )
    return {"manifest": bundle.manifest, "dispatches": dispatches, "summary": summary}
