from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # test helpers: ort_reference, iree_host, hubcache_*

DEMO = ROOT / "rvdeploy" / "models" / "demo"
TINY = Path(__file__).resolve().parent / "fixtures" / "tiny-random"


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

    def get(model: str, target: str = "host", pipeline: str = "mmt4d", runtime: Path | None = None):
        key = (model, target, pipeline, str(runtime))
        if key not in cache:
            suffix = f"-rt{abs(hash(str(runtime))) % 10**6}" if runtime else ""
            out = root / f"{Path(model).name}-{target}-{pipeline}{suffix}"
            cache[key] = api.build(model, out=out, target=target, pipeline=pipeline, runtime=runtime).bundle
        return cache[key]

    return get
