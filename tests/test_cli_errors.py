"""Bad input: each case is one line on stderr naming the problem, a non-zero exit, and nothing written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import onnx
import pytest
from cli_run import rvdeploy
from conftest import TINY
from onnx import TensorProto, helper


def assert_one_line_error(proc, *needles):
    assert proc.returncode != 0, proc.stdout
    # progress lines ("fetch...") may come first; the error is the one last line
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.endswith("...")]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("rvdeploy: error: ")
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_missing_file(tmp_path):
    proc = rvdeploy("build", "--model", str(tmp_path / "nope.onnx"), "-o", str(tmp_path / "out"))
    assert_one_line_error(proc, "nope.onnx")
    assert not (tmp_path / "out").exists()


def test_repo_not_in_cache_offline(tmp_path):
    proc = rvdeploy(
        "build",
        "--model",
        "some-org/not-a-model",
        "-o",
        str(tmp_path / "out"),
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")},
    )
    assert_one_line_error(proc, "some-org/not-a-model")


def test_not_a_causal_lm(tmp_path):
    x = helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, 4])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4, 8])
    graph = helper.make_graph(
        [helper.make_node("Cast", ["input_ids"], ["logits"], to=TensorProto.FLOAT)], "g", [x], [y]
    )
    path = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph), str(path))
    proc = rvdeploy("build", "--model", str(path), "-o", str(tmp_path / "out"))
    assert_one_line_error(proc, "plain.onnx", "past_key_values")


def test_unsupported_op_named(tmp_path):
    model = onnx.load(str(TINY / "model.onnx"))
    node = helper.make_node(
        "MatMulBnb4", ["logits", "logits"], ["unused"], domain="com.microsoft", name="bnb4_matmul_7"
    )
    model.graph.node.append(node)
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    path = tmp_path / "model_bnb4.onnx"
    onnx.save(model, str(path))
    proc = rvdeploy("build", "--model", str(path), "-o", str(tmp_path / "out"))
    assert_one_line_error(proc, "MatMulBnb4", "bnb4_matmul_7")


def test_unknown_target(tmp_path):
    proc = rvdeploy("build", "--model", str(TINY), "--target", "rv32-nope", "-o", str(tmp_path / "out"))
    assert_one_line_error(proc, "rv32-nope", "rv64gcv-vlen256")


def test_unknown_variant(tmp_path):
    proc = rvdeploy("build", "--model", str(TINY), "--variant", "int3", "-o", str(tmp_path / "out"))
    assert_one_line_error(proc, "int3")


def test_unknown_pipeline(tmp_path):
    proc = rvdeploy("build", "--model", str(TINY), "--pipeline", "fast", "-o", str(tmp_path / "out"))
    assert_one_line_error(proc, "fast", "mmt4d")


def test_existing_output_refused_without_force(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    proc = rvdeploy("build", "--model", str(TINY), "-o", str(out))
    assert_one_line_error(proc, str(out), "--force")
    # --force replaces bundles only, never an arbitrary directory
    proc = rvdeploy("build", "--model", str(TINY), "-o", str(out), "--force")
    assert_one_line_error(proc, "not an rvdeploy bundle")
    assert (out / "precious.txt").read_text() == "keep me"


def test_not_a_bundle(tmp_path):
    proc = rvdeploy("inspect", str(tmp_path))
    assert_one_line_error(proc, "manifest.json")


@pytest.mark.slow
def test_interrupted_build_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rvdeploy", "build", "--model", str(TINY), "-o", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    seen = []
    deadline = time.time() + 120
    for line in proc.stderr:  # stage names, one per line when stderr is not a terminal
        seen.append(line)
        if line.startswith("compile") or time.time() > deadline:
            break
    time.sleep(1.0)  # inside iree-compile
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=60)[1]
    assert proc.returncode != 0
    assert "interrupted" in rest
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["tmp"] or sorted(p.name for p in tmp_path.iterdir()) == ["tmp"]
    assert list((tmp_path / "tmp").iterdir()) == []
