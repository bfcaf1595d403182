"""rvdeploy.source against a local hub cache in huggingface_hub's own layout (and a local stand-in hub server
for the online paths). huggingface_hub's code runs unchanged; nothing of it is mocked."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import onnx
import pytest
from hubcache_graphs import llm_model, save_model
from hubcache_repo import add_snapshot, fake_commit, files_from_dir, repo_dir
from hubcache_server import FakeHub, FakeRepo, HubServer
from onnx import TensorProto, numpy_helper

from rvdeploy import source
from rvdeploy.errors import RvdeployError
from rvdeploy.graphinfo import inspect_graph
from rvdeploy.source import DEFAULT_MODEL, ModelFiles, resolve_model

REPO = "onnx-community/Tiny-Llama-Test"
TOKENIZER = b'{"version": "1.0", "model": {"type": "BPE"}}'
CONFIG = {"model_type": "llama", "num_hidden_layers": 1, "num_key_value_heads": 2, "vocab_size": 32}


# ------------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def hub_env(tmp_path, monkeypatch) -> Path:
    """A fresh, empty hub cache selected through the environment, offline."""
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    return cache


@pytest.fixture
def online(hub_env, monkeypatch):
    """Online mode (as if the process had started without HF_HUB_OFFLINE) against a given endpoint."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the import-time copy of the variable

    def use(endpoint: str) -> Path:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        return hub_env

    return use


def _repo_tree(root: Path, variants=("fp32", "fp16"), support=True) -> dict[str, bytes]:
    """Files of an onnx-community-style repo: fp32 with two data files, fp16 with one, others inline."""
    if "fp32" in variants:
        save_model(llm_model(), root / "onnx" / "model.onnx", ["model.onnx_data", "model.onnx_data_1"])
    if "fp16" in variants:
        save_model(llm_model(elem=TensorProto.FLOAT16), root / "onnx" / "model_fp16.onnx", ["model_fp16.onnx_data"])
    for v in variants:
        if v not in ("fp32", "fp16"):
            save_model(llm_model(), root / "onnx" / f"model_{v}.onnx")
    if support:
        (root / "tokenizer.json").write_bytes(TOKENIZER)
        (root / "tokenizer_config.json").write_text("{}")
        (root / "config.json").write_text(json.dumps(CONFIG))
        (root / "README.md").write_text("not fetched\n")
    return files_from_dir(root)


def _err(*args, **kwargs) -> str:
    with pytest.raises(RvdeployError) as ei:
        resolve_model(*args, **kwargs)
    msg = str(ei.value)
    assert "\n" not in msg, msg
    return msg


def _weights(path: Path) -> dict[str, np.ndarray]:
    m = onnx.load(str(path))  # with external data
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}


# ------------------------------------------------------------------------------------------- hub, offline


def test_hub_fp32_from_cache_with_split_external_data(hub_env, tmp_path):
    commit = add_snapshot(hub_env, REPO, _repo_tree(tmp_path / "src"))
    mf = resolve_model(REPO)
    snap = repo_dir(hub_env, REPO) / "snapshots" / commit
    assert mf == ModelFiles(
        onnx=snap / "onnx" / "model.onnx",
        tokenizer=snap / "tokenizer.json",
        config=snap / "config.json",
        model_id=REPO,
        revision=commit,
        variant="fp32",
        kind="hub",
    )
    assert mf.onnx.is_symlink()  # the snapshot path, not the blob: data files resolve beside it
    g = inspect_graph(mf.onnx)
    assert g.external_data and g.dtype == "f32"
    assert json.loads(json.dumps(mf.to_dict()))["onnx"] == str(mf.onnx)


