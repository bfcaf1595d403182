"""rvdeploy build: model -> deployable bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import api
from ..source import DEFAULT_MODEL
from ._options import MAX_TOKENS, Json
from ._output import err, out, print_json, stage_progress


def build(
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help="Hub repo id (org/name), a local model directory, "
            "a .onnx file, or `demo` (the bundled Zen-of-Python model).",
        ),
    ] = DEFAULT_MODEL,
    variant: Annotated[
        str,
        typer.Option(
            help="Which ONNX file of a hub-layout repo: fp32, fp16, int8, q4, ..., or "
            "an onnxruntime-genai variant folder (see --list-variants)."
        ),
    ] = "fp32",
    list_variants: Annotated[
        bool,
        typer.Option("--list-variants", help="List the model's variants and exit (offline: those in the hub cache)."),
    ] = False,
    revision: Annotated[Optional[str], typer.Option(help="Hub branch, tag or commit (hub models only).")] = None,
    target: Annotated[str, typer.Option("--target", "-t", help="Target profile: see `rvdeploy targets`.")] = "host",
    pipeline: Annotated[
        str,
        typer.Option(
            help="mmt4d (weight contractions on RVV mmt4d microkernels, weights "
            "pre-packed) or baseline (upstream IREE defaults)."
        ),
    ] = "mmt4d",
    output: Annotated[Path, typer.Option("--output", "-o", help="Bundle directory to write.")] = Path("out/bundle"),
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace an existing bundle at --output (only a bundle rvdeploy wrote, or an empty directory).",
        ),
    ] = False,
    runtime: Annotated[
        Optional[Path],
        typer.Option(
            help="A riscv64 IREE runtime build directory to bundle "
            "(default: the registered one; with none registered, "
            "`rvdeploy runtime build` runs first)."
        ),
    ] = None,
    no_runtime: Annotated[
        bool,
        typer.Option(
            "--no-runtime",
            help="riscv64 targets: bundle no IREE runtime (the bundle cannot run until rebuilt with one).",
        ),
    ] = False,
    tar: Annotated[
        bool, typer.Option("--tar", help="Also write OUTPUT.tar.gz (byte-identical for the same inputs).")
    ] = False,
    ukernels: Annotated[
        Optional[str],
        typer.Option(
            help="mmt4d microkernels: project (rvdeploy's RVV kernels, "
            "ukernels/; default) or upstream (IREE's builtin ones)."
        ),
    ] = None,
    quantize: Annotated[
        Optional[str],
        typer.Option(
            help="Quantize an fp32 model's weight matmuls first: int8 "
            "(per-channel int8 weights, dynamic int8 activations) or q4 "
            "(4-bit blocks of 32, one scale each, like llama.cpp Q4_0)."
        ),
    ] = None,
    max_context: Annotated[
        Optional[int],
        typer.Option(
            "--max-context",
            min=1,
            max=MAX_TOKENS,
            help="Context length in tokens: the KV cache the "
            "module allocates (default: the model's "
            "max_position_embeddings, at most 4096); required for "
            "a model without config.json.",
        ),
    ] = None,
    json_: Json = False,
) -> None:
    """Build a bundle: fetch the model, import it, add prefill/decode/generate, lower to mmt4d, compile."""
    if list_variants:
        from ..source import list_variants as variants_of

        names = variants_of(model, revision)
        if json_:
            print_json({"model": model, "variants": names})
        else:
            for name in names:
                out.print(name, soft_wrap=True, highlight=False)
        return
    with stage_progress(api.BUILD_STAGES, quiet=json_) as hook:
        result = api.build(
            model,
            out=output,
            variant=variant,
            revision=revision,
            target=target,
            pipeline=pipeline,
            force=force,
            runtime=runtime,
            tar=tar,
            ukernels=ukernels,
            quantize=quantize,
            max_context=max_context,
            no_runtime=no_runtime,
            on_stage=hook,
            on_progress=hook.progress,
        )
    m = result.bundle.manifest
    if result.runtime_built is not None:
        rb = result.runtime_built
        err.print(
            f"{'found' if rb.cached else 'built'} and registered the {rb.info['arch']} runtime: {rb.path}"
            + ("" if rb.cached else f" ({rb.seconds:.0f} s, once)"),
            soft_wrap=True,
        )
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/yellow] {warning}", soft_wrap=True)
    if json_:
        print_json(
            {
                "bundle": str(result.bundle.path),
                "stage_seconds": result.seconds,
                "manifest": m.to_dict(),
                "warnings": list(result.warnings),
                "archive": str(result.archive) if result.archive else None,
            }
        )
        return
    out.print(
        f"wrote {result.bundle.path}  ({m.model.id}, target {m.target.name}, "
        f"pipeline {m.pipeline.name}, {m.total_bytes / 1e6:.1f} MB)"
    )
    mm = m.pipeline.mmt4d
    if mm:
        tiles = ", ".join(f"{elt}: prefill {t.prefill}, decode {t.decode}" for elt, t in mm.tiles.items())
        out.print(f"mmt4d: {mm.lowered_contractions} weight contractions lowered ({tiles or 'no tile for this type'})")
        if mm.q4_kernel_contractions:
            out.print(
                f"q4: {mm.q4_kernel_contractions} of {mm.q4_contractions} weight contractions on the RVV 4-bit "
                "kernels (ukernels/rvd_q4.c: int8 activation blocks x 4-bit weights, f16 block scales)"
            )
        if mm.q4_contractions > mm.q4_kernel_contractions:
            out.print(
                f"q4: {mm.q4_contractions - mm.q4_kernel_contractions} weight contractions read 4-bit weights, dequantized inside the "
                "contraction (generated code, no mmt4d microkernel for 4-bit)"
            )
        for reason in mm.not_lowered[:5]:
            err.print(f"[yellow]not lowered:[/yellow] {reason}")
    if result.archive:
        out.print(f"wrote {result.archive}")
    out.print(f"next: rvdeploy inspect {result.bundle.path}")


def register(app: typer.Typer) -> None:
    app.command("build")(build)
