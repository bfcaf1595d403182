"""The Python API behind the CLI: build, run and inspect, each a chain of named stages.

Stages return values and never print; a caller that wants progress passes `on_stage`, which is called
with each stage's name before it runs.
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from . import __version__
from . import launcher, modelconfig, outputs, runtime_build, runtimes
from .bench.run import bench as run_bench
from .boards import get_board
from .bundle import Bundle, pack_bundle, unpack_bundle, write_bundle
from .compiler import compile_module, compiler_version
from .dispatches import DYN, ContractionRow, DispatchReport, analyze_dump, summarize
from .entrypoints import assemble
from .errors import RvdeployError
from .genai_interface import io_names, prepare as prepare_interface, read_config as read_genai_config
from .graphinfo import inspect_graph
from .importer import import_graphs
from .kvcache import DEFAULT_CAPACITY as DEFAULT_KV_CAPACITY, rewrite_decode
from .last_logits import prefill_last_logits
from .layout import padded
from .mmt4d import lower_to_mmt4d
from .onnx_shapes import split_phases
from .params import is_transposed_copy, write_params
from .qgraph import normalize as normalize_quantized
from .quantize import FORMATS as QUANT_FORMATS
from .quantize import quantize_file
from .pipeline import PIPELINES, compile_flags
from .ukernels import LIBRARIES as UKERNEL_LIBRARIES
from .ukernels import choose as choose_ukernels
from .probe import NAME as PROBE_NAME, probe_binary
from .source import DEFAULT_MODEL, materialize, resolve_model
from .targets import get_target
from .session import RunResult, run as session_run

BUILD_STAGES = ("fetch", "check", "runtime", "import", "entry points", "mmt4d lowering", "pack weights", "compile",
                "inspect", "bundle")
StageHook = Callable[[str], None]


def _noop(_: str) -> None:
    pass


@dataclass(frozen=True)
class BuildResult:
    bundle: Bundle
    seconds: dict  # stage -> wall seconds
    warnings: tuple[str, ...] = ()
    archive: Path | None = None  # the .tar.gz, when asked for
    runtime_built: runtime_build.RuntimeBuild | None = None  # a riscv64 runtime this build had to make


PROBE_PATH = f"probe/{PROBE_NAME}"


def build_runtime(source: Path | str | None = None, ref: str | None = None, jobs: int | None = None,
                  progress: runtime_build.Progress = runtime_build.no_progress, arch: str = "riscv64"
                  ) -> tuple[runtimes.Runtime, runtime_build.RuntimeBuild]:
    """Build (or find in the cache) an IREE runtime with rvdeploy's runner from IREE's sources (riscv64, or
    "host": this machine's runner) and register it."""
    result = runtime_build.build(source=source, ref=ref, jobs=jobs, progress=progress, arch=arch)
    return runtimes.add(result.path), result


@dataclass(frozen=True)
class BoardSide:
    """What runs on the board: files (bundle path -> source), which are executable, the manifest entries
    (requirements, runtime, launcher, probe), and the runtime this build had to make, if any."""
    files: dict
    executables: set
    entries: dict
    warnings: list
    runtime_built: runtime_build.RuntimeBuild | None = None


def _board_side(tgt, runtime_dir: Path | str | None, no_runtime: bool,
                progress: runtime_build.Progress) -> BoardSide:
    """The launcher, the probe (riscv64) and the runtime (riscv64: IREE's tools and rvdeploy's runner; host:
    the runner): resolved, and built from IREE's sources when none is registered, before any compile work, so
    a missing toolchain or a bad --runtime fails before minutes of it."""
    files: dict[str, Path] = {}
    executables: set[str] = set()
    warnings: list[str] = []
    built = None
    if no_runtime and tgt.is_host:
        raise RvdeployError("--no-runtime is for riscv64 targets: host bundles carry this machine's runner")
    if no_runtime and runtime_dir is not None:
        raise RvdeployError("--runtime and --no-runtime contradict each other", hint="pass one of them")
    arch = platform.machine() if tgt.is_host else tgt.arch
    rt = None if no_runtime else runtimes.for_arch(arch, runtime_dir)
    if rt is not None and runtime_dir is None and runtime_build.stale(rt.path):
        rt = None  # built by an older rvdeploy: rebuilt (cached by source) with the current runner
    if rt is None and not no_runtime:
        rt, built = build_runtime(progress=progress, arch="host" if tgt.is_host else tgt.arch)
    if rt is not None:
        for tool in runtimes.required_tools(rt.arch):
            files[f"runtime/{tool}"] = rt.path / tool
            executables.add(f"runtime/{tool}")
    if tgt.is_host:
        # IREE's own tools (iree-run-module, iree-benchmark-module) come from iree-base-runtime on the board
        runtime = {"kind": "host", "package": "iree-base-runtime", "version": runtimes.host_runtime_version(),
                   "dir": "runtime", "tools": list(runtimes.HOST_TOOLS),
                   "runner": {"version": rt.version, "source": rt.source}}
        probe = None
    else:
        files[PROBE_PATH] = probe_binary()
        executables.add(PROBE_PATH)
        probe = PROBE_PATH
        if rt is None:
            runtime = {"kind": "none", "arch": tgt.arch, "hint": runtimes.BUILD_HINT}
            warnings.append(f"--no-runtime: the bundle cannot run until it has a {tgt.arch} IREE runtime "
                            f"({runtimes.BUILD_HINT})")
        else:
            runtime = {"kind": "bundled", "arch": rt.arch, "version": rt.version, "source": rt.source,
                       "dir": "runtime", "tools": list(runtimes.TOOLS)}
    req = launcher.requirements(tgt)
    entries = {"requirements": req, "runtime": runtime, "launcher": launcher.NAME, "probe": probe}
    return BoardSide(files, executables, entries, warnings, built)


def _pipeline_manifest(pipeline: str, flags: list[str], uk, lowered) -> dict:
    """The manifest's pipeline section: exact flags, microkernel library, and what the mmt4d lowering did."""
    mmt4d = None
    if lowered is not None:
        mmt4d = {
            "tiles": {elt: {"prefill": f"{t.m0}x{t.n0}x{t.k0}", "decode": f"1x{t.n0}x{t.k0}"}
                      for elt, t in lowered.tiles.items()},
            "lowered_contractions": lowered.lowered,
            "q4_contractions": lowered.q4,
            "packed_weights": [{"key": pw.key, "k": pw.k, "n": pw.n, "packed_shape": list(pw.packed_shape)}
                               for pw in lowered.packed],
            "not_lowered": list(lowered.skipped),
        }
    return {"name": pipeline, "description": PIPELINES[pipeline], "compiler_flags": list(flags),
            "ukernels": uk.to_dict() if uk else None, "mmt4d": mmt4d}


def build(model: str = DEFAULT_MODEL, *, out: Path, variant: str = "fp32", revision: str | None = None,
          target: str = "host", pipeline: str = "mmt4d", force: bool = False, workdir: Path | None = None,
          runtime: Path | str | None = None, tar: bool = False, ukernels: str | None = None,
          quantize: str | None = None, max_context: int | None = None, no_runtime: bool = False,
          on_stage: StageHook = _noop, on_progress: runtime_build.Progress = runtime_build.no_progress
          ) -> BuildResult:
    """`ukernels`: the mmt4d microkernel library, "project" or "upstream" (rvdeploy.ukernels; default
    rvdeploy.ukernels.DEFAULT). Only the mmt4d pipeline on a riscv64 RVV target links the project's.
    `quantize`: "int8" or "q4" quantizes the (fp32) graph first with rvdeploy.quantize.
    `max_context`: the context length for a model without config.json (or a lower one than its own).
    `runtime`: the runtime directory to bundle (default: the registered one; with none registered one is
    built from IREE's sources, rvdeploy.runtime_build, unless `no_runtime`)."""
    import time

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
    seconds: dict[str, float] = {}
    own_workdir = workdir is None
    work = Path(tempfile.mkdtemp(prefix="rvdeploy-build-")) if own_workdir else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)

    def stage(name: str):
        on_stage(name)
        seconds[name] = time.perf_counter()

    def done(name: str):
        seconds[name] = round(time.perf_counter() - seconds[name], 3)

    try:
        stage("fetch")
        files = resolve_model(model, variant=variant, revision=revision)
        done("fetch")
        stage("check")
        graph = inspect_graph(files.onnx)
        genai = read_genai_config(files.onnx)
        if files.config is None and genai is not None and genai.context_length and max_context is None:
            context = genai.context_length  # an onnxruntime-genai folder carries genai_config.json, not config.json
        else:
            context = modelconfig.context_length(files.config, max_context, model)
        onnx_path = materialize(files.onnx, work / "source")
        # onnxruntime-genai exports: the common interface and standard ops (rvdeploy.genai_interface)
        onnx_path, interface = prepare_interface(onnx_path, work / "interface", graph.num_kv_heads, graph.head_dim,
                                                 genai)
        if interface:
            graph = replace(graph, **io_names(onnx_path))
        quantized = None
        if quantize:
            count = quantize_file(onnx_path, work / "quantized" / "model.onnx", quantize)
            onnx_path = work / "quantized" / "model.onnx"
            quantized = {"format": quantize, "by": "rvdeploy.quantize", "matmuls": count}
        onnx_path, normalized = normalize_quantized(onnx_path, work / "normalized")
        done("check")
        stage("runtime")
        board = _board_side(tgt, runtime, no_runtime, on_progress)
        board_entries, warnings = board.entries, board.warnings
        done("runtime")
        stage("import")
        phases = split_phases(onnx_path, work)
        prefill_last_logits(phases.prefill)  # logits [B, 1, V]: the prefill signature in entry_points shows it
        # the cache is allocated whole: a model's full context (131072 for Llama 3.2) only when asked for
        capacity = context if max_context is not None else min(context, DEFAULT_KV_CAPACITY)
        cache = rewrite_decode(phases.decode, work / "decode.kv.onnx", capacity, graph.num_kv_heads, graph.head_dim)
        if cache is not None:
            phases = replace(phases, decode=work / "decode.kv.onnx")
            if capacity < context:
                warnings.append(f"the bundle's context is {capacity} tokens, not the model's {context}: its KV "
                                f"cache is allocated whole (pass --max-context N for more)")
                context = capacity
        imported = import_graphs(phases, work)
        done("import")
        stage("entry points")
        entry = assemble(imported, list(graph.inputs), list(graph.outputs), work, cache)
        done("entry points")
        lowered = None
        uk = None
        module_mlir = entry.mlir
        if pipeline == "mmt4d":
            stage("mmt4d lowering")
            uk = choose_ukernels(tgt, ukernels)  # the tiles depend on the library
            lowered = lower_to_mmt4d(entry, tgt, work, uk.library,
                                     is_transpose=partial(is_transposed_copy, imported.params))
            module_mlir = lowered.mlir
            done("mmt4d lowering")
        stage("pack weights")
        params = write_params(imported.params, lowered, work / "model.irpa")
        done("pack weights")
        stage("compile")
        flags = compile_flags(tgt, pipeline) + (uk.compile_flags() if uk else [])
        if lowered is not None and lowered.q4:
            # IREE 3.13's CPU tile heuristic picks vector_reduction [.., 4, 64] for some block-of-32 contractions
            # with a fused elementwise consumer (tiny-random's gate/up at K=96) and then refuses the large vector
            flags.append("--iree-llvmcpu-fail-on-large-vector=false")
        compiled = compile_module(module_mlir, flags, work)
        done("compile")
        stage("inspect")
        kv_shapes = {(1, graph.num_kv_heads, -1, graph.head_dim)}
        weight_shapes = {(pw.k, pw.n) for pw in lowered.packed} if lowered else None
        report = analyze_dump(compiled.dump_dir, kv_shapes=kv_shapes, weight_shapes=weight_shapes)
        (work / "dispatches.json").write_text(json.dumps(report.to_dict(), indent=1, sort_keys=True) + "\n")
        done("inspect")
        stage("bundle")
        bundle_files = {"model.vmfb": compiled.vmfb, "model.irpa": params, "dispatches.json": work / "dispatches.json"}
        tokenizer_config = files.tokenizer.with_name("tokenizer_config.json") if files.tokenizer else None
        if files.tokenizer:
            bundle_files["tokenizer.json"] = files.tokenizer
        if tokenizer_config is not None and tokenizer_config.is_file():  # the chat template (run --chat)
            bundle_files["tokenizer_config.json"] = tokenizer_config
        else:
            tokenizer_config = None
        if files.config:
            bundle_files["config.json"] = files.config
        bundle_files.update(board.files)
        rt = board_entries["runtime"]
        hint = rt.get("hint") or ("install iree-base-runtime on the board" if rt["kind"] == "host" else "")
        (work / launcher.NAME).write_text(launcher.render(board_entries["requirements"], board_entries["probe"],
                                                          rt.get("dir"), hint))
        bundle_files[launcher.NAME] = work / launcher.NAME
        compiler = compiler_version()
        if rt["kind"] == "bundled":
            note = runtimes.version_warning(rt["version"], compiler)
            if note:
                warnings.append(note)
        manifest = {
            "rvdeploy_version": __version__,
            "model": {"id": files.model_id, "revision": files.revision, "variant": files.variant,
                      "quantized": quantized, "quantized_ops_rewritten": normalized or None,
                      "fused_ops_rewritten": interface or None,
                      "source": files.kind, "graph": graph.to_dict() | {"path": files.onnx.name}},
            "target": tgt.to_dict(),
            "pipeline": _pipeline_manifest(pipeline, flags, uk, lowered),
            "compiler": {"name": "iree-compile", "version": compiler},
            "entry_points": entry.entry_points,
            "tokenizer": "tokenizer.json" if files.tokenizer else None,
            "tokenizer_config": "tokenizer_config.json" if tokenizer_config else None,
            "eos_token_ids": modelconfig.eos_token_ids(files.config) or (list(genai.eos_token_ids) if genai else []),
            "max_context": context,
            "kv_cache": cache.to_dict() if cache else None,
            "parameters": {"scope": "model", "file": "model.irpa"},
            **board_entries,
        }
        bundle = write_bundle(out, bundle_files, manifest, force=force, executables=board.executables,
                              archive=archive)
        done("bundle")
        return BuildResult(bundle, seconds, tuple(warnings), archive, board.runtime_built)
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
    report = DispatchReport.parse(bundle.read_text("dispatches.json"), f"{bundle.path}/dispatches.json")
    dispatches = report.to_dict()
    mm = bundle.manifest["pipeline"].get("mmt4d") or {}
    packed = {tuple(pw["packed_shape"]): pw["n"] for pw in mm.get("packed_weights", [])}
    for row, contraction in zip(dispatches["contractions"], report.contractions):
        row["padding"] = _padding(contraction, packed)
    summary = summarize(report)
    summary["padding_note"] = (f"padding: decode exact (one token); prefill for a {PADDING_PROMPT}-token prompt "
                               "(M rounded up to M0)")
    return {"manifest": bundle.manifest, "dispatches": dispatches, "summary": summary}
