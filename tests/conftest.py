from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # test helpers: ort_reference, iree_host, hubcache_*

DEMO = ROOT / "rvdeploy" / "models" / "demo"
TINY = Path(__file__).resolve().parent / "fixtures" / "tiny-random"


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """Build each (model, target, pipeline) once per session: builds take seconds, tests share them."""
    from rvdeploy import api

    cache: dict = {}
    root = tmp_path_factory.mktemp("bundles")

    def get(model: str, target: str = "host", pipeline: str = "mmt4d"):
        key = (model, target, pipeline)
        if key not in cache:
            out = root / f"{Path(model).name}-{target}-{pipeline}"
            cache[key] = api.build(model, out=out, target=target, pipeline=pipeline).bundle
        return cache[key]

    return get
