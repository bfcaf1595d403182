"""Host-target bundles compute what onnxruntime computes on the same ONNX model: same greedy tokens,
close logits, for both pipelines and two models of different shapes."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import DEMO, TINY
from iree_host import HostModule
from ort_reference import greedy_tokens
from rvdeploy import api
from rvdeploy.tokenizer import TextCodec

pytestmark = pytest.mark.slow
NEW_TOKENS = 32

CASES = [(str(DEMO), "mmt4d"), (str(DEMO), "baseline"), (str(TINY), "mmt4d"), (str(TINY), "baseline")]


@pytest.mark.parametrize("model,pipeline", CASES, ids=[f"{m.split('/')[-1]}-{p}" for m, p in CASES])
def test_greedy_tokens_match_onnxruntime(built, model, pipeline):
    bundle = built(model, "host", pipeline)
    prompt = "Beautiful is"
    ids = TextCodec(bundle.path / "tokenizer.json").encode(prompt)
    expected, _ = greedy_tokens(f"{model}/model.onnx", ids, NEW_TOKENS)
    result = api.run(bundle.path, board="local", prompt=prompt, max_new_tokens=NEW_TOKENS)
    assert result.prompt_ids == ids
    assert result.ids == expected


@pytest.mark.parametrize("model,pipeline", CASES, ids=[f"{m.split('/')[-1]}-{p}" for m, p in CASES])
def test_logits_close_to_onnxruntime(built, model, pipeline):
    """prefill's last-position logits and three decode steps' logits, fed the module's own KV cache."""
    bundle = built(model, "host", pipeline)
    prompt = [3, 7, 11, 13, 17, 19, 23]  # 7 tokens: not a multiple of the host's 8-row prefill tile
    expected_ids, expected_logits = greedy_tokens(f"{model}/model.onnx", prompt, 4)
    graph = bundle.manifest["model"]["graph"]
    m = HostModule(bundle.path)
    n = len(prompt)
    kv = [np.zeros((1, graph["num_kv_heads"], 0, graph["head_dim"]), np.float32)] * (2 * graph["num_layers"])
    out = m.call("prefill", np.array([prompt], np.int64), np.ones((1, n), np.int64), np.arange(n)[None], *kv)
    logits = [out[0][0, -1]]
    kv = out[1:]
    for step in range(3):
        tok = int(np.argmax(logits[-1]))
        assert tok == expected_ids[step]
        past = n + step
        out = m.call("decode", np.array([[tok]], np.int64), np.ones((1, past + 1), np.int64),
                     np.array([[past]], np.int64), *kv)
        logits.append(out[0][0, -1])
        kv = out[1:]
    for got, want in zip(logits, expected_logits):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


def test_demo_continues_the_zen(built):
    result = api.run(built(str(DEMO), "host", "mmt4d").path, board="local", prompt="Beautiful is",
                     max_new_tokens=16)
    assert result.text.startswith(" better than ugly.")
