"""--compare baseline: the same model built with --pipeline baseline, found beside the bundle (or given) and
reused when it matches, built otherwise by the builder the caller passes (rvdeploy.api.build: the API calls
bench, so bench does not import the API)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..bundle import MANIFEST, Bundle, Manifest
from ..errors import RvdeployError

# rvdeploy.api.build: (model, *, out, variant, revision, target, pipeline, force[, on_stage]) -> its BuildResult
Builder = Callable[..., object]


def _same_model(a: Manifest, b: Manifest) -> bool:
    def keys(m):
        return (m.model.id, m.model.variant, m.model.revision, m.target.name, m.compiler.version)

    return keys(a) == keys(b)


def default_baseline_path(bundle: Bundle) -> Path:
    return bundle.path.with_name(bundle.path.name + "-baseline")


def baseline_bundle(bundle: Bundle, path: Path | None = None, on_stage=None, *, build: Builder) -> tuple[Bundle, bool]:
    """The same model built with --pipeline baseline: `path` if given (it must be one), else BUNDLE-baseline
    next to the bundle, reused when it matches (model, variant, revision, target, compiler) and built
    otherwise. Returns (bundle, built_now)."""
    m = bundle.manifest
    if m.pipeline.name == "baseline":
        raise RvdeployError(
            f"{bundle.path} is itself a baseline bundle: --compare baseline compares an mmt4d bundle with it"
        )
    if path is not None:
        other = Bundle.open(path)
        if other.manifest.pipeline.name != "baseline" or not _same_model(m, other.manifest):
            raise RvdeployError(
                f"--baseline-bundle {path}: not a baseline build of the same model, target and "
                f"compiler as {bundle.path}"
            )
        return other, False
    path = default_baseline_path(bundle)
    if (path / MANIFEST).is_file():
        other = Bundle.open(path)
        if other.manifest.pipeline.name == "baseline" and _same_model(m, other.manifest):
            return other, False
        if other.manifest.pipeline.name != "baseline":
            raise RvdeployError(f"{path} exists and is not a baseline bundle", hint="pass --baseline-bundle DIR")
    elif path.exists():
        raise RvdeployError(f"{path} exists and is not a bundle", hint="remove it or pass --baseline-bundle DIR")
    source = m.model.source
    model = "demo" if source == "demo" else m.model.id
    if source in ("dir", "file") and not Path(model).exists():
        raise RvdeployError(
            f"cannot rebuild {bundle.path}'s model with the baseline pipeline: {model} is not here",
            hint="build it with --pipeline baseline and pass --baseline-bundle DIR",
        )
    kwargs = {"on_stage": on_stage} if on_stage else {}
    result = build(
        model,
        out=path,
        variant=m.model.variant or "fp32",
        revision=m.model.revision,
        target=m.target.name,
        pipeline="baseline",
        force=True,
        **kwargs,
    )
    return result.bundle, True
