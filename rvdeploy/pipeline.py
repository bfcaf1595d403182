"""Compiler flags for a (target, pipeline) pair. Everything target-specific comes from the target's data."""

from __future__ import annotations

from .targets import Target

PIPELINES = {
    "mmt4d": "weight contractions lowered to linalg.mmt4d with target tiles, weights pre-packed, "
    "RVV mmt4d microkernels",
    "baseline": "upstream IREE defaults for the same target: no data tiling, no microkernels",
}


def target_flags(target: Target) -> list[str]:
    flags = [
        "--iree-hal-target-device=local",
        "--iree-hal-local-target-device-backends=llvm-cpu",
        "--iree-input-type=onnx",
    ]
    if target.is_host:
        # an explicit triple "host" makes IREE 3.13 warn; the default triple is the host's
        return flags + ["--iree-llvmcpu-target-cpu=host"]
    flags += [
        f"--iree-llvmcpu-target-triple={target.triple}",
        f"--iree-llvmcpu-target-abi={target.abi}",
        f"--iree-llvmcpu-target-cpu={target.cpu}",
    ]
    if target.cpu_features:
        flags.append("--iree-llvmcpu-target-cpu-features=" + ",".join(target.cpu_features))
    return flags


def pipeline_flags(pipeline: str) -> list[str]:
    if pipeline == "mmt4d":
        # The mmt4d ops are already in the module (rvdeploy.mmt4d); IREE's own data tiling stays off
        # so it neither re-tiles the attention matmuls nor packs weights at load time. Transposes stay
        # where the graph has them: propagated, prefill's K^T was folded into its Q.K^T batch_matmul, whose
        # vector tiles then read the keys across rows (176K instructions per prompt token on the mid model
        # against 43K with the transpose kept as its own dispatch).
        return ["--iree-llvmcpu-enable-ukernels=mmt4d", "--iree-global-opt-propagate-transposes=false"]
    return []


def compile_flags(target: Target, pipeline: str) -> list[str]:
    return target_flags(target) + pipeline_flags(pipeline)
