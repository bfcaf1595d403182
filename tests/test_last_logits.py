"""Prefill's logits for the last position only (rvdeploy.last_logits): the rewritten graph gives, in
onnxruntime, exactly the last row and the same KV cache as the exported one (f32, and int8 where the slice
comes after the activation's quantization); graphs of another shape are left alone; builds record it."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import DEMO, TINY
from onnx import TensorProto, helper

from rvdeploy.last_logits import prefill_last_logits, slice_last_position


def _run(model: onnx.ModelProto, ids: list[int]) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {}
    for i in sess.get_inputs():
        if i.name == "input_ids":
            feeds[i.name] = np.array([ids], np.int64)
        elif i.name == "attention_mask":
            feeds[i.name] = np.ones((1, len(ids)), np.int64)
        elif i.name == "position_ids":
            feeds[i.name] = np.arange(len(ids), dtype=np.int64)[None]
        else:  # past_key_values.N.*: [batch, kv_heads, past, head_dim], empty
            shape = [1 if isinstance(d, str) and "batch" in d else 0 if isinstance(d, str) else d for d in i.shape]
            feeds[i.name] = np.zeros(shape, np.float32)
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


@pytest.mark.parametrize("path", [DEMO / "model.onnx", TINY / "model.onnx"], ids=["demo", "tiny-random"])
def test_last_row_and_cache_as_exported(path):
    model = onnx.load(str(path))
    ids = [1, 5, 9, 23, 7, 11, 2]
    want = _run(model, ids)
    assert slice_last_position(model)
    assert [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim][1] == 1
    got = _run(model, ids)
    assert got["logits"].shape == (1, 1, want["logits"].shape[-1])
    np.testing.assert_allclose(got["logits"], want["logits"][:, -1:], rtol=1e-5, atol=1e-5)
    for name, value in want.items():
        if name != "logits":
            np.testing.assert_array_equal(got[name], value)
    assert not slice_last_position(model)  # once


def test_int8_slices_after_the_activation_quantization(tmp_path):
    """int8 lm_head: the slice sits between DynamicQuantizeLinear and MatMulInteger, so the activation's scale
    still comes from the whole prompt and the last row is onnxruntime's, bit for bit."""
    from rvdeploy.qgraph import normalize
    from rvdeploy.quantize import quantize_file

    quantize_file(DEMO / "model.onnx", tmp_path / "q" / "model.onnx", "int8")
    path, _ = normalize(tmp_path / "q" / "model.onnx", tmp_path / "n")
    model = onnx.load(str(path))
    ids = [3, 8, 13, 21, 34, 55]
    want = _run(model, ids)
    assert slice_last_position(model)
    sliced = next(n for n in model.graph.node if n.op_type == "Slice" and n.name.startswith("rvdeploy"))
    producer = next(n for n in model.graph.node if sliced.input[0] in n.output)
    assert producer.op_type == "DynamicQuantizeLinear"
    np.testing.assert_array_equal(_run(model, ids)["logits"], want["logits"][:, -1:])


def test_other_graphs_are_left_alone(tmp_path):
    x = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", 8])
    graph = helper.make_graph(
        [helper.make_node("Cast", ["input_ids"], ["logits"], to=TensorProto.FLOAT)], "g", [x], [y]
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), str(path))
    before = path.read_bytes()
    assert not prefill_last_logits(path)
    assert path.read_bytes() == before


def test_built_prefill_returns_the_last_position(built):
    """The manifest's prefill signature says [1, 1, V], as decode's (the demo's module keeps its KV cache; a
    growing-cache module's prefill says [B, 1, V])."""
    m = built(str(DEMO)).manifest
    assert m.entry_points["prefill"].split("->")[1].strip(" (").startswith("tensor<1x1x512xf32>")
    assert m.entry_points["decode"].split("->")[1].strip(" (").startswith("tensor<1x1x512xf32>")
