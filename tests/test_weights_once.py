"""Each weight is stored once, in the layout its kernel reads: the parameter archive of an mmt4d bundle
is no larger than the model's weights (plus tile padding), a tied embedding included."""

from __future__ import annotations

import iree.runtime as rt
import numpy as np
import onnx
import pytest
from conftest import DEMO, TINY
from onnx import numpy_helper

from rvdeploy.importer import EXTERNALIZE_MIN_ELEMENTS

pytestmark = pytest.mark.slow


def _weight_bytes(model_dir) -> int:
    model = onnx.load(str(model_dir / "model.onnx"))
    return sum(
        numpy_helper.to_array(t).nbytes
        for t in model.graph.initializer
        if int(np.prod(t.dims)) >= EXTERNALIZE_MIN_ELEMENTS
    )


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


def test_stored_transposed_copy_of_tied_table_dropped(tmp_path):
    """Exporters without `accelerate` store a tied lm_head a second time, transposed: the build keeps one."""
    from ort_reference import greedy_tokens

    from rvdeploy import api

    model = onnx.load(str(TINY / "model.onnx"))
    transpose = next(n for n in model.graph.node if n.op_type == "Transpose" and "embed_tokens" in n.input[0])
    table = next(t for t in model.graph.initializer if t.name == transpose.input[0])
    copy = numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(table).T), "lm_head.weight")
    model.graph.initializer.append(copy)
    model.graph.node.remove(transpose)
    for node in model.graph.node:
        node.input[:] = ["lm_head.weight" if i == transpose.output[0] else i for i in node.input]
    (tmp_path / "m").mkdir()
    onnx.save(model, str(tmp_path / "m" / "model.onnx"))
    for name in ("tokenizer.json", "config.json"):  # config.json: the context length a bundle records
        (tmp_path / "m" / name).write_bytes((TINY / name).read_bytes())
    bundle = api.build(str(tmp_path / "m" / "model.onnx"), out=tmp_path / "b", target="host").bundle
    archive = _archive(bundle)
    assert [k for k in archive if "embed" in k or "lm_head" in k] == ["model.embed_tokens.weight.T.mmt4d_8x1"]
    prompt = [0, 504, 77, 266]
    expected, _ = greedy_tokens(tmp_path / "m" / "model.onnx", prompt, 16)
    assert api.run(bundle.path, board="local", prompt="Beautiful is", max_new_tokens=16).ids == expected
