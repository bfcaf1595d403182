"""The fixed-capacity KV cache kept in the module (rvdeploy.kvcache, rvdeploy.kvstate).

The graph rewrite is checked with onnxruntime on its own (the custom append node replaced by standard ops
that give the same view), the module with IREE against onnxruntime's tokens and logits, and the limits
(capacity, prefill only from an empty cache) by what the module refuses."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import DEMO, ROOT
from iree_host import HostModule, greedy_logits
from onnx import helper, numpy_helper
from ort_reference import greedy_tokens

from rvdeploy import api
from rvdeploy.kvcache import APPEND, DOMAIN, PAST_LENGTH, rewrite_decode
from rvdeploy.onnx_shapes import split_phases

TINY = ROOT / "tests" / "fixtures" / "tiny-random"


def _demo_decode(tmp_path):
    phases = split_phases(DEMO / "model.onnx", tmp_path)
    return phases.decode


def _standard_ops(model: onnx.ModelProto) -> onnx.ModelProto:
    """The rewritten graph runnable by onnxruntime: each append node as Slice(cache, :past) ++ new (keys
    transposed), the same view the module's in-place update gives; the cache outputs pass the input on."""
    g = model.graph
    nodes = []
    for n in g.node:
        if n.op_type != APPEND:
            nodes.append(n)
            continue
        transpose = next(a.i for a in n.attribute if a.name == "transpose")
        cache, new, past = n.input
        upd, view = n.output
        axis = 3 if transpose else 2
        for name, value in ((f"{n.name}/one", [1]), (f"{n.name}/zero", [0]), (f"{n.name}/axis", [axis])):
            g.initializer.append(numpy_helper.from_array(np.array(value, np.int64), name))
        nodes += [
            helper.make_node("Reshape", [past, f"{n.name}/one"], [f"{n.name}/p"]),
            helper.make_node("Slice", [cache, f"{n.name}/zero", f"{n.name}/p", f"{n.name}/axis"], [f"{n.name}/s"]),
            helper.make_node("Transpose", [new], [f"{n.name}/n"], perm=[0, 1, 3, 2])
            if transpose
            else helper.make_node("Identity", [new], [f"{n.name}/n"]),
            helper.make_node("Concat", [f"{n.name}/s", f"{n.name}/n"], [view], axis=axis),
            helper.make_node("Identity", [cache], [upd]),
        ]
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]
    keep = [o for o in model.opset_import if o.domain != DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    return model


def test_rewrite_replaces_the_growing_cache(tmp_path):
    decode = _demo_decode(tmp_path)
    layout = rewrite_decode(decode, tmp_path / "kv.onnx", 32, 2, 16)
    assert layout is not None and (layout.layers, layout.kv_heads, layout.head_dim, layout.capacity) == (2, 2, 16, 32)
    m = onnx.load(str(tmp_path / "kv.onnx"), load_external_data=False)
    inputs = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in m.graph.input}
    assert not [n for n in inputs if n.startswith("past_key_values.")]
    assert inputs["cache.0.key"] == [1, 2, 16, 32] and inputs["cache.1.value"] == [1, 2, 32, 16]
    assert PAST_LENGTH in inputs
    outputs = [o.name for o in m.graph.output]
    assert outputs[0] == "logits" and not [o for o in outputs if o.startswith("present.")]
    ops = [n.op_type for n in m.graph.node]
    assert ops.count(APPEND) == 4
    # the repeats of the keys and values over the query heads (one Expand each per layer) are gone
    exported = [n.op_type for n in onnx.load(str(decode), load_external_data=False).graph.node]
    assert ops.count("Expand") == exported.count("Expand") - 4


