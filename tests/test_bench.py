"""rvdeploy bench: pp/tg on the local board for both pipelines (iree-benchmark-module), the estimate against a
hand calculation, the plot, and the emulated-cost plumbing (plugin-capable qemu, instruction counts)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from cli_run import one_line_error, rvdeploy
from conftest import DEMO, system_part_missing

from rvdeploy import api, qemu_cost
from rvdeploy.bench import cost, measure
from rvdeploy.bench.baseline import baseline_bundle
from rvdeploy.bundle import Bundle
from rvdeploy.errors import RvdeployError


@pytest.fixture(scope="module")
def pair(built):
    return built(str(DEMO)), built(str(DEMO), pipeline="baseline")


def test_measuring_args_follow_the_manifest(pair):
    """The runner measures what run executes: the module's inputs (ids and the cached count when it keeps its KV
    cache, else the graph's roles and the cache tensors), greedy, no EOS stop."""
    m = pair[0].manifest
    args = measure.measuring_args(m, 4, 3)
    assert "--inputs=ids,past" in args and "--kv_count=0" in args and "--kv_heads=2" in args
    growing = measure.measuring_args(replace(m, kv_cache=None), 4, 3)  # a module that takes the cache tensors
    assert "--inputs=ids,mask,pos" in growing and "--kv_count=4" in growing
    assert "--head_dim=16" in args and "--prompt=1,2,3,4" in args and "--max_new_tokens=3" in args
    assert "--temperature=0.0" in args and not any(a.startswith("--eos") for a in args)
    assert args[-1] == "--device=local-sync" and sum(a.startswith("--device") for a in args) == 1
    assert measure.measuring_args(m, 4, 3, threads=3)[-2:] == [
        "--device=local-task",
        "--task_topology_max_group_count=3",
    ]