def test_hub_graph_runs_and_materializes(hub_env, tmp_path):
    add_snapshot(hub_env, REPO, _repo_tree(tmp_path / "src"))
    mf = resolve_model(REPO)
    # onnxruntime reads the snapshot as is (symlinked data files beside the graph) ...
    ort = pytest.importorskip("onnxruntime")
    ort.InferenceSession(str(mf.onnx), providers=["CPUExecutionProvider"])
    # ... onnx (and so iree-import-onnx) refuses symlinked external data: materialize() gives plain copies.
    with pytest.raises(Exception, match="symbolic link"):
        onnx.load(str(mf.onnx))
    plain = source.materialize(mf.onnx, tmp_path / "build")
    assert plain == tmp_path / "build" / "model.onnx"
    assert sorted(p.name for p in plain.parent.iterdir()) == ["model.onnx", "model.onnx_data", "model.onnx_data_1"]
    src = _weights(tmp_path / "src" / "onnx" / "model.onnx")
    got = _weights(plain)
    assert src.keys() == got.keys() and all(np.array_equal(src[k], got[k]) for k in src)
    assert source.materialize(plain, tmp_path / "again") == plain  # already plain files: unchanged
    assert source.materialize(mf.onnx, tmp_path / "build") == plain  # copies reused


def test_hub_fp16_from_cache(hub_env, tmp_path):
    commit = add_snapshot(hub_env, REPO, _repo_tree(tmp_path / "src"))
    mf = resolve_model(REPO, variant="fp16")
    assert mf.onnx.name == "model_fp16.onnx" and mf.variant == "fp16" and mf.revision == commit
    w = _weights(source.materialize(mf.onnx, tmp_path / "build"))
    assert all(a.dtype == np.float16 for n, a in w.items() if n.endswith("weight"))
    assert inspect_graph(mf.onnx).dtype == "f16"


def test_hub_cache_dir_is_read_at_call_time(hub_env, tmp_path, monkeypatch):
    other = tmp_path / "elsewhere"
    add_snapshot(other, REPO, _repo_tree(tmp_path / "src"))
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert "not in the local cache" in _err(REPO)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home2"))
    (tmp_path / "home2").mkdir()
    (tmp_path / "home2" / "hub").symlink_to(other)
    assert resolve_model(REPO).onnx.is_file()


def test_hub_revision_commit_and_short_sha(hub_env, tmp_path):
    old = add_snapshot(hub_env, REPO, _repo_tree(tmp_path / "a", variants=("fp32",)), commit=fake_commit("old"))
    new = add_snapshot(hub_env, REPO, _repo_tree(tmp_path / "b"), commit=fake_commit("new"))
    assert resolve_model(REPO).revision == new
    mf = resolve_model(REPO, revision=old)
    assert mf.revision == old and mf.onnx.parent.parent.name == old
    assert resolve_model(REPO, revision=old[:8]).revision == old
    # fp16 exists only in the newer commit
    msg = _err(REPO, variant="fp16", revision=old)
    assert "fp16" in msg and "variants cached: fp32" in msg


def test_hub_missing_repo_names_repo_and_cache(hub_env):
    msg = _err("someone/not-there")
    assert "someone/not-there" in msg
    assert f"not in the local cache at {hub_env}" in msg
    assert "HF_HUB_OFFLINE" in msg


def test_hub_missing_revision_lists_cached(hub_env, tmp_path):
    commit = add_snapshot(hub_env, REPO, _repo_tree(tmp_path / "src"))
    msg = _err(REPO, revision="v2")
    assert "revision v2" in msg and REPO in msg and f"main -> {commit[:7]}" in msg


def test_hub_missing_variant_lists_present_variants(hub_env, tmp_path):
    add_snapshot(hub_env, REPO, _repo_tree(tmp_path / "src"))
    msg = _err(REPO, variant="q4")
    assert "onnx/model_q4.onnx" in msg and "variants cached: fp32, fp16" in msg


def test_hub_missing_external_data_in_cache(hub_env, tmp_path):
    files = _repo_tree(tmp_path / "src")
    del files["onnx/model.onnx_data_1"]
    add_snapshot(hub_env, REPO, files)
    msg = _err(REPO)
    assert "model.onnx_data_1" in msg and str(hub_env) in msg


