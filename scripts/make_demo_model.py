#!/usr/bin/env python3
"""Build the demo model (rvdeploy/models/demo) and the tiny-random test fixture (tests/fixtures/tiny-random).

  python scripts/make_demo_model.py [--out-dir DIR] [--verify-only]

Both are LlamaForCausalLM models exported by optimum ("text-generation-with-past", fp32), so
their ONNX interface is the one of onnx-community Llama exports:
  input_ids, attention_mask, position_ids, past_key_values.N.key/value -> logits, present.N.key/value

* demo: hidden 64, 2 layers, 4 heads / 2 KV heads (GQA), untied embeddings, trained until it has
  memorized the Zen of Python (`import this`): greedy "Beautiful is" -> " better than ugly.\n
  Explicit is better than implicit. ..." to the end of the text and then </s>.
* tiny-random: hidden 96, 3 layers, 6 heads / 2 KV heads (GQA 3:1), intermediate 80, tied
  embeddings, seeded random weights (never trained). Other dims than the demo's, so code that
  hard-codes the demo's shapes fails on it.

Both share one byte-level BPE tokenizer (512 tokens) trained here on the Zen text, with a BOS:
prompt ids = Tokenizer.from_file("tokenizer.json").encode(prompt).ids (starts with <s> = 0),
text = tok.decode(generated_ids) (</s> = 1 is skipped).

Each output dir holds exactly: model.onnx (weights inline, no external data), tokenizer.json,
config.json, generation_config.json.

Needs the `demo` extra (torch==2.13.0, transformers, optimum-onnx) besides onnx/onnxruntime/tokenizers.
On 2 idle CPU cores the whole run takes ~20 s (training ~12 s, 150 steps); it prints the times.
--out-dir DIR writes DIR/rvdeploy/models/demo and DIR/tests/fixtures/tiny-random instead of the
repository's (the outputs are bit-identical from run to run, so they can be cmp'd).
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import io
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

REPO = Path(__file__).resolve().parent.parent
DEMO_REL = Path("rvdeploy/models/demo")
TINY_REL = Path("tests/fixtures/tiny-random")
FILES = ("model.onnx", "tokenizer.json", "config.json", "generation_config.json")

BOS, EOS = "<s>", "</s>"  # ids 0 and 1 (special tokens come first in the vocab)
VOCAB_SIZE = 512  # small enough for a <1 MB fixture; large enough that most Zen words are 1 token
DEMO_PROMPT = "Beautiful is"
DEMO_EXPECT = " better than ugly."
N_SHOW = 48  # tokens of continuation the demo must reproduce exactly (and that we print)

# Fixed seeds everywhere: rerunning the script must give the same tokenizer, the same training
# trajectory and hence the same model, so a regenerated model can be diffed against the committed one.
SEED_TRAIN = 0
SEED_TINY = 1234  # first seed tried for tiny-random (see random_tiny)
TINY_MIN_MARGIN = 0.02  # ~2 % of the random logits' std; fp32 rounding differences are ~1e-6
TINY_MIN_DISTINCT = 16  # of the N_SHOW greedy tokens
# Pinned thread count: CPU kernels split reductions by thread, so a different count changes the
# float rounding and (over hundreds of steps) the trained weights.
TORCH_THREADS = 2

DEMO_DIMS = dict(
    hidden_size=64,
    intermediate_size=192,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,  # the whole text is 231 tokens with <s> and </s>
    tie_word_embeddings=False,
)
TINY_DIMS = dict(
    hidden_size=96,
    # 80, not a Llama-like ~2.7x hidden: the <1 MB budget is mostly spent on the 512x96 embedding and
    # ~165 KB of graph; 160 gives 1.1 MB. 80 is also not a multiple of 32, so tiled matmul code
    # (f32 mmt4d N0 = VLEN/8 = 32 at VLEN 256) has to pad, which the demo's 64/192 never does.
    intermediate_size=80,
    num_hidden_layers=3,
    num_attention_heads=6,
    num_key_value_heads=2,
    max_position_embeddings=256,
    tie_word_embeddings=True,
    # Larger than the default 0.02: logits get a std of ~1 instead of ~0.2, activations are not
    # all near zero, and TINY_MIN_MARGIN below is in those units.
    initializer_range=0.1,
)

sys.path.insert(0, str(REPO / "tests"))
from ort_reference import greedy_tokens  # noqa: E402  (torch-free reference, shared with the tests)


# ----------------------------------------------------------------------------- text + tokenizer
def zen_text() -> str:
    """The Zen of Python, from the stdlib `this` module (importing it prints it: swallow that)."""
    with contextlib.redirect_stdout(io.StringIO()):
        import this
    return codecs.decode(this.s, "rot13")


def train_tokenizer(text: str):
    """Byte-level BPE: every byte is in the base alphabet, so any string encodes and
    decode(encode(s)) == s; spaces and newlines are ordinary bytes (Ġ/Ċ) and decode naturally.
    The GPT-2 split regex makes a word's tokens independent of what precedes it (a line start
    after "\\n" and a prompt start both see "Beautiful"), so a prompt tokenizes as in the text.
    BOS <s> is added by the post-processor, as Llama tokenizers do; EOS </s> ends the text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([text], trainer)
    assert tok.token_to_id(BOS) == 0 and tok.token_to_id(EOS) == 1
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, 0)]
    )
    ids = tok.encode(text).ids
    assert ids[0] == 0 and tok.decode(ids) == text, "tokenizer does not round-trip"
    return tok


