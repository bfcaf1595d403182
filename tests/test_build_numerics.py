"""Host-target bundles compute what onnxruntime computes on the same ONNX model: same greedy tokens,
close logits, for both pipelines and two models of different shapes."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DEMO, TINY
from iree_host import greedy_logits
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
    tokens, logits = greedy_logits(bundle, prompt, 3)
    assert tokens == expected_ids[:3]
    for got, want in zip(logits, expected_logits):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


def test_demo_continues_the_zen(built):
    result = api.run(built(str(DEMO), "host", "mmt4d").path, board="local", prompt="Beautiful is", max_new_tokens=16)
    assert result.text.startswith(" better than ugly.")
