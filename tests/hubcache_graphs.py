"""Tiny ONNX graphs with a causal-LM interface, built with onnx.helper for the intake/graphinfo tests.

The graph is a toy decoder step: embedding lookup -> logits = h @ W_lm, and per layer
present.N.key/value = Concat(past_key_values.N.key/value, reshape(h @ W_k/v)) on the sequence axis.
It is a valid ONNX model (onnx.checker passes, onnxruntime runs it); it computes nothing useful.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

VOCAB, HIDDEN, KV_HEADS, HEAD_DIM = 32, 16, 2, 8


def _np_dtype(elem: int):
    return np.float16 if elem == TensorProto.FLOAT16 else np.float32


def llm_model(
    layers: int = 1,
    elem: int = TensorProto.FLOAT,
    *,
    static_dims: bool = True,
    past: bool = True,
    position_ids: bool = True,
    opset: int = 17,
    extra_nodes: list[onnx.NodeProto] | None = None,
    extra_inits: list[onnx.TensorProto] | None = None,
    extra_outputs: list[onnx.ValueInfoProto] | None = None,
    extra_opsets: dict[str, int] | None = None,
    drop_outputs: tuple[str, ...] = (),
) -> onnx.ModelProto:
    """A toy causal LM. static_dims=False makes kv_heads/head_dim/vocab symbolic in the interface."""
    rng = np.random.default_rng(0)
    dt = _np_dtype(elem)
    kvh = KV_HEADS if static_dims else "num_kv_heads"
    hd = HEAD_DIM if static_dims else "head_dim"
    vocab = VOCAB if static_dims else "vocab_size"

    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total_seq"]),
    ]
    if position_ids:
        inputs.append(helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "seq"]))
    outputs = [helper.make_tensor_value_info("logits", elem, ["batch", "seq", vocab])]
    inits = [
        numpy_helper.from_array(rng.standard_normal((VOCAB, HIDDEN)).astype(dt), "embed.weight"),
        numpy_helper.from_array(rng.standard_normal((HIDDEN, VOCAB)).astype(dt), "lm_head.weight"),
        numpy_helper.from_array(np.array([0, 0, KV_HEADS, HEAD_DIM], dtype=np.int64), "kv_shape"),
    ]
    nodes = [
        helper.make_node("Gather", ["embed.weight", "input_ids"], ["h"], name="/model/embed_tokens/Gather"),
        helper.make_node("MatMul", ["h", "lm_head.weight"], ["logits"], name="/lm_head/MatMul"),
    ]
    for i in range(layers):
        for kind in ("key", "value"):
            w = f"layers.{i}.{kind[0]}_proj.weight"
            inits.append(numpy_helper.from_array(rng.standard_normal((HIDDEN, KV_HEADS * HEAD_DIM)).astype(dt), w))
            p = f"/model/layers.{i}/attn/{kind[0]}_proj"
            nodes += [
                helper.make_node("MatMul", ["h", w], [f"{p}/out"], name=f"{p}/MatMul"),
                helper.make_node("Reshape", [f"{p}/out", "kv_shape"], [f"{p}/r"], name=f"{p}/Reshape"),
                helper.make_node("Transpose", [f"{p}/r"], [f"{p}/t"], perm=[0, 2, 1, 3], name=f"{p}/Transpose"),
            ]
            if past:
                name = f"past_key_values.{i}.{kind}"
                inputs.append(helper.make_tensor_value_info(name, elem, ["batch", kvh, "past_seq", hd]))
                nodes.append(
                    helper.make_node("Concat", [name, f"{p}/t"], [f"present.{i}.{kind}"], axis=2, name=f"{p}/Concat")
                )
            else:
                nodes.append(helper.make_node("Identity", [f"{p}/t"], [f"present.{i}.{kind}"], name=f"{p}/Id"))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", elem, ["batch", kvh, "total_seq", hd]))
    nodes += extra_nodes or []
    inits += extra_inits or []
    outputs += extra_outputs or []
    outputs = [o for o in outputs if o.name not in drop_outputs]
    graph = helper.make_graph(nodes, "toy_llm", inputs, outputs, initializer=inits)
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="rvdeploy-tests")
    model.ir_version = 8 if opset <= 18 else 10
    return model


def save_model(model: onnx.ModelProto, path: Path, data_files: list[str] | None = None, min_bytes: int = 256) -> Path:
    """Saves a model; with data_files, initializers of min_bytes or more go to those files (round robin)
    beside it, as real exports do (small tensors such as shapes stay inline)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not data_files:
        onnx.save_model(model, str(path))
        return path
    model = onnx.ModelProto.FromString(model.SerializeToString())
    offsets = {name: 0 for name in data_files}
    blobs: dict[str, bytearray] = {name: bytearray() for name in data_files}
    big = [t for t in model.graph.initializer if numpy_helper.to_array(t).nbytes >= min_bytes]
    for i, t in enumerate(big):
        loc = data_files[i % len(data_files)]
        raw = numpy_helper.to_array(t).tobytes()
        onnx.external_data_helper.set_external_data(t, location=loc, offset=offsets[loc], length=len(raw))
        t.ClearField("raw_data")
        for field in ("float_data", "int32_data", "int64_data", "double_data"):
            t.ClearField(field)
        t.data_location = TensorProto.EXTERNAL
        blobs[loc] += raw
        offsets[loc] += len(raw)
    for loc, data in blobs.items():
        (path.parent / loc).write_bytes(bytes(data))
    onnx.save_model(model, str(path))
    return path


def matmulnbits_node(name: str = "/model/layers.0/mlp/gate_proj/MatMulNBits") -> tuple[onnx.NodeProto, list]:
    """A com.microsoft MatMulNBits node (4-bit weights) on h, with its initializers."""
    k, n, block = HIDDEN, 8, 16
    inits = [
        numpy_helper.from_array(np.zeros((n, k // block, block // 2), dtype=np.uint8), "q4.weight"),
        numpy_helper.from_array(np.ones((n * (k // block),), dtype=np.float32), "q4.scales"),
    ]
    node = helper.make_node(
        "MatMulNBits",
        ["h", "q4.weight", "q4.scales"],
        ["q4.out"],
        domain="com.microsoft",
        K=k,
        N=n,
        bits=4,
        block_size=block,
        name=name,
    )
    return node, inits


def matmulbnb4_node(name: str = "/model/layers.0/mlp/gate_proj/MatMulBnb4") -> tuple[onnx.NodeProto, list]:
    """A com.microsoft MatMulBnb4 node (bitsandbytes 4-bit weights, still unsupported) on h, with its initializers."""
    k, n, block = HIDDEN, 8, 16
    inits = [
        numpy_helper.from_array(np.zeros((n * k // 2,), dtype=np.uint8), "bnb4.weight"),
        numpy_helper.from_array(np.ones((n * k // block,), dtype=np.float32), "bnb4.absmax"),
    ]
    node = helper.make_node(
        "MatMulBnb4",
        ["h", "bnb4.weight", "bnb4.absmax"],
        ["bnb4.out"],
        domain="com.microsoft",
        K=k,
        N=n,
        block_size=block,
        quant_type=1,
        name=name,
    )
    return node, inits
