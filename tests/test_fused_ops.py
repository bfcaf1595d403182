"""rvdeploy.fused_ops against onnxruntime: each fused com.microsoft op (onnxruntime-genai exports) as one node,
run by onnxruntime's own kernel on random inputs, equals its standard-ONNX rewrite run by onnxruntime, across
the attribute settings the rewrite accepts (edge settings included); the ones it does not are refused by name."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from rvdeploy.errors import RvdeployError
from rvdeploy.fused_ops import dequantize_blocks, rewrite_model

F = TensorProto.FLOAT
OPSETS = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _compare(model: onnx.ModelProto, feeds: dict, head_dim: int, atol=2e-5) -> dict:
    expected = _run(model, feeds)
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    counts = rewrite_model(rewritten, head_dim)
    assert counts, "nothing was rewritten"
    assert not any(
        n.domain == "com.microsoft" or n.op_type == "SimplifiedLayerNormalization" for n in rewritten.graph.node
    )
    got = _run(rewritten, feeds)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape
        np.testing.assert_allclose(g, e, atol=atol, rtol=1e-5)
    return counts


def _rope_cache(max_pos: int, half: int, base=10000.0):
    inv = 1.0 / base ** (np.arange(half, dtype=np.float64) / half)
    ang = np.arange(max_pos)[:, None] * inv[None, :]
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


def _gqa_model(n, nkv, h, packed, half, **attrs):
    names = [
        "query",
        "" if packed else "key",
        "" if packed else "value",
        "past_key",
        "past_value",
        "seqlens_k",
        "total_sequence_length",
        "cos_cache" if half else "",
        "sin_cache" if half else "",
    ]
    node = helper.make_node(
        "GroupQueryAttention",
        names,
        ["out", "present_key", "present_value"],
        domain="com.microsoft",
        name="gqa",
        num_heads=n,
        kv_num_heads=nkv,
        **attrs,
    )
    q_width = (n + 2 * nkv) * h if packed else n * h
    inputs = [helper.make_tensor_value_info("query", F, [1, "S", q_width])]
    if not packed:
        inputs += [helper.make_tensor_value_info(x, F, [1, "S", nkv * h]) for x in ("key", "value")]
    inputs += [helper.make_tensor_value_info(x, F, [1, nkv, "P", h]) for x in ("past_key", "past_value")]
    inputs += [
        helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [1]),
        helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, []),
    ]
    inits = []
    if half:
        cos, sin = _rope_cache(64, half)
        inits = [numpy_helper.from_array(cos, "cos_cache"), numpy_helper.from_array(sin, "sin_cache")]
    outputs = [
        helper.make_tensor_value_info("out", F, [1, "S", n * h]),
        helper.make_tensor_value_info("present_key", F, [1, nkv, "T", h]),
        helper.make_tensor_value_info("present_value", F, [1, nkv, "T", h]),
    ]
    graph = helper.make_graph([node], "gqa", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=OPSETS, ir_version=10)


def _gqa_feeds(n, nkv, h, packed, p, s, seed):
    rng = np.random.default_rng(seed)
    feeds = {}
    if packed:
        feeds["query"] = rng.standard_normal((1, s, (n + 2 * nkv) * h)).astype(np.float32)
    else:
        feeds["query"] = rng.standard_normal((1, s, n * h)).astype(np.float32)
        feeds["key"] = rng.standard_normal((1, s, nkv * h)).astype(np.float32)
        feeds["value"] = rng.standard_normal((1, s, nkv * h)).astype(np.float32)
    feeds["past_key"] = rng.standard_normal((1, nkv, p, h)).astype(np.float32)
    feeds["past_value"] = rng.standard_normal((1, nkv, p, h)).astype(np.float32)
    feeds["seqlens_k"] = np.array([p + s - 1], np.int32)
    feeds["total_sequence_length"] = np.array(p + s, np.int32)
    return feeds


# (num_heads, kv_num_heads, head_size, packed QKV, cos width (0 = no rotary), attributes)
GQA_CASES = {
    "llama-packed-rotary": (4, 2, 16, True, 8, dict(do_rotary=1, scale=0.25)),
    "mha-ratio-1": (4, 4, 16, True, 8, dict(do_rotary=1)),
    "ratio-4-separate-qkv": (8, 2, 16, False, 8, dict(do_rotary=1)),
    "interleaved": (4, 2, 16, True, 8, dict(do_rotary=1, rotary_interleaved=1)),
    "partial-rotary": (4, 2, 32, True, 8, dict(do_rotary=1)),
    "partial-interleaved": (4, 1, 32, True, 8, dict(do_rotary=1, rotary_interleaved=1)),
    "no-rotary": (4, 2, 16, True, 0, dict()),
    "local-window": (4, 2, 16, True, 8, dict(do_rotary=1, local_window_size=3)),
    "window-1": (2, 1, 16, True, 8, dict(do_rotary=1, local_window_size=1)),
    "softcap": (4, 2, 16, True, 8, dict(do_rotary=1, softcap=2.0)),
    "softcap-window-scale": (4, 2, 16, False, 8, dict(do_rotary=1, softcap=30.0, local_window_size=4, scale=0.5)),
}
# (past length, new tokens): prefill, decode, and a chunk after a past
STEPS = [(0, 5), (7, 1), (4, 3)]


@pytest.mark.parametrize("case", GQA_CASES)
def test_group_query_attention_matches_onnxruntime(case):
    n, nkv, h, packed, half, attrs = GQA_CASES[case]
    model = _gqa_model(n, nkv, h, packed, half, **attrs)
    for seed, (p, s) in enumerate(STEPS):
        counts = _compare(model, _gqa_feeds(n, nkv, h, packed, p, s, seed), h)
        assert counts["GroupQueryAttention"] == 1


def test_group_query_attention_refusals():
    model = _gqa_model(4, 2, 16, True, 8, do_rotary=1, smooth_softmax=1)
    with pytest.raises(RvdeployError, match=r"GroupQueryAttention node 'gqa': attribute smooth_softmax=1"):
        rewrite_model(model, 16)
    model = _gqa_model(4, 2, 16, True, 8, do_rotary=1)
    model.graph.node[0].input.extend(["", "bias"])
    with pytest.raises(RvdeployError, match=r"GroupQueryAttention node 'gqa': input 10 \(attention_bias\)"):
        rewrite_model(model, 16)


def _ln_model(skip: bool, bias: bool, sum_out: bool, hidden=24, eps=1e-5, axis=None):
    if skip:
        ins = ["x", "skip", "gamma"] + (["bias"] if bias else [])
        outs = ["y", "", "", "sum"] if sum_out else ["y"]
        node = helper.make_node(
            "SkipSimplifiedLayerNormalization", ins, outs, domain="com.microsoft", name="sln", epsilon=eps
        )
    else:
        attrs = {"epsilon": eps} | ({"axis": axis} if axis is not None else {})
        node = helper.make_node("SimplifiedLayerNormalization", ["x", "gamma"], ["y"], name="ln", **attrs)
    inputs = [helper.make_tensor_value_info("x", F, [1, "S", hidden])]
    if skip:
        inputs.append(helper.make_tensor_value_info("skip", F, [1, "S", hidden]))
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), "gamma")]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), "bias"))
    outputs = [helper.make_tensor_value_info("y", F, [1, "S", hidden])]
    if sum_out:
        outputs.append(helper.make_tensor_value_info("sum", F, [1, "S", hidden]))
    return helper.make_model(
        helper.make_graph([node], "ln", inputs, outputs, inits), opset_imports=OPSETS, ir_version=10
    )


@pytest.mark.parametrize(
    "skip,bias,sum_out,eps",
    [
        (False, False, False, 1e-5),
        (False, False, False, 1e-1),
        (True, False, True, 1e-6),
        (True, True, True, 1e-5),
        (True, False, False, 1e-5),
    ],
)
def test_simplified_layer_norms_match_onnxruntime(skip, bias, sum_out, eps):
    rng = np.random.default_rng(4)
    model = _ln_model(skip, bias, sum_out, eps=eps)
    for s in (1, 6):
        feeds = {"x": (rng.standard_normal((1, s, 24)) * 3).astype(np.float32)}
        if skip:
            feeds["skip"] = rng.standard_normal((1, s, 24)).astype(np.float32)
        _compare(model, feeds, 16)


def test_simplified_layer_norm_other_axis_refused():
    model = _ln_model(False, False, False, axis=1)
    with pytest.raises(
        RvdeployError, match=r"SimplifiedLayerNormalization node 'ln': attribute axis=1 .*supported: -1"
    ):
        rewrite_model(model, 16)


def _rotary_model(rank, n, h, half, interleaved, pos_kind):
    x_shape = [1, "S", n * h] if rank == 3 else [1, n, "S", h]
    pos_shape = [1, "S"] if pos_kind == "ids" else [1]
    node = helper.make_node(
        "RotaryEmbedding",
        ["x", "pos", "cos_cache", "sin_cache"],
        ["y"],
        domain="com.microsoft",
        name="rope",
        interleaved=interleaved,
        num_heads=n,
        rotary_embedding_dim=2 * half if 2 * half != h else 0,
    )
    cos, sin = _rope_cache(64, half)
    graph = helper.make_graph(
        [node],
        "rope",
        [
            helper.make_tensor_value_info("x", F, x_shape),
            helper.make_tensor_value_info("pos", TensorProto.INT64, pos_shape),
        ],
        [helper.make_tensor_value_info("y", F, x_shape)],
        [numpy_helper.from_array(cos, "cos_cache"), numpy_helper.from_array(sin, "sin_cache")],
    )
    return helper.make_model(graph, opset_imports=OPSETS, ir_version=10)


@pytest.mark.parametrize(
    "rank,interleaved,half,pos_kind",
    [
        (3, 0, 8, "ids"),
        (3, 1, 8, "ids"),
        (4, 0, 8, "ids"),
        (4, 1, 8, "offset"),
        (3, 0, 8, "offset"),
        (3, 0, 4, "ids"),
        (4, 1, 4, "ids"),
    ],
)
def test_rotary_embedding_matches_onnxruntime(rank, interleaved, half, pos_kind):
    n, h, s = 4, 16, 5
    rng = np.random.default_rng(5)
    model = _rotary_model(rank, n, h, half, interleaved, pos_kind)
    x = rng.standard_normal((1, s, n * h) if rank == 3 else (1, n, s, h)).astype(np.float32)
    pos = np.array([[3, 4, 5, 6, 7]], np.int64) if pos_kind == "ids" else np.array([9], np.int64)
    _compare(model, {"x": x, "pos": pos}, h)


def _gbq_model(rows, cols, block, bits, zero_points: bool, seed=6):
    rng = np.random.default_rng(seed)
    g = cols // block
    per_byte = 8 // bits
    data = rng.integers(0, 256, (rows, cols // per_byte), dtype=np.uint8)
    scales = (rng.random((rows, g)) * 0.1 + 0.01).astype(np.float32)
    inits = [numpy_helper.from_array(data, "data"), numpy_helper.from_array(scales, "scales")]
    ins = ["data", "ids", "scales"]
    if zero_points:
        zp = rng.integers(0, 256, (rows, -(-g // per_byte)), dtype=np.uint8)
        inits.append(numpy_helper.from_array(zp, "zp"))
        ins.append("zp")
    node = helper.make_node(
        "GatherBlockQuantized",
        ins,
        ["y"],
        domain="com.microsoft",
        name="emb",
        block_size=block,
        bits=bits,
        gather_axis=0,
        quantize_axis=1,
    )
    graph = helper.make_graph(
        [node],
        "gbq",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, "S"])],
        [helper.make_tensor_value_info("y", F, [1, "S", cols])],
        inits,
    )
    return helper.make_model(graph, opset_imports=OPSETS, ir_version=10)


@pytest.mark.parametrize(
    "bits,block,zero_points", [(4, 32, False), (4, 32, True), (4, 16, True), (8, 32, False), (8, 64, True)]
)
def test_gather_block_quantized_matches_onnxruntime(bits, block, zero_points):
    model = _gbq_model(40, 128, block, bits, zero_points)
    _compare(model, {"ids": np.array([[0, 39, 7, 7, 12]], np.int64)}, 16, atol=1e-6)


def test_gather_block_quantized_axis_refused():
    model = _gbq_model(40, 128, 32, 4, False)
    model.graph.node[0].attribute.append(helper.make_attribute("gather_axis", 1))
    del model.graph.node[0].attribute[[a.name for a in model.graph.node[0].attribute].index("gather_axis")]
    with pytest.raises(RvdeployError, match=r"GatherBlockQuantized node 'emb': attribute gather_axis=1"):
        rewrite_model(model, 16)


def test_dequantize_blocks_low_nibble_first():
    data = np.array([[0x21, 0x43]], np.uint8)  # 1, 2, 3, 4
    w = dequantize_blocks(data, np.array([[2.0]], np.float32), None, 4, 4, signed=False)
    assert w.tolist() == [[-14.0, -12.0, -10.0, -8.0]]  # (q - 8) * 2
