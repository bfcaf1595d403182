"""The bundle's own runner (rvdeploy/runner/runner.c, built from IREE's sources with the runtime) on the host
and under qemu: greedy and seeded-sampled tokens against onnxruntime, EOS, streaming, chat templates,
multi-turn sessions, context limits and bad input."""

from __future__ import annotations

import json
import shutil
import time

import pytest
from cli_run import one_line_error, rvdeploy
from conftest import DEMO, TINY
from ort_reference import greedy_tokens
from sampling_reference import Pcg32, sample

from rvdeploy import session
from rvdeploy.boards import get_board
from rvdeploy.bundle import Bundle
from rvdeploy.generation import Sampling, runner_args
from rvdeploy.tokenizer import TextCodec

PROMPT = "Beautiful is"
NEWLINE = 200  # the demo tokenizer's "\n"
# A chat template in the style of Llama 3's, over the demo's vocabulary (its special tokens are <s> and </s>)
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] | trim }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def _run(bundle, board="local", *args) -> dict:
    proc = rvdeploy("run", str(bundle.path), "--board", board, "--json", *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _model_copy(tmp_path, name, **files) -> str:
    d = tmp_path / name
    shutil.copytree(DEMO, d)
    for file, doc in files.items():
        (d / file).write_text(json.dumps(doc))
    return str(d)


@pytest.fixture(scope="module")
def demo_host(built):
    return built(str(DEMO))


def test_pcg32_matches_the_reference_sequence():
    # pcg32-global demo's first outputs for pcg32_srandom_r(42, 54)
    rng = Pcg32(42, 54)
    assert [rng.next() for _ in range(6)] == [0xA15C02B7, 0x7B47F409, 0xBA1D3330, 0x83D2F293, 0xBFA4784B, 0xCBED606E]


@pytest.mark.parametrize("model", [DEMO, TINY], ids=["demo", "tiny-random"])
def test_greedy_through_the_runner_matches_onnxruntime(built, model):
    bundle = built(str(model))
    doc = _run(bundle, "local", "--prompt", PROMPT, "-n", "32")
    ids = TextCodec(bundle.path / "tokenizer.json").encode(PROMPT)
    assert doc["prompt_ids"] == ids and doc["stop_reason"] == "length"
    assert doc["ids"] == greedy_tokens(model / "model.onnx", ids, 32)[0]
    assert doc["runner"]["generated"] == 32 and doc["runner"]["prompt_tokens"] == len(ids)
    assert doc["prefill_tokens_per_s"] > 0 and doc["decode_tokens_per_s"] > 0


@pytest.mark.parametrize("board,target", [("local", "host"), ("qemu", "rv64gcv-vlen256")])
def test_seeded_sample_equals_the_recomputation(built, board, target):
    bundle = built(str(DEMO), target)
    options = ["--temperature", "1.5", "--top-k", "50", "--top-p", "0.98", "--seed", "7"]
    doc = _run(bundle, board, "--prompt", PROMPT, "-n", "24", *options)
    rng = Pcg32(7)
    expected, _ = greedy_tokens(
        DEMO / "model.onnx", doc["prompt_ids"], 24, choose=lambda logits: sample(logits, rng, 1.5, 50, 0.98)
    )
    assert doc["ids"] == expected
    assert doc["ids"] != greedy_tokens(DEMO / "model.onnx", doc["prompt_ids"], 24)[0]  # it did sample
    assert _run(bundle, board, "--prompt", PROMPT, "-n", "24", *options)["ids"] == doc["ids"]  # same seed


def test_stops_at_eos(built, tmp_path):
    model = _model_copy(tmp_path, "demo-eos-newline", **{"generation_config.json": {"eos_token_id": [NEWLINE, 1]}})
    bundle = built(model)
    assert bundle.manifest.eos_token_ids == (1, NEWLINE)
    doc = _run(bundle, "local", "--prompt", PROMPT, "-n", "32")
    expected = greedy_tokens(DEMO / "model.onnx", doc["prompt_ids"], 32, eos_token_id=NEWLINE)[0]
    assert doc["stop_reason"] == "eos" and doc["ids"] == expected and expected[-1] == NEWLINE
    assert doc["text"] == " better than ugly.\n"


def test_tokens_stream_as_they_are_chosen(built):
    """Under qemu with N = 64: the first token is on this side while the runner is still working on the
    rest, well before the last one arrives."""
    bundle = Bundle.open(built(str(DEMO), "rv64gcv-vlen256").path)
    codec = TextCodec(bundle.path / "tokenizer.json")
    args = runner_args(bundle.manifest, codec.encode(PROMPT), 64, Sampling())
    arrivals, alive = [], []
    with get_board("qemu") as board, board.start_runner(bundle, args) as proc:

        def arrived(_: int) -> None:
            arrivals.append(time.monotonic())
            alive.append(proc.proc.poll() is None)

        turn = proc.read_turn(on_token=arrived)
        proc.finish()
    assert len(arrivals) == 64 and alive[0]
    assert arrivals[-1] - arrivals[0] > 0.5 * turn.stats["decode_s"]


def test_chat_template_ids_equal_transformers(built, tmp_path):
    from transformers import AutoTokenizer

    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "chat_template": TEMPLATE,
    }
    model = _model_copy(tmp_path, "demo-chat", **{"tokenizer_config.json": config})
    bundle = built(model)
    doc = _run(bundle, "local", "--chat", "--system", "Be brief.", "--prompt", "Beautiful is", "-n", "8")
    tok = AutoTokenizer.from_pretrained(model)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Beautiful is"}]
    assert doc["prompt_ids"] == tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    assert doc["prompt_ids"][0] == 0 and doc["prompt_ids"].count(0) == 1  # one <s>, from the template
    assert len(doc["ids"]) == 8

    broken = _model_copy(
        tmp_path,
        "demo-chat-broken",
        **{"tokenizer_config.json": {**config, "chat_template": "{{ raise_exception('roles must alternate') }}"}},
    )
    proc = rvdeploy("run", str(built(broken).path), "--board", "local", "--chat", "-n", "2")
    one_line_error(proc, "chat template failed to render", "roles must alternate")
    one_line_error(
        rvdeploy("run", str(built(str(DEMO)).path), "--board", "local", "--chat", "-n", "2"), "no chat template"
    )


