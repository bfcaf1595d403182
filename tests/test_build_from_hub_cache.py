"""The default path end to end: `rvdeploy build` of a hub repo id resolved by the real huggingface_hub from
a local cache laid out as the hub's (HF_HUB_OFFLINE=1: no hub is reachable here), then run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import DEMO
from hubcache_repo import add_snapshot

pytestmark = pytest.mark.slow
REPO = "onnx-community/Llama-3.2-1B-Instruct"


def test_build_and_run_hub_repo_from_cache(tmp_path):
    cache = tmp_path / "hub"
    files = {
        "onnx/model.onnx": (DEMO / "model.onnx").read_bytes(),
        "tokenizer.json": (DEMO / "tokenizer.json").read_bytes(),
        "config.json": (DEMO / "config.json").read_bytes(),
    }
    commit = add_snapshot(cache, REPO, files)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "bundle"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "rvdeploy",
            "build",
            "--target",
            "host",
            "--pipeline",
            "baseline",
            "-o",
            str(out),
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert build.returncode == 0, build.stderr
    manifest = json.loads(build.stdout)["manifest"]  # --json: one document on stdout, nothing else
    assert manifest["model"]["id"] == REPO and manifest["model"]["revision"] == commit
    assert manifest["model"]["source"] == "hub" and manifest["model"]["variant"] == "fp32"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "rvdeploy",
            "run",
            str(out),
            "--board",
            "local",
            "--prompt",
            "Beautiful is",
            "--max-new-tokens",
            "8",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["text"].startswith(" better than ugly.")