# ------------------------------------------------------------------------------------------- hub, online


def _fake_hub(tmp_path, **repo_kw) -> tuple[FakeHub, str]:
    files = _repo_tree(tmp_path / "src", variants=("fp32", "fp16", "q4"))
    sha = fake_commit("served")
    hub = FakeHub({REPO: FakeRepo({sha: files}, {"main": sha}, **repo_kw)})
    return hub, sha


def test_hub_download_fetches_only_the_variant(online, tmp_path, monkeypatch):
    hub, sha = _fake_hub(tmp_path)
    with HubServer(hub) as server:
        cache = online(server.url)
        mf = resolve_model(REPO, variant="fp16")
    assert mf.kind == "hub" and mf.revision == sha and mf.onnx.is_file()
    assert sorted(hub.downloaded()) == [
        "config.json",
        "onnx/model_fp16.onnx",
        "onnx/model_fp16.onnx_data",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert inspect_graph(mf.onnx).dtype == "f16"
    # now in the cache: offline resolution gives the same files
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model(REPO, variant="fp16") == mf
    assert (repo_dir(cache, REPO) / "refs" / "main").read_text() == sha


def test_hub_fetches_data_files_named_by_the_graph(online, tmp_path):
    # A data file name the patterns do not cover is read from the graph and fetched by itself.
    save_model(llm_model(), tmp_path / "src" / "onnx" / "model.onnx", ["weights.bin"])
    sha = fake_commit("odd-names")
    hub = FakeHub({REPO: FakeRepo({sha: files_from_dir(tmp_path / "src")}, {"main": sha})})
    with HubServer(hub) as server:
        online(server.url)
        mf = resolve_model(REPO)
    assert sorted(hub.downloaded()) == ["onnx/model.onnx", "onnx/weights.bin"]
    assert (mf.onnx.parent / "weights.bin").is_file() and mf.tokenizer is None
    ort = pytest.importorskip("onnxruntime")
    ort.InferenceSession(str(mf.onnx), providers=["CPUExecutionProvider"])


def test_hub_online_missing_variant_lists_repo_variants(online, tmp_path):
    hub, _ = _fake_hub(tmp_path)
    with HubServer(hub) as server:
        online(server.url)
        msg = _err(REPO, variant="bnb4")
    assert "has no onnx/model_bnb4.onnx" in msg and "variants present: fp32, fp16, q4" in msg


def test_hub_online_errors(online, tmp_path):
    hub, _ = _fake_hub(tmp_path)
    hub.repos["org/gated"] = FakeRepo(hub.repos[REPO].commits, hub.repos[REPO].refs, gated=True)
    with HubServer(hub) as server:
        online(server.url)
        msg = _err("org/missing")
        assert "hub repo org/missing not found" in msg and "HF_TOKEN" in msg
        msg = _err("org/gated")
        assert "gated" in msg and "HF_TOKEN" in msg and "hf auth login" in msg
        msg = _err(REPO, revision="no-such-branch")
        assert "revision no-such-branch not found" in msg and REPO in msg


def test_hub_unreachable(online, tmp_path):
    with socket.socket() as s:  # a local port with nothing listening: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cache = online(f"http://127.0.0.1:{port}")
    msg = _err(REPO)
    assert REPO in msg and f"not in the local cache at {cache}" in msg and "could not be reached" in msg
    assert "HF_HUB_OFFLINE" in msg
    # already cached: the cache answers even though the hub does not
    commit = add_snapshot(cache, REPO, _repo_tree(tmp_path / "src"))
    assert resolve_model(REPO).revision == commit


# ------------------------------------------------------------------------------------------- local, demo, errors


def test_unknown_variant(hub_env):
    msg = _err(REPO, variant="q3")
    assert "unknown variant 'q3'" in msg and "fp32" in msg and "q4f16" in msg and "bnb4" in msg


def test_variant_table_matches_onnx_community_layout():
    v = source.variants()
    assert list(v) == ["fp32", "fp16", "int8", "uint8", "quantized", "q4", "q4f16", "bnb4"]
    assert v["fp32"].graph == "onnx/model.onnx" and v["q4f16"].graph == "onnx/model_q4f16.onnx"
    pats = source.hub_patterns("fp32")
    assert {
        "onnx/model.onnx",
        "onnx/model.onnx_data",
        "onnx/model.onnx_data_*",
        "tokenizer.json",
        "config.json",
        "generation_config.json",
        "special_tokens_map.json",
    } <= set(pats)
    assert not any("fp16" in p for p in pats)


def test_local_dir_in_hub_layout(tmp_path):
    _repo_tree(tmp_path / "repo")
    mf = resolve_model(str(tmp_path / "repo"), variant="fp16")
    assert mf.kind == "dir" and mf.onnx == tmp_path / "repo" / "onnx" / "model_fp16.onnx"
    assert mf.tokenizer == tmp_path / "repo" / "tokenizer.json" and mf.config == tmp_path / "repo" / "config.json"
    assert mf.model_id == str(tmp_path / "repo") and mf.revision is None and mf.variant == "fp16"
    msg = _err(str(tmp_path / "repo"), variant="int8")
    assert "no int8 graph" in msg and "variants present: fp32, fp16" in msg


def test_local_flat_dir(tmp_path):
    save_model(llm_model(), tmp_path / "flat" / "model.onnx", ["model.onnx_data"])
    mf = resolve_model(str(tmp_path / "flat"))
    assert mf.onnx == tmp_path / "flat" / "model.onnx" and mf.tokenizer is None and mf.config is None
    save_model(llm_model(), tmp_path / "other" / "decoder_model_merged.onnx")
    msg = _err(str(tmp_path / "other"))
    assert "decoder_model_merged.onnx" in msg and "pass the .onnx file itself" in msg


def test_single_file_takes_tokenizer_from_parent(tmp_path, monkeypatch):
    _repo_tree(tmp_path / "repo")
    monkeypatch.chdir(tmp_path)
    mf = resolve_model("repo/onnx/model_fp16.onnx")
    assert mf.kind == "file" and mf.model_id == "repo/onnx/model_fp16.onnx"
    assert mf.variant == "fp16"  # from the file name
    assert mf.tokenizer == Path("repo/tokenizer.json") and mf.config == Path("repo/config.json")
    (tmp_path / "repo" / "onnx" / "model_fp16.onnx_data").unlink()
    msg = _err("repo/onnx/model_fp16.onnx")
    assert "model_fp16.onnx_data" in msg and "not beside it" in msg


def test_non_existent_paths(tmp_path, monkeypatch, hub_env):
    monkeypatch.chdir(tmp_path)
    for spec in ("./nope", "/no/such/model.onnx", "~/no-such-dir-rvdeploy", "nope.onnx", "org/model.onnx"):
        assert _err(spec).startswith(f"model file not found: {spec}"), spec
    assert "not a file, a directory or a hub repo id" in _err("just-a-name")
    assert "not a file, a directory or a hub repo id" in _err("a/b/c")


def test_revision_only_for_hub(tmp_path):
    save_model(llm_model(), tmp_path / "model.onnx")
    assert "applies to hub models only" in _err(str(tmp_path / "model.onnx"), revision="main")


def test_demo():
    assert "only the fp32 variant" in _err("demo", variant="fp16")
    if not (source.DEMO_DIR / "model.onnx").is_file():
        assert "demo model missing" in _err("demo")
        pytest.skip("rvdeploy/models/demo not built yet")
    mf = resolve_model("demo")
    assert (mf.kind, mf.model_id, mf.variant, mf.revision) == ("demo", "demo", "fp32", None)
    assert mf.onnx == source.DEMO_DIR / "model.onnx"


def test_default_model_id():
    assert DEFAULT_MODEL == "onnx-community/Llama-3.2-1B-Instruct"
    assert os.path.basename(source.__file__) == "source.py"