def test_multi_turn_session_keeps_the_cache(demo_host):
    """Three turns on one runner equal onnxruntime's greedy continuation of the whole text so far."""
    b, codec = session.open_bundle(demo_host.path)
    history: list[int] = []
    with session.Session(b, codec, "local", Sampling(), 6) as s:
        for user in ("Beautiful is", " Simple is", " Flat is"):
            ids, turn = s.say(user)
            history += ids
            assert turn.ids == greedy_tokens(DEMO / "model.onnx", history, 6)[0], user
            history += turn.ids
            assert s.used == len(history)
        s.close()


def test_chat_command_three_turns_on_the_emulated_board(built):
    bundle = built(str(DEMO), "rv64gcv-vlen256")
    proc = rvdeploy("chat", str(bundle.path), "--board", "qemu", "-n", "8", input="Beautiful is\nSimple is\nFlat is\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == " better than ugly."
    assert proc.stderr.count("stop: length; context") == 3
    assert "context 12/256 used, 244 left" in proc.stderr  # 4 prompt tokens + 8 generated
    # the session goes on: turn 2 holds turn 1's text in its cache (its tokens follow it, not a fresh start)
    assert proc.stdout.splitlines()[1:] and "better than" in proc.stdout.split("\n", 2)[-1]


def test_context_is_enforced(demo_host):
    one_line_error(
        rvdeploy("run", str(demo_host.path), "--board", "local", "-n", "300"),
        "exceeds the model's context of 256 tokens",
    )
    long_prompt = " ".join(["Beautiful is better than ugly."] * 60)
    one_line_error(
        rvdeploy("run", str(demo_host.path), "--board", "local", "--prompt", long_prompt, "-n", "1"),
        "exceeds the model's context",
    )


@pytest.mark.parametrize(
    "option,value",
    [
        ("--temperature", "-1"),
        ("--temperature", "nan"),
        ("--top-p", "0"),
        ("--top-p", "1.5"),
        ("--top-k", "-1"),
        ("--seed", "-3"),
    ],
)
def test_sampling_values_out_of_range(demo_host, option, value):
    proc = rvdeploy("run", str(demo_host.path), "--board", "local", option, value)
    one_line_error(proc, option)


def test_ctrl_c_ends_the_reply_not_the_chat(built):
    """SIGINT while a reply streams (what Ctrl-C sends): the reply stops early, the next turn still runs."""
    import signal
    import subprocess
    import sys

    bundle = built(str(DEMO), "rv64gcv-vlen256")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rvdeploy", "chat", str(bundle.path), "--board", "qemu", "-n", "200"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    proc.stdin.write("Beautiful is\n")
    proc.stdin.flush()
    assert proc.stdout.read(5)  # the reply is streaming
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate("Simple is\n", timeout=120)
    assert proc.returncode == 0, err
    assert "stop: interrupted" in err and err.count("stop: ") == 2, err