# ----------------------------------------------------------------------------- torch side
def llama_config(vocab_size: int, dims: dict):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        hidden_act="silu",
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=None,
        use_cache=True,
        dtype="float32",
        **dims,
    )


def torch_greedy(model, prompt_ids: list[int], max_new: int, eos: int | None = None):
    """Greedy decoding with the HF KV cache; returns (tokens, top1-top2 logit margins)."""
    import torch

    toks, margins = [], []
    with torch.no_grad():
        out = model(input_ids=torch.tensor([prompt_ids]), use_cache=True)
        for _ in range(max_new):
            logits = out.logits[0, -1]
            top2 = torch.topk(logits, 2).values
            tok = int(torch.argmax(logits))
            toks.append(tok)
            margins.append(float(top2[0] - top2[1]))
            if eos is not None and tok == eos:
                break
            out = model(input_ids=torch.tensor([[tok]]), past_key_values=out.past_key_values, use_cache=True)
    return toks, margins


def train_demo(tok, text: str):
    """Memorize the text. Each batch holds the whole text from <s> plus windows that start at random
    token offsets and run to the end, each with its own <s> at position 0: so a short prompt taken
    from anywhere in the text (e.g. "Beautiful is", which is mid-text) continues to the end, as well
    as generation from <s> alone. Stops once both continuations are exact with a safe logit margin."""
    import torch
    from transformers import LlamaForCausalLM

    ids = tok.encode(text, add_special_tokens=False).ids + [1]  # text + </s>
    n = len(ids)
    prompt = tok.encode(DEMO_PROMPT).ids
    start = next(i for i in range(n) if ids[i : i + len(prompt) - 1] == prompt[1:])
    want_prompt = ids[start + len(prompt) - 1 :]  # continuation of the prompt, through </s>
    want_bos = ids

    torch.manual_seed(SEED_TRAIN)
    rng = random.Random(SEED_TRAIN)
    model = LlamaForCausalLM(llama_config(tok.get_vocab_size(), DEMO_DIMS))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.98), weight_decay=0.0)
    batch, max_steps, check_every, min_margin = 16, 1500, 50, 3.0
    # Cosine decay to 1/10: a steady finish so the margins grow instead of oscillating.
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, max_steps) / max_steps))
    )

    t0 = time.time()
    for step in range(1, max_steps + 1):
        starts = [0] + [rng.randrange(1, n - 1) for _ in range(batch - 1)]
        seqs = [[0] + ids[s:] for s in starts]
        L = max(len(s) for s in seqs)
        x = torch.full((batch, L), 1, dtype=torch.long)
        y = torch.full((batch, L), -100, dtype=torch.long)
        mask = torch.zeros((batch, L), dtype=torch.long)
        for b, s in enumerate(seqs):
            x[b, : len(s)] = torch.tensor(s)
            y[b, : len(s)] = torch.tensor(s)
            mask[b, : len(s)] = 1
        # The token right after <s> in a random window is a guess from nothing; scoring it would
        # teach "<s> -> any token" and fight the "<s> -> The" of the full text.
        y[1:, 1] = -100
        loss = model(input_ids=x, attention_mask=mask, labels=y).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % check_every == 0:
            model.eval()
            got_p, mar_p = torch_greedy(model, prompt, len(want_prompt))
            got_b, mar_b = torch_greedy(model, [0], len(want_bos))
            model.train()
            ok = got_p == want_prompt and got_b == want_bos
            m = min(mar_p + mar_b)
            print(
                f"  step {step:4d} loss {loss.item():.4f}  exact={ok}  min margin {min(mar_p):.2f} "
                f"(prompt) {min(mar_b):.2f} (<s>)  ({time.time() - t0:.0f} s)"
            )
            if ok and m >= min_margin:
                break
    else:
        raise SystemExit("demo training did not converge; raise max_steps")
    model.eval()
    return model, time.time() - t0, step


