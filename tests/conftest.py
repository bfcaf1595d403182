from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # test helpers: ort_reference, iree_host, hubcache_*

DEMO = ROOT / "rvdeploy" / "models" / "demo"
TINY = Path(__file__).resolve().parent / "fixtures" / "tiny-random"
# IREE's sources for the riscv64 runtime: these machines reach no git host, so the tests (and CI, which gets a
# copy of shared/ beside its checkout) build it from the archive in ../shared/iree-src/ unless
# RVDEPLOY_IREE_SOURCE names another.
SHARED_IREE_SOURCES = sorted((ROOT.parent / "shared" / "iree-src").glob("iree-src-*.tar.gz"))
ON_CI = os.environ.get("CI") == "true"
# The RVV 4-bit kernels (riscv64 q4 bundles) quantize activations to int8 per block of 32: accuracy_level 4's
# arithmetic, not the f32 one. Their logits are compared with this tolerance, relative to the largest logit
# (measured on the demo: 1.3 % against onnxruntime at f32, 1.5 % against its accuracy_level 4).
Q4_KERNEL_RTOL = 0.03


def system_part_missing(why: str):
    """A part scripts/setup.sh installs is missing: skip on a developer's machine, but fail on a machine that
    setup.sh prepared (CI sets CI=true), where a skip would hide a broken install step."""
    if ON_CI:
        pytest.fail(f"{why} (CI=true: scripts/setup.sh should have installed it)", pytrace=False)
    pytest.skip(why)


def iree_source() -> str | None:
    return os.environ.get("RVDEPLOY_IREE_SOURCE") or (str(SHARED_IREE_SOURCES[-1]) if SHARED_IREE_SOURCES else None)


@pytest.fixture(scope="session", autouse=True)
def iree_source_for_builds():
    """riscv64 builds make their runtime from IREE's sources when none is registered: point them at the
    offline archive, as the README's first command does."""
    source = iree_source()
    old = os.environ.get("RVDEPLOY_IREE_SOURCE")
    if source:
        os.environ["RVDEPLOY_IREE_SOURCE"] = source
    yield source
    if old is None:
        os.environ.pop("RVDEPLOY_IREE_SOURCE", None)


@pytest.fixture(scope="session")
def riscv_runtime(private_config):
    """The real riscv64 IREE runtime (built once from IREE's sources, cached by content), registered."""
    from rvdeploy import api

    if iree_source() is None:
        system_part_missing(
            "no IREE source for the riscv64 runtime: ../shared/iree-src/*.tar.gz or RVDEPLOY_IREE_SOURCE"
        )
    rt, _ = api.build_runtime(source=iree_source())
    return rt


@pytest.fixture(scope="session", autouse=True)
def private_config(tmp_path_factory):
    """Tests never read or write the user's rvdeploy config (registered runtimes). The cache directory (the
    cross-compiled probe, the emulated board's userland) is shared on purpose: it is keyed by content."""
    import os

    path = tmp_path_factory.mktemp("config")
    old = os.environ.get("RVDEPLOY_CONFIG_DIR")
    os.environ["RVDEPLOY_CONFIG_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("RVDEPLOY_CONFIG_DIR", None)
    else:
        os.environ["RVDEPLOY_CONFIG_DIR"] = old


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """Build each (model, target, pipeline[, runtime]) once per session: builds take seconds, tests share them."""
    from rvdeploy import api

    cache: dict = {}
    root = tmp_path_factory.mktemp("bundles")

    def get(
        model: str,
        target: str = "host",
        pipeline: str = "mmt4d",
        runtime: Path | None = None,
        no_runtime: bool = False,
        **options,
    ):
        """riscv64 targets get the registered runtime (built from IREE's sources when none is), `runtime`
        (a directory) instead, or none with `no_runtime`; `options` go to api.build (ukernels, quantize)."""
        key = (model, target, pipeline, str(runtime), no_runtime, tuple(sorted(options.items())))
        if key not in cache:
            name = "-".join([Path(model).name, target, pipeline, *(f"{v}" for _, v in sorted(options.items()))])
            suffix = f"-rt{abs(hash(str(runtime))) % 10**6}" if runtime else "-nort" if no_runtime else ""
            out = root / f"{name}{suffix}"
            cache[key] = api.build(
                model, out=out, target=target, pipeline=pipeline, runtime=runtime, no_runtime=no_runtime, **options
            ).bundle
        return cache[key]

    return get
