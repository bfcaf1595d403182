"""Quantized models (issue 6): rvdeploy's own quantizer (--quantize int8|q4) and onnxruntime-quantized
exports (--variant int8), built for the host and checked against onnxruntime on the SAME quantized ONNX.

Tolerances (max |logit difference| over prefill + 3 decode steps, logits spanning about +-3 to +-11):
measured 1e-6 to 3.4e-6 on all four models, i.e. IREE's DynamicQuantizeLinear rounds like onnxruntime's and
the integer / 4-bit contractions are exact up to fp32 summation order. Asserted: int8 1e-3 (an activation
sitting exactly on a rounding tie of x/scale could move one int8 step in either runtime), q4 1e-4."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import DEMO, Q4_KERNEL_RTOL, TINY
from iree_host import greedy_logits
from ort_reference import greedy_tokens

from rvdeploy import api
from rvdeploy.q4_lookup import lookup_nodes
from rvdeploy.qgraph import normalize
from rvdeploy.quantize import dequantize_q4, quantize_file, quantize_int8_weight, quantize_q4_table, quantize_q4_weight
from rvdeploy.tokenizer import TextCodec

NEW_TOKENS = 32
SUPPORT = ("config.json", "tokenizer.json", "generation_config.json")
ATOL = {"int8": 1e-3, "q4": 1e-4}


def _copy_support(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in SUPPORT:
        if (src / name).is_file():
            shutil.copy(src / name, dst / name)


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """name -> (build kwargs, the quantized ONNX onnxruntime runs)."""
    root = tmp_path_factory.mktemp("quantized")
    out = {}
    for model, name in ((DEMO, "demo"), (TINY, "tiny")):
        for fmt in ("int8", "q4"):
            ref = root / f"{name}-{fmt}-ref" / "model.onnx"
            quantize_file(model / "model.onnx", ref, fmt)
            out[f"{name}-{fmt}"] = ({"model": str(model), "quantize": fmt}, ref, fmt)
    # an onnxruntime quantize_dynamic export (what onnx-community's model_int8.onnx is), through --variant int8
    from onnxruntime.quantization import QuantType, quantize_dynamic

    hub = root / "tiny-ort-int8"
    _copy_support(TINY, hub)
    quantize_dynamic(
        str(TINY / "model.onnx"), str(hub / "model_int8.onnx"), weight_type=QuantType.QInt8, per_channel=True
    )
    out["tiny-ort-int8"] = ({"model": str(hub), "variant": "int8"}, hub / "model_int8.onnx", "int8")
    # a hub-style q4 export: MatMulNBits with per-block uint8 zero points (onnxruntime's MatMulNBitsQuantizer
    # default, is_symmetric=False), through --variant q4
    q4hub = root / "tiny-q4-asym"
    _copy_support(TINY, q4hub)
    _asymmetric_q4(TINY / "model.onnx", q4hub / "model_q4.onnx")
    out["tiny-q4-asym"] = ({"model": str(q4hub), "variant": "q4"}, q4hub / "model_q4.onnx", "q4")
    return out


def _asymmetric_q4(src: Path, dst: Path, block: int = 32) -> None:
    """MatMulNBits as onnxruntime's asymmetric 4-bit quantizer writes it: scale = (max - min) / 15 per block,
    zero point round(-min / scale) in 0..15, two per byte (low nibble first), q = clamp(round(w / scale) + zp)."""
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        w = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) > 1 else None
        if w is None or len(w.dims) != 2 or w.dims[0] % block:
            nodes.append(node)
            continue
        a = numpy_helper.to_array(w)
        k, n = a.shape
        g = k // block
        b = a.T.reshape(n, g, block)
        lo, hi = np.minimum(b.min(axis=2), 0), np.maximum(b.max(axis=2), 0)
        scale = np.where(hi > lo, (hi - lo) / 15, 1.0).astype(np.float32)
        zp = np.clip(np.rint(-lo / scale), 0, 15).astype(np.uint8)
        q = np.clip(np.rint(b / scale[..., None]) + zp[..., None], 0, 15).astype(np.uint8)
        zpad = np.zeros((n, g + g % 2), np.uint8)
        zpad[:, :g] = zp
        names = [node.input[1] + s for s in (".q", ".s", ".zp")]
        model.graph.initializer.extend(
            [
                numpy_helper.from_array(q[..., 0::2] | (q[..., 1::2] << 4), names[0]),
                numpy_helper.from_array(scale.reshape(-1), names[1]),
                numpy_helper.from_array(zpad[:, 0::2] | (zpad[:, 1::2] << 4), names[2]),
            ]
        )
        nodes.append(
            helper.make_node(
                "MatMulNBits",
                [node.input[0], *names],
                list(node.output),
                name=node.name,
                domain="com.microsoft",
                K=k,
                N=n,
                bits=4,
                block_size=block,
            )
        )
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(dst))


@pytest.fixture(scope="module")
def build(cases, tmp_path_factory):
    root = tmp_path_factory.mktemp("qbundles")
    cache = {}

    def get(name: str, target: str = "host"):
        if (name, target) not in cache:
            kwargs, _, _ = cases[name]
            cache[(name, target)] = api.build(out=root / f"{name}-{target}", target=target, **kwargs).bundle
        return cache[(name, target)]

    return get


# ------------------------------------------------------------------------------------------------ fast


def test_int8_weights_per_channel_symmetric():
    w = np.random.default_rng(0).standard_normal((64, 24)).astype(np.float32)
    q, s = quantize_int8_weight(w)
    assert q.dtype == np.int8 and s.shape == (24,) and np.abs(q).max() == 127
    assert np.abs(q * s - w).max() <= s.max() / 2 + 1e-6


def test_q4_blocks_like_q4_0():
    w = np.random.default_rng(1).standard_normal((96, 40)).astype(np.float32)
    packed, d = quantize_q4_weight(w)
    assert packed.shape == (40, 3, 16) and packed.dtype == np.uint8 and d.shape == (40, 3)
    back = dequantize_q4(packed, d, 96)
    # half a step, except at the clipped end (q = 16 -> 15, as in Q4_0): one step at most, per block (plus the
    # f16 rounding of d, up to 2^-11 relative, taken 8 times at the ends)
    err = np.abs(back - w).T.reshape(40, 3, 32)
    assert (err <= np.abs(d)[..., None] * (1 + 2.0**-8)).all()
    assert np.median(err) <= np.median(np.abs(d)) / 2
    # scales are f16 values (what the RVV kernels store), and the block's largest-magnitude value is exact up to
    # that rounding (q = 0, Q4_0's d = max / -8)
    assert (d.astype(np.float16).astype(np.float32) == d).all()
    blocks = w.T.reshape(40, 3, 32)
    idx = np.abs(blocks).argmax(axis=2)
    assert np.allclose(
        np.take_along_axis(blocks, idx[..., None], 2),
        np.take_along_axis(back.T.reshape(40, 3, 32), idx[..., None], 2),
        rtol=2.0**-11,
        atol=0,
    )


@pytest.mark.parametrize("fmt", ["int8", "q4"])
def test_quantize_streams_an_external_data_export(tmp_path, fmt):
    """A source with every tensor in external data (Constant nodes' values too, as large exports have) quantizes
    to the same model as the inline source, and the output refers to no file of the source's."""
    from onnx import external_data_helper

    src = onnx.load(str(TINY / "model.onnx"))
    external_data_helper.convert_model_to_external_data(
        src, location="w.data", size_threshold=0, convert_attribute=True
    )
    (tmp_path / "src").mkdir()
    onnx.save(src, str(tmp_path / "src" / "model.onnx"))
    quantize_file(tmp_path / "src" / "model.onnx", tmp_path / "a" / "model.onnx", fmt)
    quantize_file(TINY / "model.onnx", tmp_path / "b" / "model.onnx", fmt)
    a, b = (onnx.load(str(tmp_path / x / "model.onnx"), load_external_data=False) for x in "ab")
    assert not [
        t.name for t in external_data_helper._get_all_tensors(a) if t.data_location == onnx.TensorProto.EXTERNAL
    ]
    assert a.SerializeToString() == b.SerializeToString()


def _run_lookup(table: str, arrays: dict, ids: np.ndarray, cols: int, q0_order: bool, zero=None) -> np.ndarray:
    """The ONNX nodes of rvdeploy.q4_lookup alone, run by onnxruntime."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    nodes, consts = lookup_nodes("t", table, "scales", "ids", "rows", cols, q0_order, zero)
    graph = helper.make_graph(
        nodes,
        "lookup",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, None])],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, [1, None, cols])],
        [numpy_helper.from_array(a, n) for n, a in arrays.items()] + consts,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"ids": ids})[0]


def test_q4_table_lookup_dequantizes_the_rows_asked_for():
    """--quantize q4's embedding table: 4-bit rows in Q4_0 order (byte j = values j and j + 16 of its block)
    with an f16 scale per block of 32; the lookup graph returns exactly those rows dequantized, within one
    quantization step of the fp32 table."""
    table = np.random.default_rng(2).standard_normal((40, 96)).astype(np.float32)
    q, d = quantize_q4_table(table)
    assert q.shape == (40, 3, 1, 16) and q.dtype == np.uint8 and d.shape == (40, 3, 1, 1) and d.dtype == np.float16
    nib = np.concatenate([q[:, :, 0] & 15, q[:, :, 0] >> 4], axis=-1).astype(np.float32)  # [40, 3, 32]
    want = ((nib - 8) * d[:, :, 0].astype(np.float32)).reshape(40, 96)
    ids = np.array([[0, 5, 39, 5]], np.int64)
    got = _run_lookup("table", {"table": q, "scales": d}, ids, 96, True)
    assert got.shape == (1, 4, 96)
    np.testing.assert_array_equal(got[0], want[ids[0]])
    err = np.abs(want - table).reshape(40, 3, 32)
    assert (err <= np.abs(d[:, :, 0].astype(np.float32)) * 1.01).all()


def test_q4_table_lookup_interleaved_with_zero_points():
    """The MatMulNBits / GatherBlockQuantized order (byte j = values 2j and 2j+1) with a zero point per block."""
    rng = np.random.default_rng(3)
    vals = rng.integers(0, 16, (10, 2, 32)).astype(np.uint8)
    packed = (vals[..., 0::2] | (vals[..., 1::2] << 4))[..., None]  # [10, 2, 16, 1]
    scales = rng.uniform(0.5, 2, (10, 2, 1, 1)).astype(np.float32)
    zero = rng.integers(0, 16, (10, 2, 1, 1)).astype(np.float32)
    want = ((vals - zero[..., 0]) * scales[..., 0]).reshape(10, 64)
    ids = np.array([[9, 0, 3]], np.int64)
    got = _run_lookup("table", {"table": packed, "scales": scales, "zp": zero}, ids, 64, False, "zp")
    np.testing.assert_allclose(got[0], want[ids[0]], rtol=1e-6)


@pytest.mark.parametrize("name", ["tiny-q4", "tiny-ort-int8", "tiny-q4-asym"])
def test_normalized_graph_is_the_same_model(cases, tmp_path, name):
    """What rvdeploy.qgraph hands to the importer (MatMulNBits as standard ONNX, weight zero points
    dropped) computes what the original does, in onnxruntime."""
    _, ref, _ = cases[name]
    path, done = normalize(ref, tmp_path)
    assert path != ref and any(done.values())
    assert not any(n.op_type == "MatMulNBits" for n in onnx.load(str(path)).graph.node)
    a, la = greedy_tokens(ref, [3, 7, 11], 8)
    b, lb = greedy_tokens(path, [3, 7, 11], 8)
    assert a == b
    np.testing.assert_allclose(np.array(la), np.array(lb), atol=1e-5)


# ------------------------------------------------------------------------------------------------ builds

HOST_CASES = ["demo-int8", "tiny-int8", "tiny-ort-int8", "demo-q4", "tiny-q4", "tiny-q4-asym"]


@pytest.mark.slow
@pytest.mark.parametrize("name", HOST_CASES)
def test_greedy_tokens_match_onnxruntime(cases, build, name):
    bundle = build(name)
    _, ref, _ = cases[name]
    ids = TextCodec(bundle.path / "tokenizer.json").encode("Beautiful is")
    expected, _ = greedy_tokens(ref, ids, NEW_TOKENS)
    result = api.run(bundle.path, board="local", prompt="Beautiful is", max_new_tokens=NEW_TOKENS)
    assert result.ids == expected


@pytest.mark.slow
@pytest.mark.parametrize("name", HOST_CASES)
def test_logits_close_to_onnxruntime(cases, build, name):
    bundle = build(name)
    _, ref, fmt = cases[name]
    prompt = [3, 7, 11, 13, 17, 19, 23]
    expected_ids, expected_logits = greedy_tokens(ref, prompt, 4)
    tokens, logits = greedy_logits(bundle, prompt, 3)
    assert tokens == expected_ids[:3]
    diff = max(float(np.abs(g - w).max()) for g, w in zip(logits, expected_logits))
    assert diff <= ATOL[fmt], f"{name}: max |logit difference| {diff:.2e} > {ATOL[fmt]}"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["demo-int8", "demo-q4"])
def test_quantized_demo_continues_the_zen(build, name):
    result = api.run(build(name).path, board="local", prompt="Beautiful is", max_new_tokens=16)
    assert result.text.startswith(" better than ugly.")


@pytest.mark.slow
def test_int8_matmuls_on_mmt4d_and_q4_weights_stay_4bit(build):
    """Host bundles: every integer weight matmul is an s8 x s8 -> s32 mmt4d on a microkernel; q4 weights
    are i4 in the parameter archive and in the dispatches that read them (dequantized in the matmul)."""
    report = api.inspect(build("demo-int8").path)
    rows = [r for r in report["dispatches"]["contractions"] if r["types"] == "i8*i8->i32"]
    assert rows and all(r["mmt4d"] and r["ukernel"] for r in rows)
    assert {r["entry"] for r in rows} >= {"prefill", "decode"}
    assert report["manifest"].pipeline.mmt4d.tiles["i8"].decode == "1x8x2"
    assert not report["manifest"].pipeline.mmt4d.not_lowered

    q4 = build("demo-q4")
    report = api.inspect(q4.path)
    i4 = [r for r in report["dispatches"]["contractions"] if "i4" in r["types"]]
    assert {r["entry"] for r in i4} >= {"prefill", "decode"}
    # every weight contraction reads the i4 weights itself (dequantized in the same op: nothing hoisted)
    rows = report["dispatches"]["contractions"]
    assert all("i4" in r["types"] for r in rows if r["op"] != "linalg.batch_matmul")
    assert not any(r["op"] == "linalg.mmt4d" for r in rows)
    packed = report["manifest"].pipeline.mmt4d.packed_weights
    assert packed and all(pw.key.endswith(".i4") for pw in packed)
    # 4 bits a weight: K*N/2 bytes of weights, their scales (f32 at most: K*N/8), the 4-bit embedding table
    # (512 x 64 / 2 bytes, f16 scales: V*H/16), archive header and alignment; an fp32 table (128 KiB) would not fit
    weights = sum(pw.k * pw.n for pw in packed)
    irpa = (q4.path / "model.irpa").stat().st_size
    assert irpa < weights // 2 + weights // 8 + 512 * 64 // 2 + 512 * 64 // 16 + 16384


@pytest.mark.slow
def test_riscv_int8_on_rvv_s8_microkernels(build):
    """`--quantize int8 --target rv64gcv-vlen256`: every integer matmul is an s8 x s8 -> s32 mmt4d on the project
    library's RVV s8 kernels (the default library): 7 x VLEN/4 x 1 tiles, 1 x 64 x 1 for decode at VLEN 256,
    and the dispatches call the RVV tile functions, not the portable C one."""
    bundle = build("demo-int8", "rv64gcv-vlen256")
    report = api.inspect(bundle.path)
    mm = report["manifest"].pipeline.mmt4d
    assert mm.tiles["i8"].to_dict() == {"prefill": "7x64x1", "decode": "1x64x1"}
    assert report["manifest"].pipeline.ukernels.library == "project"
    rows = [r for r in report["dispatches"]["contractions"] if r["types"] == "i8*i8->i32"]
    assert rows and all(r["mmt4d"] and r["ukernel"] and r["library"] == "project" for r in rows)
    assert {r["tile"] for r in rows if r["entry"] == "decode"} == {"1x64x1"}
    kernels = {r["kernel"] for r in rows}
    assert kernels and not any("generic" in k for k in kernels), kernels
    assert any("s8s8s32_1xN0x1_rvv_m8" in k for k in kernels) and any("s8s8s32_7xN0x1_rvv_m4" in k for k in kernels)
    assert not any(
        r["types"].startswith("f32") and r["op"] == "linalg.mmt4d" for r in report["dispatches"]["contractions"]
    )


@pytest.mark.slow
def test_int8_embedding_table_is_int8_and_stored_once(build):
    """--quantize int8 on a tied model (tiny-random): the embedding table is int8 rows with
    a scale each, looked up from lm_head's packed int8 copy: no fp32 table, no second int8 one."""
    import iree.runtime as rt

    bundle = build("tiny-int8")
    index = rt.ParameterIndex()
    index.load(str(bundle.path / "model.irpa"))
    sizes = {key: entry.length for key, entry in index.items()}
    import json

    config = json.loads((bundle.path / "config.json").read_text())
    vocab, hidden = config["vocab_size"], config["hidden_size"]
    assert not [k for k, n in sizes.items() if n >= vocab * hidden * 2], sizes  # no fp32 (or f16) table
    tables = [k for k, n in sizes.items() if n == vocab * hidden]
    assert len(tables) == 1 and tables[0].endswith(".T.mmt4d_8x2"), sizes


@pytest.mark.slow
def test_q4_embedding_table_is_4bit(cases, build):
    """--quantize q4 on a tied model (tiny-random): the quantized ONNX holds no fp32 [vocab, hidden] table (the
    lookup reads 4-bit rows, the lm_head its own MatMulNBits weight), and the bundle's parameters hold the table
    and the lm_head at 4 bits each, nothing of [vocab, hidden] at 16 or 32 bits."""
    import json

    import iree.runtime as rt

    _, ref, _ = cases["tiny-q4"]
    bundle = build("tiny-q4")
    config = json.loads((bundle.path / "config.json").read_text())
    vocab, hidden = config["vocab_size"], config["hidden_size"]
    model = onnx.load(str(ref))
    big = [(i.name, i.data_type) for i in model.graph.initializer if int(np.prod(i.dims)) * 2 >= vocab * hidden]
    assert big and all(t == onnx.TensorProto.UINT8 for _, t in big), big
    index = rt.ParameterIndex()
    index.load(str(bundle.path / "model.irpa"))
    sizes = {key: entry.length for key, entry in index.items()}
    assert not [k for k, n in sizes.items() if n >= vocab * hidden * 2], sizes
    assert len([k for k, n in sizes.items() if n == vocab * hidden // 2]) == 2, sizes  # table, lm_head


@pytest.mark.slow
def test_riscv_q4_tied_table_read_from_lm_head_panels(cases, build, tmp_path):
    """--quantize q4 on a tied model (tiny-random) for riscv64 RVV: the embedding table is the lm_head's own
    quantization, looked up from its 4-bit kernel panels, so [vocab, hidden] is stored once, at 4 bits (the host
    build stores it twice); prefill logits under qemu within Q4_KERNEL_RTOL of onnxruntime's at accuracy_level 4
    (a lookup reading the wrong panel bytes would be far off)."""
    import json

    import iree.runtime as rt

    _need_qemu()
    bundle = build("tiny-q4", "spacemit-k1")
    config = json.loads((bundle.path / "config.json").read_text())
    vocab, hidden = config["vocab_size"], config["hidden_size"]
    index = rt.ParameterIndex()
    index.load(str(bundle.path / "model.irpa"))
    sizes = {key: entry.length for key, entry in index.items()}
    four_bit = [k for k, n in sizes.items() if n == -(-vocab // 64) * 64 * hidden // 2]  # 4 bits: table, lm_head
    assert len(four_bit) == 1 and four_bit[0].endswith(".q4p64"), sizes  # the lm_head's panels only
    assert not [k for k, n in sizes.items() if n >= vocab * hidden * 2], sizes  # no f16/f32 table either
    assert not [k for k in sizes if k.endswith((".table", ".table_scales"))], sizes
    _, ref, _ = cases["tiny-q4"]
    prompt = [3, 7, 11, 13, 17]
    got = _qemu_prefill_logits(bundle, prompt, tmp_path)
    _, (want, *_) = greedy_tokens(_accuracy_level_4(ref, tmp_path / "level4.onnx"), prompt, 1)
    rel = float(np.abs(got - want).max() / np.abs(want).max())
    assert rel <= Q4_KERNEL_RTOL, f"max |logit difference| {rel:.2%} of the largest logit"


# Perplexity of the demo (trained on the Zen of Python) on that text, through the built host bundles: a quality
# check with no reference graph. Measured (the whole text, 230 tokens, one prefill call): fp32 1.0069, int8 1.0069,
# q4 1.0075. The demo has learnt its text by heart, so these margins are loose for it but catch a broken scale,
# table or block layout (any of which sends the perplexity far above 1.1).
PPL_MARGIN = {"int8": 1.01, "q4": 1.02}  # quantized perplexity <= margin x fp32's


@pytest.mark.slow
def test_perplexity_on_the_zen_text(build, tmp_path):
    import codecs
    import this  # noqa: F401  (prints the Zen once; its rot13 text is `this.s`)

    from iree_host import perplexity

    zen = codecs.decode(this.s, "rot13")
    fp32 = api.build(str(DEMO), out=tmp_path / "demo-fp32", target="host").bundle
    ids = TextCodec(fp32.path / "tokenizer.json").encode(zen)
    ppl = {"fp32": perplexity(fp32, ids)}
    for fmt in ("int8", "q4"):
        ppl[fmt] = perplexity(build(f"demo-{fmt}"), ids)
    print("perplexity on the Zen text:", {k: round(v, 4) for k, v in ppl.items()}, f"({len(ids)} tokens)")
    assert ppl["fp32"] < 2.0, ppl  # the demo knows its text
    for fmt, margin in PPL_MARGIN.items():
        assert ppl[fmt] <= margin * ppl["fp32"], (fmt, ppl)


# ------------------------------------------------------------------------------------------------ riscv64 q4
# On riscv64 RVV targets every q4 contraction runs on the RVV 4-bit kernels (ukernels/rvd_q4.c, rvdeploy.q4kernel):
# activations quantized to int8 per block of 32 (Q8_0), integer products with the 4-bit weights, f16 block
# scales. Logits are compared with conftest's Q4_KERNEL_RTOL (prompt 3 7 11 13 17 19 23 on the demo).


def _accuracy_level_4(ref: Path, out: Path) -> Path:
    """The reference ONNX with accuracy_level = 4 on every MatMulNBits (onnxruntime then quantizes activations)."""
    model = onnx.load(str(ref))
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            node.attribute.append(onnx.helper.make_attribute("accuracy_level", 4))
    onnx.save(model, str(out))
    return out


def _need_qemu():
    from conftest import system_part_missing

    if shutil.which("qemu-riscv64") is None:
        system_part_missing("needs qemu-riscv64 (scripts/setup.sh installs it)")


def _qemu_prefill_logits(bundle, ids: list[int], tmp_path: Path) -> np.ndarray:
    """prefill's last-position logits from the riscv64 bundle's own runtime under qemu-user (its launcher)."""
    import os
    import subprocess

    from rvdeploy.targets import get_target

    out = tmp_path / "logits.npy"
    env = {
        **os.environ,
        "RVDEPLOY_RUN_PREFIX": shutil.which("qemu-riscv64"),
        "QEMU_CPU": get_target(bundle.manifest.target.name).qemu_cpu,
    }
    args = [
        "--module=model.vmfb",
        "--parameters=model=model.irpa",
        "--device=local-sync",
        "--function=prefill",
        f"--input=1x{len(ids)}xi64={','.join(map(str, ids))}",
        "--input=0",
        f"--output=@{out}",
    ]
    proc = subprocess.run(
        ["sh", "launcher.sh", "run", "iree-run-module", *args], cwd=bundle.path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-500:]
    return np.load(out)[0, -1].astype(np.float64)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["rv64gcv-vlen128", "spacemit-k1", "rv64gcv-vlen512"])
def test_riscv_q4_on_rvv_4bit_kernels(cases, build, tmp_path, target):
    """`--quantize q4` for riscv64 RVV: every 4-bit contraction on the kernels (N0 = VLEN/4 panels; f16 scales
    by integer bit moves at VLEN 128/512, by vfwcvt with spacemit-k1's Zvfh), weights stored once as 4-bit
    panels + f16 scales (4.5 bits a weight, no f32 copy), greedy tokens equal onnxruntime's at accuracy_level 4
    and at f32, under qemu."""
    _need_qemu()
    bundle = build("demo-q4", target)
    mm = bundle.manifest.pipeline.mmt4d
    assert mm.q4_contractions > 0 and mm.q4_kernel_contractions == mm.q4_contractions
    vlen = {"rv64gcv-vlen128": 128, "spacemit-k1": 256, "rv64gcv-vlen512": 512}[target]
    weights = [pw for pw in mm.packed_weights if pw.key.endswith(f".q4p{vlen // 4}")]
    scales = [pw for pw in mm.packed_weights if pw.key.endswith(f".q4s{vlen // 4}")]
    assert weights and len(weights) == len(scales) and len(weights) + len(scales) == len(mm.packed_weights)
    # 4 bits a weight and an f16 scale per 32 (N padded to whole panels: at VLEN 512 the demo's N = 32 and 64
    # fill half a panel), plus the fp32 embedding table (+ archive header and alignment)
    padded = [int(np.prod(pw.packed_shape)) for pw in weights]
    assert padded == [pw.k * -(-pw.n // (vlen // 4)) * (vlen // 4) // 2 for pw in weights]
    irpa = (bundle.path / "model.irpa").stat().st_size
    assert irpa < 512 * 64 * 4 + sum(padded) * (1 + 1 / 8) + 16384
    _, ref, _ = cases["demo-q4"]
    ids = TextCodec(bundle.path / "tokenizer.json").encode("Beautiful is")
    want, _ = greedy_tokens(ref, ids, NEW_TOKENS)
    want4, _ = greedy_tokens(_accuracy_level_4(ref, tmp_path / "level4.onnx"), ids, NEW_TOKENS)
    result = api.run(bundle.path, board="qemu", prompt="Beautiful is", max_new_tokens=NEW_TOKENS)
    assert result.ids == want4 == want
    assert result.text.startswith(" better than ugly.")


@pytest.mark.slow
def test_riscv_q4_kernel_logits_and_perplexity(cases, build, tmp_path):
    """The 4-bit kernels' numerics on spacemit-k1 under qemu: prefill logits within Q4_KERNEL_RTOL of
    onnxruntime's (f32 and accuracy_level 4), and the perplexity of the Zen text's first 40 tokens (each
    predicted from a prefill of its prefix) within the q4 margin of the fp32 host bundle's on the same tokens."""
    import codecs
    import this  # noqa: F401

    from iree_host import perplexity

    _need_qemu()
    bundle = build("demo-q4", "spacemit-k1")
    _, ref, _ = cases["demo-q4"]
    prompt = [3, 7, 11, 13, 17, 19, 23]
    got = _qemu_prefill_logits(bundle, prompt, tmp_path)
    for onnx_path in (ref, _accuracy_level_4(ref, tmp_path / "level4.onnx")):
        _, (want, *_) = greedy_tokens(onnx_path, prompt, 1)
        rel = float(np.abs(got - want).max() / np.abs(want).max())
        assert rel <= Q4_KERNEL_RTOL, f"{onnx_path.name}: max |logit difference| {rel:.2%} of the largest logit"

    ids = TextCodec(bundle.path / "tokenizer.json").encode(codecs.decode(this.s, "rot13"))[:40]
    rows = np.stack([_qemu_prefill_logits(bundle, ids[:i], tmp_path) for i in range(1, len(ids))])
    shifted = rows - rows.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    ppl_q4 = float(np.exp(-logp[np.arange(len(ids) - 1), ids[1:]].mean()))
    fp32 = api.build(str(DEMO), out=tmp_path / "demo-fp32", target="host").bundle
    ppl_fp32 = perplexity(fp32, ids)
    print(f"perplexity of the Zen's first {len(ids)} tokens: fp32 {ppl_fp32:.4f}, q4 on the RVV kernels {ppl_q4:.4f}")
    assert ppl_fp32 < 2.0
    assert ppl_q4 <= PPL_MARGIN["q4"] * ppl_fp32, (ppl_q4, ppl_fp32)