def random_tiny(tok):
    """Seeded random weights. Random logits (std ~1 over 512 tokens) often have a top-2 gap of 1e-4,
    where two backends that round differently pick different tokens and the runs diverge; and many
    random models just repeat one token, which a broken backend can reproduce too. So take the first
    seed from SEED_TINY whose greedy run from the demo prompt has a top-2 gap of at least
    TINY_MIN_MARGIN at every step and at least TINY_MIN_DISTINCT different tokens: still random
    weights, but token-for-token comparisons against them are fair and discriminating."""
    import torch
    from transformers import LlamaForCausalLM

    prompt = tok.encode(DEMO_PROMPT).ids
    for seed in range(SEED_TINY, SEED_TINY + 500):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(llama_config(tok.get_vocab_size(), TINY_DIMS))
        # HF initializes RMSNorm weights to ones: a backend that ignored them would still match, and
        # the exporter stores identical tensors once. Perturb them so every weight is distinct.
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("norm.weight"):
                    p.add_(0.2 * torch.randn_like(p))
        model.eval()
        toks, margins = torch_greedy(model, prompt, N_SHOW)
        if min(margins) >= TINY_MIN_MARGIN and len(set(toks)) >= TINY_MIN_DISTINCT:
            return model, seed, min(margins)
    raise SystemExit("no tiny-random seed with a safe greedy margin")


# ----------------------------------------------------------------------------- export
def export(model, tok, out_dir: Path) -> None:
    """optimum export of a model held in memory: save as an HF checkpoint, main_export it, then keep
    only FILES, with every weight inline in model.onnx."""
    from optimum.exporters.onnx import main_export
    from transformers import PreTrainedTokenizerFast

    with tempfile.TemporaryDirectory() as tmp:
        hf, onnx_dir = Path(tmp, "hf"), Path(tmp, "onnx")
        model.generation_config.bos_token_id = 0
        model.generation_config.eos_token_id = 1
        model.save_pretrained(hf)
        # optimum copies the tokenizer along; give it one that transformers can load.
        PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS).save_pretrained(hf)
        main_export(str(hf), output=str(onnx_dir), task="text-generation-with-past", device="cpu", do_validation=True)
        print(f"  optimum wrote: {sorted(p.name for p in onnx_dir.iterdir())}")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.mkdir(parents=True)
        m = onnx.load(str(onnx_dir / "model.onnx"))  # pulls in model.onnx_data if there is one
        m = dedupe_tied(m, model)
        onnx.save(m, str(out_dir / "model.onnx"), save_as_external_data=False)
        for name in ("config.json", "generation_config.json"):
            if (onnx_dir / name).exists():
                shutil.copy(onnx_dir / name, out_dir / name)
        tok.save(str(out_dir / "tokenizer.json"))
    # The reloaded tokenizer must behave like the one we trained with.
    from tokenizers import Tokenizer

    again = Tokenizer.from_file(str(out_dir / "tokenizer.json"))
    assert again.encode(DEMO_PROMPT).ids == tok.encode(DEMO_PROMPT).ids


def dedupe_tied(m: onnx.ModelProto, model) -> onnx.ModelProto:
    """optimum only deduplicates tied weights when `accelerate` is installed; without it the tied
    lm_head is stored a second time, transposed (+25 % on tiny-random). Do the same as optimum
    would then: one initializer for the Gather, lm_head MatMul fed by a Transpose of it."""
    from optimum.onnx import remove_duplicate_weights_from_tied_info
    from transformers.utils import is_accelerate_available

    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(p.data_ptr(), []).append(name)
    tied = [names for names in groups.values() if len(names) > 1]
    if not tied or is_accelerate_available():  # nothing tied, or optimum already did it
        return m
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp, "model.onnx"))
        remove_duplicate_weights_from_tied_info(m, model, tied, save_path=path)
        return onnx.load(path)


