"""Stage bundle: the bundle's files (module, weights, dispatch report, tokenizer, config, launcher, runtime,
probe) and its manifest, written into place (rvdeploy.bundle)."""

from __future__ import annotations

from .. import __version__, launcher, modelconfig, runtimes
from ..bundle import write_bundle
from ..bundle.manifest import (
    Compiler,
    Graph,
    KVCache,
    Manifest,
    Mmt4d,
    Model,
    PackedWeight,
    Parameters,
    Pipeline,
    TargetInfo,
    TilePair,
    Ukernels,
)
from ..bundle.names import CONFIG, DISPATCHES, MODULE, PARAMETERS, TOKENIZER, TOKENIZER_CONFIG
from ..compiler import compiler_version
from ..pipeline import PIPELINES
from .context import BuildContext

HOST_RUNTIME_HINT = "install iree-base-runtime on the board"


def files(ctx: BuildContext) -> dict:
    """Bundle name -> source file."""
    found = {MODULE: ctx.compiled.vmfb, PARAMETERS: ctx.params, DISPATCHES: ctx.dispatches}
    model = ctx.files
    if model.tokenizer:
        found[TOKENIZER] = model.tokenizer
        chat = model.tokenizer.with_name(TOKENIZER_CONFIG)
        if chat.is_file():  # the chat template (run --chat)
            found[TOKENIZER_CONFIG] = chat
    if model.config:
        found[CONFIG] = model.config
    return found | ctx.board_files


def pipeline(ctx: BuildContext) -> Pipeline:
    """The exact flags, the microkernel library, and what the mmt4d lowering did."""
    lowered, uk = ctx.lowered, ctx.ukernels
    mmt4d = None
    if lowered is not None:
        mmt4d = Mmt4d(
            packed_weights=tuple(PackedWeight(pw.k, pw.n, tuple(pw.packed_shape), pw.key) for pw in lowered.packed),
            tiles={elt: TilePair(f"{t.m0}x{t.n0}x{t.k0}", f"1x{t.n0}x{t.k0}") for elt, t in lowered.tiles.items()},
            lowered_contractions=lowered.lowered,
            q4_contractions=lowered.q4,
            q4_kernel_contractions=lowered.q4_kernel,
            not_lowered=tuple(lowered.skipped),
        )
    name = ctx.request.pipeline
    return Pipeline(name, PIPELINES[name], tuple(ctx.flags), Ukernels.from_dict(uk.to_dict()) if uk else None, mmt4d)


def manifest(ctx: BuildContext, bundle_files: dict, compiler: str) -> Manifest:
    model, graph, genai = ctx.files, ctx.graph, ctx.genai
    eos = modelconfig.eos_token_ids(model.config) or (list(genai.eos_token_ids) if genai else [])
    return Manifest(
        rvdeploy_version=__version__,
        model=Model(
            id=model.model_id,
            variant=model.variant,
            source=model.kind,
            revision=model.revision,
            graph=Graph.from_dict(graph.to_dict() | {"path": model.onnx.name}),
            quantized=ctx.quantized,
            quantized_ops_rewritten=ctx.quantized_ops_rewritten or None,
            fused_ops_rewritten=ctx.fused_ops_rewritten or None,
        ),
        target=TargetInfo.from_dict(ctx.request.target.to_dict()),
        pipeline=pipeline(ctx),
        compiler=Compiler(compiler),
        entry_points=dict(ctx.entry.entry_points),
        tokenizer=TOKENIZER if TOKENIZER in bundle_files else None,
        tokenizer_config=TOKENIZER_CONFIG if TOKENIZER_CONFIG in bundle_files else None,
        eos_token_ids=tuple(eos),
        max_context=ctx.context_length,
        parameters=Parameters(),
        requirements=ctx.requirements,
        runtime=ctx.runtime,
        launcher=launcher.NAME,
        probe=ctx.probe,
        kv_cache=KVCache.from_dict(ctx.kv_cache.to_dict()) if ctx.kv_cache else None,
    )


def run(ctx: BuildContext) -> BuildContext:
    req, rt = ctx.request, ctx.runtime
    bundle_files = files(ctx)
    hint = rt.hint or (HOST_RUNTIME_HINT if rt.kind == "host" else "")
    script = ctx.work / launcher.NAME
    script.write_text(launcher.render(ctx.requirements.to_dict(), ctx.probe, rt.dir, hint))
    bundle_files[launcher.NAME] = script
    compiler = compiler_version()
    if rt.kind == "bundled":
        note = runtimes.version_warning(rt.version, compiler)
        if note:
            ctx.warnings.append(note)
    ctx.bundle = write_bundle(
        req.out,
        bundle_files,
        manifest(ctx, bundle_files, compiler),
        force=req.force,
        executables=ctx.executables,
        archive=req.archive,
    )
    return ctx
