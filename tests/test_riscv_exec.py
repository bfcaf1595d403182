"""Real riscv64 execution: bundles built for riscv64 targets run on the real riscv64 IREE runtime (built from
IREE's sources, tests/conftest.py's riscv_runtime) under qemu-user with the target's -cpu, and give
onnxruntime's greedy tokens on the same ONNX; bench and bench --cost produce IREE rows from the same runs."""

from __future__ import annotations

import json
import shutil

import pytest
from cli_run import one_line_error, rvdeploy
from conftest import DEMO, TINY, system_part_missing
from ort_reference import greedy_tokens

from rvdeploy.boards.qemu import MIN_VERSION, qemu_version
from rvdeploy.quantize import quantize_file
from rvdeploy.tokenizer import TextCodec

pytestmark = pytest.mark.slow
NEW_TOKENS = 32
PROMPT = "Beautiful is"


@pytest.fixture(scope="module", autouse=True)
def qemu_10(riscv_runtime):
    qemu = shutil.which("qemu-riscv64")
    if qemu is None or qemu_version(qemu)[:2] < MIN_VERSION:
        system_part_missing("needs qemu-user >= 8.1 (scripts/setup.sh installs 10 from bookworm-backports)")
    return riscv_runtime


def _run_ids(bundle, board="qemu") -> list[int]:
    proc = rvdeploy("run", str(bundle.path), "--board", board, "--prompt", PROMPT, "-n", str(NEW_TOKENS), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["board"] == board
    return doc["ids"]


def _reference(onnx_path, bundle) -> list[int]:
    prompt_ids = TextCodec(bundle.path / "tokenizer.json").encode(PROMPT)
    return greedy_tokens(onnx_path, prompt_ids, NEW_TOKENS)[0]


@pytest.mark.parametrize("ukernels", ["project", "upstream"])
@pytest.mark.parametrize("vlen", [128, 256, 512])
def test_demo_matches_onnxruntime(built, vlen, ukernels):
    bundle = built(str(DEMO), f"rv64gcv-vlen{vlen}", ukernels=ukernels)
    assert bundle.manifest.runtime.kind == "bundled"
    assert bundle.manifest.pipeline.ukernels.library == ukernels
    ids = _run_ids(bundle)
    assert ids == _reference(DEMO / "model.onnx", bundle)
    assert TextCodec(bundle.path / "tokenizer.json").decode(ids).startswith(" better than ugly.")


@pytest.mark.parametrize("pipeline", ["mmt4d", "baseline"])
def test_tiny_random_matches_onnxruntime(built, pipeline):
    bundle = built(str(TINY), "spacemit-k1", pipeline)
    assert _run_ids(bundle) == _reference(TINY / "model.onnx", bundle)


@pytest.mark.parametrize("fmt", ["int8", "q4"])
def test_quantized_matches_onnxruntime(built, tmp_path_factory, fmt):
    """--quantize: onnxruntime runs the quantized ONNX the build quantizes to (same quantizer, same file)."""
    ref = tmp_path_factory.mktemp(f"ref-{fmt}") / "model.onnx"
    quantize_file(DEMO / "model.onnx", ref, fmt)
    bundle = built(str(DEMO), "rv64gcv-vlen256", quantize=fmt)
    assert bundle.manifest.model.quantized.format == fmt
    assert _run_ids(bundle) == _reference(ref, bundle)


def test_vlen256_module_refused_on_vlen128_core(built):
    bundle = built(str(DEMO), "rv64gcv-vlen256")
    proc = rvdeploy("run", str(bundle.path), "--board", "qemu:rv64gcv-vlen128", "-n", "2")
    one_line_error(proc, "refused", "VLEN: bundle needs 256, board has 128")
    # and without a vector unit at all
    proc = rvdeploy("run", str(bundle.path), "--board", "qemu:rv64gc", "-n", "2")
    one_line_error(proc, "refused")


def test_bench_on_qemu_gives_iree_rows(built):
    bundle = built(str(DEMO), "rv64gcv-vlen256")
    proc = rvdeploy("bench", str(bundle.path), "--board", "qemu", "-p", "8", "-n", "4", "-r", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    rows = {(r["pipeline"], r["test"]): r for r in doc["results"]}
    assert set(rows) == {("mmt4d", "pp8"), ("mmt4d", "tg4")}
    for r in rows.values():
        assert r["t/s"] > 0 and len(r["samples"]) == 2
        assert r["peak_rss_bytes"] > 1 << 20  # iree-benchmark-module under qemu


def test_bench_cost_gives_iree_rows(built):
    from rvdeploy import qemu_cost
    from rvdeploy.errors import RvdeployError

    try:
        qemu_cost.plugin_qemu()
    except RvdeployError as exc:
        system_part_missing(str(exc))
    bundle = built(str(DEMO), "rv64gcv-vlen256")
    baseline = built(str(DEMO), "rv64gcv-vlen256", "baseline")
    proc = rvdeploy(
        "bench",
        str(bundle.path),
        "--board",
        "qemu",
        "--cost",
        "-p",
        "9",
        "-n",
        "4",
        "--compare",
        "baseline",
        "--baseline-bundle",
        str(baseline.path),
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    cost = json.loads(proc.stdout)["cost"]
    assert set(cost) == {"mmt4d", "baseline"}
    for name, c in cost.items():
        for phase in ("per_prompt_token", "per_generated_token"):
            assert c[phase]["instructions"] > 0, (name, phase, c)
    # the mmt4d decode step runs the project's RVV kernels: vector instructions in every generated token
    assert cost["mmt4d"]["per_generated_token"]["vector_instructions"] > 0
    assert (
        cost["mmt4d"]["per_generated_token"]["vector_lmul_weighted"]
        > cost["mmt4d"]["per_generated_token"]["vector_instructions"]
    )  # LMUL 4/8 tiles