# ----------------------------------------------------------------------------- verification
def describe(model_dir: Path) -> dict:
    m = onnx.load(str(model_dir / "model.onnx"), load_external_data=False)
    ext = [t.name for t in m.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert not ext, f"{model_dir}: external initializers {ext[:3]}"
    n_params = sum(int(np.prod(t.dims)) for t in m.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)
    opset = {o.domain or "ai.onnx": o.version for o in m.opset_import}
    ops = Counter((n.domain + "::" if n.domain else "") + n.op_type for n in m.graph.node)
    sizes = {p.name: p.stat().st_size for p in sorted(model_dir.iterdir())}
    return dict(
        opset=opset,
        ops=dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        float_initializer_elements=n_params,
        inputs=[i.name for i in m.graph.input],
        outputs=[o.name for o in m.graph.output],
        sizes=sizes,
        total_bytes=sum(sizes.values()),
    )


def param_count(cfg: dict) -> int:
    """Parameters of a LlamaForCausalLM (no biases) from its config.json."""
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    layer = h * q + 2 * h * kv + q * h + 3 * h * i + 2 * h
    return cfg["num_hidden_layers"] * layer + h + v * h * (1 if cfg["tie_word_embeddings"] else 2)


def verify(root: Path, torch_models: dict | None = None) -> None:
    """onnxruntime greedy decoding with KV cache (tests/ort_reference.py) for both models.
    Demo: "Beautiful is" must continue with " better than ugly." and the rest of the Zen, exactly.
    If the torch models are at hand, ORT must also match them token for token."""
    from tokenizers import Tokenizer

    text = zen_text()
    for rel, limit in ((DEMO_REL, 2_000_000), (TINY_REL, 1_000_000)):
        d = root / rel
        assert sorted(p.name for p in d.iterdir()) == sorted(FILES), f"{d}: unexpected file set"
        info = describe(d)
        assert info["total_bytes"] < limit, f"{d}: {info['total_bytes']} bytes >= {limit}"
        assert info["inputs"][:3] == ["input_ids", "attention_mask", "position_ids"], info["inputs"]
        assert info["outputs"][0] == "logits", info["outputs"]
        cfg = json.loads((d / "config.json").read_text())
        assert len(info["inputs"]) == 3 + 2 * cfg["num_hidden_layers"]
        n_params = param_count(cfg)
        assert info["float_initializer_elements"] == n_params, (
            f"{d}: {info['float_initializer_elements']} weights stored for {n_params} parameters"
        )
        tok = Tokenizer.from_file(str(d / "tokenizer.json"))
        prompt = tok.encode(DEMO_PROMPT).ids
        ids, logits = greedy_tokens(d / "model.onnx", prompt, N_SHOW)
        out = tok.decode(ids)
        margins = [float(np.diff(np.sort(row)[-2:])[0]) for row in logits]
        print(f"\n== {rel}  ({info['total_bytes']} bytes: {info['sizes']})")
        print(f"   opset {info['opset']}, {info['float_initializer_elements']} fp32 initializer elements")
        print(f"   ops: {info['ops']}")
        print(f"   prompt {DEMO_PROMPT!r} -> ids {prompt}")
        print(f"   ORT greedy {N_SHOW} tokens (min top1-top2 margin {min(margins):.3f}): {ids}")
        print("   ----- continuation -----")
        print(DEMO_PROMPT + out)
        print("   ------------------------")
        if torch_models and rel in torch_models:
            ref, _ = torch_greedy(torch_models[rel], prompt, N_SHOW)
            assert ids == ref, f"{rel}: onnxruntime {ids} != torch {ref}"
            print("   onnxruntime == torch token for token")
        if rel == DEMO_REL:
            assert out.startswith(DEMO_EXPECT), f"demo continuation {out!r}"
            assert (DEMO_PROMPT + out) in text, "demo continuation is not the Zen text"
    print("\nverification OK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--out-dir",
        type=Path,
        default=REPO,
        help=f"root to write into: DIR/{DEMO_REL} and DIR/{TINY_REL} (default: the repository)",
    )
    ap.add_argument("--verify-only", action="store_true", help="only run the onnxruntime verification")
    args = ap.parse_args()
    root = args.out_dir.resolve()
    if args.verify_only:
        verify(root)
        return

    import torch

    torch.set_num_threads(TORCH_THREADS)
    torch.use_deterministic_algorithms(True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    text = zen_text()
    tok = train_tokenizer(text)
    n_text = len(tok.encode(text).ids)
    print(f"tokenizer: byte-level BPE, {tok.get_vocab_size()} tokens, Zen text = {n_text} ids incl. <s>")

    print("training the demo model ...")
    demo, secs, steps = train_demo(tok, text)
    n_demo = sum(p.numel() for p in demo.parameters())
    print(f"demo: {n_demo} parameters, trained {steps} steps in {secs:.1f} s")
    tiny, seed, margin = random_tiny(tok)
    n_tiny = sum(p.numel() for p in tiny.parameters())
    print(
        f"tiny-random: {n_tiny} parameters (tied embeddings counted once), seed {seed}, min greedy margin {margin:.3f}"
    )

    t0 = time.time()
    export(demo, tok, root / DEMO_REL)
    export(tiny, tok, root / TINY_REL)
    print(f"exported both in {time.time() - t0:.1f} s")
    verify(root, {DEMO_REL: demo, TINY_REL: tiny})


if __name__ == "__main__":
    main()
