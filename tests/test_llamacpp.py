"""rvdeploy bench --compare llama.cpp: llama.cpp cross-built for the board's ISA from the llama-cpp-python
sdist, the same weights converted to GGUF by llama.cpp's own converter, llama-bench run under qemu
(wall time) and under the instruction-counting qemu (--cost), beside the bundle's own IREE rows (and alone
when the bundle has no riscv64 IREE runtime).

The model is tests/fixtures/tiny-hf (benchmarks/make_llama.py tiny): an ONNX export and the HF checkpoint
of the same random weights. The llama.cpp build (about 3 minutes) and the GGUFs are cached."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from cli_run import one_line_error, rvdeploy
from conftest import DEMO, system_part_missing

from rvdeploy.errors import RvdeployError
from rvdeploy.peers import gguf, llamacpp_build
from rvdeploy.targets import get_target

TINY_HF = Path(__file__).resolve().parent / "fixtures" / "tiny-hf"


def test_inline_asm_gets_the_vector_policy(tmp_path):
    src = tmp_path / "ggml" / "src" / "ggml-cpu" / "arch" / "riscv"
    src.mkdir(parents=True)
    (src / "q.c").write_text(
        'asm("vsetivli zero, 16, e8, m1\\n\\t"\n    "vsetvli zero, %[vl128], e8, m8\\n\\t"\n'
        '    "vsetvli t0, a0, e32, mf2, ta, ma\\n\\t"\n    "vle8.v v0, (a0)\\n\\t");\n'
    )
    assert llamacpp_build.patch_inline_asm(tmp_path) == 2
    text = (src / "q.c").read_text()
    assert "vsetivli zero, 16, e8, m1, tu, mu\\n" in text
    assert "vsetvli zero, %[vl128], e8, m8, tu, mu\\n" in text
    assert "e32, mf2, ta, ma\\n" in text and "ta, ma, tu" not in text  # an explicit policy is left alone
    assert llamacpp_build.patch_inline_asm(tmp_path) == 0


def test_build_options_follow_the_target_isa():
    k1 = llamacpp_build.cmake_options(get_target("spacemit-k1"))
    assert {"-DGGML_RVV=ON", "-DGGML_RV_ZFH=ON", "-DGGML_RV_ZVFH=ON", "-DGGML_RV_ZICBOP=OFF"} <= set(k1)
    v128 = llamacpp_build.cmake_options(get_target("rv64gcv-vlen128"))
    assert {"-DGGML_RVV=ON", "-DGGML_RV_ZFH=OFF", "-DGGML_RV_ZVFH=OFF"} <= set(v128)
    assert "-DGGML_RVV=OFF" in llamacpp_build.cmake_options(get_target("rv64gc"))
    # VLEN does not split builds (ggml reads it at run time); the ISA does
    assert (
        llamacpp_build.build_key(get_target("rv64gcv-vlen128"))
        == llamacpp_build.build_key(get_target("rv64gcv-vlen512"))
        == "riscv64-rvv"
    )
    assert llamacpp_build.build_key(get_target("spacemit-k1")) == "riscv64-rvv-zfh-zvfh"
    assert "-DGGML_NATIVE=OFF" in k1  # the target's ISA, not the build machine's
    host = llamacpp_build.cmake_options(get_target("host"))  # --board local: this machine's CPU, like IREE's
    assert "-DGGML_NATIVE=ON" in host and not any(o.startswith("-DGGML_RV") for o in host)
    assert llamacpp_build.build_key(get_target("host")).startswith("host-")


def test_matching_gguf_type_follows_the_bundle_precision():
    from types import SimpleNamespace

    from rvdeploy.bundle.manifest import Graph, Model, Quantization

    def bundle(variant, quantized=None):
        model = Model(
            "m",
            variant,
            "dir",
            Graph(("input_ids",), ("logits",), 1, 1, 1),
            quantized=Quantization(quantized) if quantized else None,
        )
        return SimpleNamespace(manifest=SimpleNamespace(model=model))

    assert gguf.matching_type(bundle(variant="fp32")) == "f32"
    assert gguf.matching_type(bundle(variant="fp16")) == "f16"
    assert gguf.matching_type(bundle(variant="int8")) == "q8_0"  # an int8 ONNX export
    assert gguf.matching_type(bundle(variant="fp32", quantized="q4")) == "q4_0"  # build --quantize q4
    assert gguf.matching_type(bundle(variant="fp32", quantized="int8")) == "q8_0"
    with pytest.raises(RvdeployError, match="q4f16"):
        gguf.matching_type(bundle(variant="q4f16"))


def test_gguf_type_must_be_known():
    with pytest.raises(RvdeployError, match="q4_k"):
        gguf.check_type("q4_k")
    assert gguf.check_type("Q4_0") == "q4_0"


@pytest.mark.slow
def test_onnx_only_model_asks_for_hf_weights(built):
    demo = built(str(DEMO), "rv64gcv-vlen256")
    proc = rvdeploy("bench", str(demo.path), "--board", "qemu", "--compare", "llama.cpp")
    one_line_error(proc, "ONNX-only", "--hf-model")
    proc = rvdeploy("bench", str(demo.path), "--board", "qemu", "--compare", "llama.cpp", "--hf-model", str(DEMO))
    one_line_error(proc, "--hf-model", "no config.json and *.safetensors")


@pytest.mark.slow
def test_hf_checkpoint_from_the_same_hub_repo(tmp_path, monkeypatch):
    """A bundle built from a hub repo finds the checkpoint in the same repo through huggingface_hub (a local
    cache in the hub's layout, offline); an onnx-community style repo (ONNX only) is refused saying so."""
    from hubcache_repo import add_snapshot, files_from_dir

    from rvdeploy import api

    cache = tmp_path / "hub"
    files = files_from_dir(TINY_HF)
    files["onnx/model.onnx"] = files.pop("model.onnx")  # the onnx-community layout, plus the checkpoint
    add_snapshot(cache, "rvd-test/tiny-hf", files)
    add_snapshot(cache, "rvd-test/tiny-onnx-only", {k: v for k, v in files.items() if not k.endswith(".safetensors")})
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with_weights = api.build("rvd-test/tiny-hf", out=tmp_path / "a", target="host", pipeline="baseline").bundle
    found = gguf.hf_checkpoint(with_weights)
    assert (found / "model.safetensors").read_bytes() == (TINY_HF / "model.safetensors").read_bytes()
    assert found.parent.parent.name == "models--rvd-test--tiny-hf"  # the snapshot, not a copy
    onnx_only = api.build("rvd-test/tiny-onnx-only", out=tmp_path / "b", target="host", pipeline="baseline").bundle
    with pytest.raises(RvdeployError, match="rvd-test/tiny-onnx-only is an ONNX-only model"):
        gguf.hf_checkpoint(onnx_only)


@pytest.mark.slow
def test_model_dir_given_relative_and_looked_up_elsewhere(tmp_path):
    import subprocess
    import sys

    root = TINY_HF.parents[2]
    out = tmp_path / "rel"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "rvdeploy",
            "build",
            "--model",
            "tests/fixtures/tiny-hf",
            "--target",
            "rv64gcv-vlen256",
            "--pipeline",
            "baseline",
            "-o",
            str(out),
        ],
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    elsewhere = subprocess.run(
        [sys.executable, "-m", "rvdeploy", "bench", str(out), "--board", "qemu", "--compare", "llama.cpp"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    one_line_error(elsewhere, "tests/fixtures/tiny-hf, the model", "is not here", "--hf-model DIR")


# ---- the real thing: build, convert, run under qemu ------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_k1(built):
    return built(str(TINY_HF), "spacemit-k1")


@pytest.fixture(scope="module")
def tiny_k1_bare(built):
    return built(str(TINY_HF), "spacemit-k1", no_runtime=True)


@pytest.fixture(scope="module")
def tools():
    return llamacpp_build.build("spacemit-k1")


@pytest.mark.slow
def test_tools_are_static_riscv64_executables(tools):
    for name in llamacpp_build.TOOLS:
        elf = (tools / name).read_bytes()[:65536]
        assert elf[:4] == b"\x7fELF" and int.from_bytes(elf[18:20], "little") == 243  # EM_RISCV
        phoff, phentsize, phnum = (
            int.from_bytes(elf[32:40], "little"),
            int.from_bytes(elf[54:56], "little"),
            int.from_bytes(elf[56:58], "little"),
        )
        types = [int.from_bytes(elf[phoff + i * phentsize : phoff + i * phentsize + 4], "little") for i in range(phnum)]
        assert 3 not in types  # no PT_INTERP: static, runs on any riscv64 Linux without its libraries
        assert os.access(tools / name, os.X_OK)


@pytest.mark.slow
def test_gguf_holds_the_same_weights(tools):
    """The f32 GGUF from llama.cpp's converter carries the checkpoint's tensors unchanged (read back with
    llama.cpp's own gguf-py), and q4_0 comes out of llama-quantize smaller."""
    import sys

    from safetensors.numpy import load_file

    f32 = gguf.convert(TINY_HF, "f32", get_target("spacemit-k1"))
    q4 = gguf.convert(TINY_HF, "q4_0", get_target("spacemit-k1"))
    assert gguf.convert(TINY_HF, "f32", get_target("spacemit-k1")) == f32  # cached
    sys.path.insert(0, str(llamacpp_build.source_dir() / "gguf-py"))
    try:
        from gguf import GGUFReader
    finally:
        sys.path.pop(0)
    reader = GGUFReader(str(f32))
    tensors = {t.name: t for t in reader.tensors}
    hf = load_file(str(TINY_HF / "model.safetensors"))
    cfg = json.loads((TINY_HF / "config.json").read_text())
    assert sum(1 for n in tensors if n.startswith("blk.")) == 9 * cfg["num_hidden_layers"]
    emb = np.asarray(tensors["token_embd.weight"].data).reshape(cfg["vocab_size"], cfg["hidden_size"])
    np.testing.assert_array_equal(emb, hf["model.embed_tokens.weight"])
    down = np.asarray(tensors["blk.1.ffn_down.weight"].data).reshape(cfg["hidden_size"], cfg["intermediate_size"])
    np.testing.assert_array_equal(down, hf["model.layers.1.mlp.down_proj.weight"])
    assert q4.stat().st_size < f32.stat().st_size / 3


@pytest.mark.slow
def test_bench_llama_cpp_on_qemu_without_an_iree_runtime(tiny_k1_bare, tiny_k1, tools, tmp_path):
    png = tmp_path / "llama.png"
    proc = rvdeploy(
        "bench",
        str(tiny_k1_bare.path),
        "--board",
        "qemu",
        "--compare",
        "llama.cpp",
        "--gguf-type",
        "f32",
        "--gguf-type",
        "q8_0",
        "-p",
        "8",
        "-n",
        "4",
        "-r",
        "2",
        "--json",
        "--plot",
        str(png),
    )
    assert proc.returncode == 0, proc.stderr
    assert "IREE rows skipped" in proc.stderr and "no riscv64 IREE runtime" in proc.stderr
    doc = json.loads(proc.stdout)
    got = {(r["pipeline"], r["test"]): r for r in doc["results"]}
    assert set(got) == {(f"llama.cpp {t}", test) for t in ("F32", "Q8_0") for test in ("pp8", "tg4")}
    for r in got.values():
        assert r["t/s"] > 0 and r["stddev"] >= 0 and len(r["samples"]) == 2
        assert r["peak_rss_bytes"] > 1 << 20  # qemu's process, here
    labels = {b["pipeline"]: b for b in doc["bundles"]}
    cfg = json.loads((TINY_HF / "config.json").read_text())
    h, v, i, L = cfg["hidden_size"], cfg["vocab_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    kv = cfg["num_key_value_heads"] * cfg["head_dim"]
    params = v * h + L * (2 * h * h + 2 * h * kv + 3 * h * i + 2 * h) + h  # tied: the embedding once
    assert labels["llama.cpp F32"]["params"] == params
    assert labels["llama.cpp Q8_0"]["size_bytes"] < labels["llama.cpp F32"]["size_bytes"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    # with the bundle's runtime: the table names both backends (IREE's rows from the same board) and t/s +- stddev
    proc = rvdeploy(
        "bench", str(tiny_k1.path), "--board", "qemu", "--compare", "llama.cpp", "-p", "8", "-n", "4", "-r", "1"
    )
    assert proc.returncode == 0, proc.stderr
    for word in ("llama.cpp F32", "IREE mmt4d", "pp8", "tg4", "±"):
        assert word in proc.stdout


@pytest.mark.slow
def test_cost_of_llama_cpp_per_token(tiny_k1, tools):
    from rvdeploy import qemu_cost

    try:
        qemu_cost.plugin_qemu()
    except RvdeployError as exc:
        system_part_missing(str(exc))
    args = (
        "bench",
        str(tiny_k1.path),
        "--board",
        "qemu",
        "--compare",
        "llama.cpp",
        "--cost",
        "-p",
        "17",
        "-n",
        "16",
        "--json",
    )
    first = rvdeploy(*args)
    assert first.returncode == 0, first.stderr
    mine = json.loads(first.stdout)["cost"]["mmt4d"]  # the bundle's module, counted in the same run
    assert mine["per_generated_token"]["instructions"] > mine["per_generated_token"]["vector_instructions"] > 0
    c = json.loads(first.stdout)["cost"]["llama.cpp F32"]
    cfg = json.loads((TINY_HF / "config.json").read_text())
    h, v, i, L = cfg["hidden_size"], cfg["vocab_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    kv = cfg["num_key_value_heads"] * cfg["head_dim"]
    macs = L * (2 * h * h + 2 * h * kv + 3 * h * i) + h * v  # per token, projections + lm_head
    lanes = 256 // 32  # spacemit-k1: VLEN 256, f32
    for phase in ("per_prompt_token", "per_generated_token"):
        # every MAC is executed, at most lanes x LMUL 8 per vector instruction: a floor no miscount passes
        assert c[phase]["vector_instructions"] > macs / lanes / 8
        assert c[phase]["instructions"] > c[phase]["vector_instructions"] > 0
        # ggml's f32 dot products run at LMUL > 1 (lmul-weighted counts are in m1 units: 1/8 <= LMUL <= 8)
        assert (
            c[phase]["vector_instructions"] / 8
            <= c[phase]["vector_lmul_weighted"]
            <= 8 * c[phase]["vector_instructions"]
        )
    assert c["peak_rss_bytes"] > 1 << 20
    again = json.loads(rvdeploy(*args).stdout)["cost"]["llama.cpp F32"]
    for phase in ("per_prompt_token", "per_generated_token"):
        # one thread: vector counts repeat exactly; whole runs vary by up to ~0.1 % in scalar instructions
        # (llama-bench's timing code), a few % of a per-token difference on this 0.1M-parameter model
        # (0.04 % on the 16M benchmark model)
        assert again[phase]["vector_instructions"] == c[phase]["vector_instructions"]
        assert again[phase]["instructions"] == pytest.approx(c[phase]["instructions"], rel=8e-2)


# ---- --board local: llama.cpp built for this machine ---------------------------------------------------------
@pytest.fixture(scope="module")
def host_tools():
    return llamacpp_build.build("host")


def _piece_bytes(sp, token: int) -> bytes:
    """What llama.cpp prints for a SentencePiece token: byte-fallback pieces as the raw byte, U+2581 as space."""
    import re

    piece = sp.id_to_piece(token)
    m = re.fullmatch(r"<0x([0-9A-F]{2})>", piece)
    return bytes([int(m.group(1), 16)]) if m else piece.replace("\u2581", " ").encode()


@pytest.mark.slow
def test_llama_cpp_greedy_matches_onnxruntime(host_tools):
    """The GGUF is the same model: llama.cpp's greedy continuation (f32 weights, f32 KV cache) is, token for
    token, what onnxruntime computes from the ONNX export of the same checkpoint."""
    import subprocess

    import sentencepiece as spm
    from ort_reference import greedy_tokens

    f32 = gguf.convert(TINY_HF, "f32", get_target("host"))
    sp = spm.SentencePieceProcessor(model_file=str(TINY_HF / "tokenizer.model"))
    prompt = "Beautiful is better than"
    want, _ = greedy_tokens(TINY_HF / "model.onnx", [sp.bos_id(), *sp.encode(prompt)], 16)
    expected = b"".join(_piece_bytes(sp, t) for t in want) + b"\n\n"  # llama-completion ends with two newlines
    cmd = [
        str(host_tools / "llama-completion"),
        "-m",
        str(f32),
        "-p",
        prompt,
        "-n",
        "16",
        "--temp",
        "0",
        "-ctk",
        "f32",
        "-ctv",
        "f32",
        "-no-cnv",
        "--no-display-prompt",
        "--no-warmup",
        "-t",
        "1",
    ]
    # llama-completion prints the text through llama.cpp's asynchronous log thread, which loses the tail of it in
    # about one run in four at exit (seen here 9 times in 30); every run must agree as far as it got, and one
    # run must be complete
    outputs = []
    for _ in range(10):
        proc = subprocess.run(cmd, capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stderr[-500:]
        assert expected.startswith(proc.stdout), (proc.stdout, expected)
        outputs.append(proc.stdout)
        if proc.stdout == expected:
            break
    assert expected in outputs, outputs


@pytest.mark.slow
def test_bench_local_iree_next_to_llama_cpp(built, host_tools):
    bundle = built(str(TINY_HF))
    proc = rvdeploy(
        "bench",
        str(bundle.path),
        "--board",
        "local",
        "--compare",
        "llama.cpp",
        "-p",
        "8",
        "-n",
        "4",
        "-r",
        "3",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    got = {(r["pipeline"], r["test"]): r for r in doc["results"]}
    assert set(got) == {(p, t) for p in ("mmt4d", "llama.cpp F32") for t in ("pp8", "tg4")}
    for r in got.values():
        assert r["t/s"] > 0 and len(r["samples"]) == 3 and r["peak_rss_bytes"] > 1 << 20
    assert doc["ratios"]["tg4"]["llama.cpp F32"] == pytest.approx(
        got[("mmt4d", "tg4")]["t/s"] / got[("llama.cpp F32", "tg4")]["t/s"], rel=1e-2
    )
    one_line_error(
        rvdeploy("bench", str(bundle.path), "--board", "local", "--compare", "llama.cpp", "--cost"),
        "--cost",
        "--board qemu",
    )