def test_rewrite_keeps_the_decode_step_equal_to_onnxruntime(tmp_path):
    """Depth 5 of the demo: the rewritten graph (append as standard ops) on a cache holding onnxruntime's own
    past gives the exported graph's logits."""
    decode = _demo_decode(tmp_path)
    rewrite_decode(decode, tmp_path / "kv.onnx", 32, 2, 16)
    onnx.save(_standard_ops(onnx.load(str(tmp_path / "kv.onnx"))), str(tmp_path / "std.onnx"))
    exported = ort.InferenceSession(str(DEMO / "model.onnx"))
    prompt = [5, 17, 99, 3, 42]
    n = len(prompt)
    feeds = {
        "input_ids": np.array([prompt], np.int64),
        "attention_mask": np.ones((1, n), np.int64),
        "position_ids": np.arange(n)[None],
    }
    for i in exported.get_inputs():
        if i.name.startswith("past_key_values."):
            feeds[i.name] = np.zeros((1, 2, 0, 16), np.float32)
    past = dict(zip([o.name for o in exported.get_outputs()], exported.run(None, feeds)))
    token = int(np.argmax(past["logits"][0, -1]))
    step = {
        "input_ids": np.array([[token]], np.int64),
        "attention_mask": np.ones((1, n + 1), np.int64),
        "position_ids": np.array([[n]]),
    }
    reference = exported.run(
        None,
        {**step, **{f"past_key_values.{k}": past[f"present.{k}"] for k in ("0.key", "0.value", "1.key", "1.value")}},
    )[0]
    caches = {}
    for layer in range(2):
        k = np.full((1, 2, 16, 32), np.nan, np.float32)  # what lies past the cached tokens must not matter
        v = np.full((1, 2, 32, 16), np.nan, np.float32)
        k[..., :n] = past[f"present.{layer}.key"].transpose(0, 1, 3, 2)
        v[:, :, :n] = past[f"present.{layer}.value"]
        caches[f"cache.{layer}.key"], caches[f"cache.{layer}.value"] = k, v
    rewritten = ort.InferenceSession(str(tmp_path / "std.onnx"))
    got = rewritten.run(None, {**step, PAST_LENGTH: np.array(n, np.int64), **caches})[0]
    np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-5)


def test_rewrite_leaves_an_unknown_attention_alone(tmp_path):
    """A graph whose past keys feed something besides the Concat keeps the exported interface."""
    decode = _demo_decode(tmp_path)
    m = onnx.load(str(decode), load_external_data=False)
    m.graph.node.append(helper.make_node("ReduceSum", ["past_key_values.0.key"], ["odd"], keepdims=0))
    m.graph.output.append(helper.make_tensor_value_info("odd", onnx.TensorProto.FLOAT, None))
    odd = tmp_path / "odd.onnx"
    onnx.save(m, str(odd))
    assert rewrite_decode(odd, tmp_path / "kv.onnx", 32, 2, 16) is None
    assert not (tmp_path / "kv.onnx").exists()


@pytest.mark.slow
def test_module_keeps_the_cache_and_matches_onnxruntime(built):
    """tiny-random on the host: the manifest says how the cache is kept, the entry points take ids and the
    cached count, and 24 greedy tokens (with their logits) equal onnxruntime's."""
    bundle = built(str(TINY))
    kv = bundle.manifest.kv_cache
    assert (kv.layers, kv.kv_heads, kv.head_dim, kv.capacity) == (3, 2, 16, bundle.manifest.max_context)
    assert "i64 past_length" in bundle.manifest.entry_points["decode"]
    prompt = [3, 14, 15, 92, 65, 35]
    tokens, logits = greedy_logits(bundle, prompt, 24)
    ref_tokens, ref_logits = greedy_tokens(TINY / "model.onnx", prompt, 25)
    assert tokens == ref_tokens[:24]
    for got, want in zip(logits, ref_logits):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_module_refuses_past_its_capacity_and_a_prefill_after_the_start(built):
    bundle = built(str(DEMO), max_context=8)
    assert bundle.manifest.kv_cache.capacity == 8 == bundle.manifest.max_context
    m = HostModule(bundle.path)
    m.call("prefill", np.array([[1, 2, 3, 4, 5, 6, 7]], np.int64), 0)
    m.call("decode", np.array([[9]], np.int64), 7)  # the 8th token: the cache is full
    with pytest.raises(Exception, match="KV cache holds 8 tokens"):
        m.call("decode", np.array([[9]], np.int64), 8)
    with pytest.raises(Exception, match="KV cache holds 8 tokens"):
        m.call("prefill", np.array([list(range(9))], np.int64), 0)
    with pytest.raises(Exception, match="prefill starts a conversation"):
        m.call("prefill", np.array([[1, 2]], np.int64), 3)


@pytest.mark.slow
def test_a_long_context_model_gets_the_default_capacity(tmp_path):
    """The cache is allocated whole: without --max-context a model's 65536-token context becomes the default
    capacity, with a warning saying so; --max-context gives more."""
    model = tmp_path / "long"
    shutil.copytree(DEMO, model)
    config = json.loads((model / "config.json").read_text())
    config["max_position_embeddings"] = 65536
    (model / "config.json").write_text(json.dumps(config))
    result = api.build(str(model), out=tmp_path / "b", target="host")
    assert result.bundle.manifest.max_context == 4096 == result.bundle.manifest.kv_cache.capacity
    assert any("context is 4096 tokens, not the model's 65536" in w for w in result.warnings)
    wide = api.build(str(model), out=tmp_path / "w", target="host", max_context=6000)
    assert wide.bundle.manifest.kv_cache.capacity == 6000 and not any("context is" in w for w in wide.warnings)