def test_bench_local_both_pipelines_json(pair, tmp_path):
    mm, base = pair
    png = tmp_path / "bench.png"
    proc = rvdeploy(
        "bench",
        str(mm.path),
        "--board",
        "local",
        "--compare",
        "baseline",
        "--baseline-bundle",
        str(base.path),
        "-p",
        "16",
        "-n",
        "8",
        "-r",
        "3",
        "--json",
        "--plot",
        str(png),
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    got = {(r["pipeline"], r["test"]): r for r in doc["results"]}
    assert set(got) == {("mmt4d", "pp16"), ("mmt4d", "tg8"), ("baseline", "pp16"), ("baseline", "tg8")}
    for r in got.values():
        assert r["t/s"] > 0 and r["stddev"] >= 0 and len(r["samples"]) == 3
        assert r["peak_rss_bytes"] > 1 << 20  # iree-benchmark-module's own, not this Python's
    assert set(doc["ratios"]) == {"pp16", "tg8"}
    assert doc["ratios"]["tg8"] == {
        "baseline": pytest.approx(got[("mmt4d", "tg8")]["t/s"] / got[("baseline", "tg8")]["t/s"], rel=1e-2)
    }
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_bench_table_two_threads(pair):
    proc = rvdeploy("bench", str(pair[0].path), "--board", "local", "-p", "8", "-r", "2", "--threads", "2")
    assert proc.returncode == 0, proc.stderr
    for word in ("model", "params", "IREE mmt4d", "pp8", "tg32", "±"):
        assert word in proc.stdout


def test_wrong_baseline_bundle_refused(pair):
    mm = Bundle.open(pair[0].path)
    with pytest.raises(RvdeployError, match="not a baseline build"):
        baseline_bundle(mm, pair[0].path, build=api.build)
    with pytest.raises(RvdeployError, match="itself a baseline"):
        baseline_bundle(Bundle.open(pair[1].path), build=api.build)


def test_estimate_spacemit_k1_matches_hand_calculation(pair):
    # the demo: hidden 64, 2 layers, 4 heads, 2 KV heads, head_dim 16, MLP 192, vocab 512, f32, untied
    per_layer = 64 * 64 + 64 * 32 + 64 * 32 + 64 * 64 + 3 * 64 * 192  # q, k, v, o, gate, up, down = 49152
    weights = 2 * per_layer + 64 * 512  # + lm_head = 131072 multiply-adds per token
    p = 64
    attention = 2 * 2 * 4 * 16 * p  # QK^T and AV, 2 layers x 4 heads x head_dim 16 x context 64 = 16384
    flops = 2 * (weights + attention)  # 294912
    bytes_ = 4 * weights + 4 * 64 + 2 * 2 * 2 * 16 * p * 4  # weights, one embedding row, K and V read = 557312
    pp_max = 8 * 32.0e9 / flops  # K1: 8 cores x 32 GFLOP/s f32 = 868055.6 t/s
    tg_max = 10.7e9 / bytes_  # 10.7 GB/s = 19199.3 t/s
    for b in pair:  # the mmt4d bundle counts from its packed weights, the baseline from config.json
        proc = rvdeploy("bench", str(b.path), "--estimate", "--target", "spacemit-k1", "-p", "64", "--json")
        assert proc.returncode == 0, proc.stderr
        e = json.loads(proc.stdout)["estimate"]
        assert (e["flops_per_token"], e["bytes_per_token"]) == (flops, bytes_)
        assert e["pp_max_tokens_per_s"] == pytest.approx(pp_max) and round(pp_max, 1) == 868055.6
        assert e["tg_max_tokens_per_s"] == pytest.approx(tg_max) and round(tg_max, 1) == 19199.3
    proc = rvdeploy("bench", str(pair[0].path), "--estimate", "--target", "spacemit-k1")
    assert proc.returncode == 0 and "868,055.6" in proc.stdout and "19,199.3" in proc.stdout


def test_estimate_needs_target_figures(pair):
    proc = rvdeploy("bench", str(pair[0].path), "--estimate")
    assert proc.returncode == 1 and "--target" in proc.stderr


def test_cost_needs_qemu_board(pair):
    proc = rvdeploy("bench", str(pair[0].path), "--board", "local", "--cost")
    assert proc.returncode == 1 and "--board qemu" in proc.stderr


def test_compare_llama_cpp_needs_hf_weights(pair):
    proc = rvdeploy("bench", str(pair[0].path), "--board", "local", "--compare", "llama.cpp")
    one_line_error(proc, "demo is an ONNX-only model", "--hf-model")


# ---- emulated cost: needs the plugin-capable qemu built by scripts/build_qemu_plugins.sh (setup.sh) ----------
@pytest.fixture
def plugin_qemu():
    try:
        return qemu_cost.plugin_qemu()
    except RvdeployError as exc:
        system_part_missing(str(exc))


needs_plugin_qemu = pytest.mark.usefixtures("plugin_qemu")


@needs_plugin_qemu
def test_plugin_counts_a_known_loop_exactly():
    exe = qemu_cost.build_countloop()
    cpu = "rv64,v=true,vlen=256,elen=64,vext_spec=v1.0"
    a = cost.count_program([str(exe), "1000"], cpu)
    b = cost.count_program([str(exe), "3000"], cpu)
    # the loop is vadd.vv; addi; bnez: exactly 3 instructions, 1 of them vector, per iteration
    assert b["instructions"] - a["instructions"] == 3 * 2000
    assert b["vector_instructions"] - a["vector_instructions"] == 2000
    assert b["vector_lmul_weighted"] - a["vector_lmul_weighted"] == 2000  # LMUL 1
    assert cost.count_program([str(exe), "1000"], cpu) == a  # single-threaded: repeatable
    # the same loop at LMUL 4: the vsetivli sits before the loop block, so the weight is read at run time
    a4 = cost.count_program([str(exe), "1000", "m4"], cpu)
    b4 = cost.count_program([str(exe), "3000", "m4"], cpu)
    assert b4["vector_instructions"] - a4["vector_instructions"] == 2000
    assert b4["vector_lmul_weighted"] - a4["vector_lmul_weighted"] == 4 * 2000
    assert a4["vsetvl"] == 0


def test_by_difference():
    def c(i, v):
        return {"instructions": i, "vector_instructions": v, "vector_lmul_weighted": 2 * v}

    got = cost.by_difference(c(100, 10), c(730, 73), c(3930, 393), 64, 32)
    assert got["per_prompt_token"] == {"instructions": 10, "vector_instructions": 1, "vector_lmul_weighted": 2}
    assert got["per_generated_token"] == {"instructions": 100, "vector_instructions": 10, "vector_lmul_weighted": 20}


@pytest.mark.slow
@needs_plugin_qemu
def test_cost_on_riscv64_bundle_without_runtime_says_so(built):
    bare = built(str(DEMO), "rv64gcv-vlen256", no_runtime=True)
    proc = rvdeploy("bench", str(bare.path), "--board", "qemu", "--cost")
    one_line_error(proc, "has no riscv64 IREE runtime", "rvdeploy runtime build")
