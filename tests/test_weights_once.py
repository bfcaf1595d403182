"""Each weight is stored once, in the layout its kernel reads: the parameter archive of an mmt4d bundle
is no larger than the model's weights (plus tile padding), a tied embedding included."""

from __future__ import annotations

import iree.runtime as rt
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from conftest import DEMO, TINY
from rvdeploy.importer import EXTERNALIZE_MIN_ELEMENTS

pytestmark = pytest.mark.slow


def _weight_bytes(model_dir) -> int:
    model = onnx.load(str(model_dir / "model.onnx"))
    return sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer
               if int(np.prod(t.dims)) >= EXTERNALIZE_MIN_ELEMENTS)


def _archive(bundle) -> dict[str, int]:
    index = rt.ParameterIndex()
    index.load(str(bundle.path / "model.irpa"))
    return {key: entry.length for key, entry in index.items()}


@pytest.mark.parametrize("model", [DEMO, TINY], ids=["demo-untied", "tiny-tied"])
def test_archive_holds_each_weight_once(built, model):
    archive = _archive(built(str(model), "host", "mmt4d"))  # host tiles divide every dim: no padding
    assert sum(archive.values()) == _weight_bytes(model)
    # every matmul weight is there only pre-packed
    assert all(".mmt4d_" in k or "norm" in k or "embed" in k for k in archive), sorted(archive)


def test_tied_embedding_read_from_packed_lm_head(built):
    archive = _archive(built(str(TINY), "host", "mmt4d"))
    embed = [k for k in archive if "embed_tokens" in k]
    assert embed == ["model.embed_tokens.weight.T.mmt4d_8x1"]
