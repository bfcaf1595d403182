"""rvdeploy.graphinfo on tiny ONNX graphs made here with onnx.helper."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from hubcache_graphs import HEAD_DIM, HIDDEN, KV_HEADS, VOCAB, llm_model, matmulbnb4_node, save_model
from onnx import TensorProto, helper

from rvdeploy.errors import RvdeployError
from rvdeploy.graphinfo import LlmGraph, inspect_graph, unsupported_ops


def _err(path) -> str:
    with pytest.raises(RvdeployError) as ei:
        inspect_graph(path)
    msg = str(ei.value)
    assert "\n" not in msg, msg
    return msg


def test_facts_of_a_kv_graph(tmp_path):
    path = save_model(llm_model(layers=2), tmp_path / "model.onnx")
    onnx.checker.check_model(str(path))
    g = inspect_graph(path)
    assert isinstance(g, LlmGraph)
    assert (g.path, g.opset, g.num_layers) == (path, 17, 2)
    assert (g.num_kv_heads, g.head_dim, g.vocab_size, g.dtype) == (KV_HEADS, HEAD_DIM, VOCAB, "f32")
    assert g.inputs == (
        "input_ids",
        "attention_mask",
        "position_ids",
        "past_key_values.0.key",
        "past_key_values.0.value",
        "past_key_values.1.key",
        "past_key_values.1.value",
    )
    assert g.outputs == ("logits", "present.0.key", "present.0.value", "present.1.key", "present.1.value")
    assert g.has_position_ids and not g.external_data
    assert g.op_counts == {"::Gather": 1, "::MatMul": 5, "::Reshape": 4, "::Transpose": 4, "::Concat": 4}
    d = g.to_dict()
    assert json.loads(json.dumps(d))["num_layers"] == 2 and d["path"] == str(path)


def test_toy_graph_runs_in_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    path = save_model(llm_model(layers=1), tmp_path / "model.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    past = np.zeros((1, KV_HEADS, 3, HEAD_DIM), np.float32)
    logits, pk, pv = sess.run(
        None,
        {
            "input_ids": np.array([[1, 2]], np.int64),
            "attention_mask": np.ones((1, 5), np.int64),
            "position_ids": np.array([[3, 4]], np.int64),
            "past_key_values.0.key": past,
            "past_key_values.0.value": past,
        },
    )
    assert logits.shape == (1, 2, VOCAB) and pk.shape == pv.shape == (1, KV_HEADS, 5, HEAD_DIM)


def test_f16_and_no_position_ids(tmp_path):
    g = inspect_graph(save_model(llm_model(elem=TensorProto.FLOAT16, position_ids=False), tmp_path / "m.onnx"))
    assert g.dtype == "f16" and not g.has_position_ids


def test_external_data_detected_and_missing_file_named(tmp_path):
    path = save_model(llm_model(), tmp_path / "model.onnx", ["model.onnx_data", "model.onnx_data_1"])
    assert inspect_graph(path).external_data
    (tmp_path / "model.onnx_data_1").unlink()
    msg = _err(path)
    assert "model.onnx_data_1" in msg and "not beside it" in msg


def test_symbolic_dims_fall_back_to_config_json(tmp_path):
    path = save_model(llm_model(static_dims=False), tmp_path / "onnx" / "model.onnx")
    msg = _err(path)
    assert "config.json" in msg and "kv heads" in msg and "vocab size" in msg
    # config.json in the parent directory (hub layout: onnx/model.onnx + config.json at the top)
    cfg = {"num_attention_heads": 4, "num_key_value_heads": KV_HEADS, "hidden_size": 4 * HEAD_DIM, "vocab_size": VOCAB}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    g = inspect_graph(path)
    assert (g.num_kv_heads, g.head_dim, g.vocab_size) == (KV_HEADS, HEAD_DIM, VOCAB)


def test_graph_without_kv_cache_says_what_is_missing(tmp_path):
    msg = _err(save_model(llm_model(past=False), tmp_path / "model.onnx"))
    assert "model.onnx has no past_key_values.N.key/value inputs" in msg
    assert "--task text-generation-with-past" in msg


def test_missing_input_ids_or_logits(tmp_path):
    m = llm_model()
    m.graph.input[0].name = "tokens"
    m.graph.node[0].input[1] = "tokens"
    assert "no input_ids input" in _err(save_model(m, tmp_path / "a.onnx"))
    m = llm_model(drop_outputs=("logits",))
    assert "no logits output" in _err(save_model(m, tmp_path / "b.onnx"))


def test_present_outputs_must_match_past_inputs(tmp_path):
    msg = _err(save_model(llm_model(layers=2, drop_outputs=("present.1.value",)), tmp_path / "model.onnx"))
    assert "past_key_values.1.value" in msg and "present.1.value" in msg


def test_matmulbnb4_names_op_domain_node_and_fix(tmp_path):
    # (MatMulNBits, the q4 exports' op, is handled: rvdeploy.qgraph rewrites it; see test_quantized.py)
    node, inits = matmulbnb4_node()
    m = llm_model(extra_nodes=[node], extra_inits=inits, extra_opsets={"com.microsoft": 1})
    msg = _err(save_model(m, tmp_path / "model_bnb4.onnx"))
    assert "model_bnb4.onnx" in msg
    assert "com.microsoft MatMulBnb4" in msg
    assert "'/model/layers.0/mlp/gate_proj/MatMulBnb4'" in msg
    assert "--variant fp32, fp16 or int8" in msg


def test_unsupported_op_inside_if_subgraph_is_found(tmp_path):
    node, inits = matmulbnb4_node(name="inner_q4")
    out = helper.make_tensor_value_info("branch.out", TensorProto.FLOAT, None)
    node.output[0] = "branch.out"
    then_g = helper.make_graph([node], "then", [], [out])
    else_g = helper.make_graph([helper.make_node("Identity", ["h"], ["branch.out"], name="else_id")], "else", [], [out])
    cond = onnx.numpy_helper.from_array(np.array(True), "use_q4")
    if_node = helper.make_node("If", ["use_q4"], ["if.out"], then_branch=then_g, else_branch=else_g, name="maybe_q4")
    m = llm_model(extra_nodes=[if_node], extra_inits=inits + [cond], extra_opsets={"com.microsoft": 1})
    msg = _err(save_model(m, tmp_path / "model.onnx"))
    assert "MatMulBnb4" in msg and "'inner_q4'" in msg and "If node 'maybe_q4' then_branch" in msg


def test_unsupported_op_inside_loop_body_and_counts(tmp_path):
    # A supported op inside a Loop body is counted; the graph is accepted.
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_id")],
        "body",
        [
            helper.make_tensor_value_info("iter", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, [])],
    )
    loop = helper.make_node("Loop", ["", "loop_cond"], [], body=body, name="loop")
    cond = onnx.numpy_helper.from_array(np.array(False), "loop_cond")
    g = inspect_graph(save_model(llm_model(extra_nodes=[loop], extra_inits=[cond]), tmp_path / "model.onnx"))
    assert g.op_counts["::Loop"] == 1 and g.op_counts["::Identity"] == 1


def test_opset23_rmsnormalization_is_rejected(tmp_path):
    w = onnx.numpy_helper.from_array(np.ones(HIDDEN, np.float32), "norm.weight")
    node = helper.make_node("RMSNormalization", ["h", "norm.weight"], ["h_norm"], name="/model/norm/RMSNorm")
    msg = _err(save_model(llm_model(opset=23, extra_nodes=[node], extra_inits=[w]), tmp_path / "model.onnx"))
    assert "ai.onnx RMSNormalization" in msg and "'/model/norm/RMSNorm'" in msg and "opset" in msg


def test_unreadable_and_missing_files(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_text("this is not a protobuf, it is a text file\n" * 10)
    assert "is not a readable ONNX model" in _err(bad) and str(bad) in _err(bad)
    assert "model file not found" in _err(tmp_path / "nope.onnx")


def test_unsupported_ops_table():
    table = unsupported_ops()
    assert "com.microsoft::MatMulBnb4" in table and "::RMSNormalization" in table
    assert "com.microsoft::MatMulNBits" not in table  # rewritten by rvdeploy.qgraph
    assert "com.microsoft::GroupQueryAttention" not in table and "com.microsoft::RotaryEmbedding" not in table
    assert all(op.reason and op.hint for op in table.values())
