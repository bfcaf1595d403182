#!/usr/bin/env python3
"""Make a random-weight Llama of a named shape, exported like onnx-community's fp32 models.

  python benchmarks/make_llama.py {llama-3.2-1b|llama-3.2-1b-attention|mid|tiny} DIR [--validate] [--force]

The model is a seeded LlamaForCausalLM (never trained), saved as an HF checkpoint and exported with
optimum's `main_export(task="text-generation-with-past")`, i.e. what `optimum-cli export onnx --task
text-generation-with-past` does. DIR receives model.onnx (+ model.onnx_data when optimum puts the weights
in external data, i.e. above 2 GB), config.json, generation_config.json, and the HF checkpoint beside them
(model.safetensors, fp32) with a small SentencePiece tokenizer (tokenizer.model, trained on the Zen of
Python, up to 320 pieces with byte fallback): what llama.cpp's convert_hf_to_gguf.py needs for the same weights
(it pads the vocabulary to vocab_size). The benchmarks feed token ids, so the tokenizer's size does not
matter. A `make_llama.json` stamp (shape, seed, sizes) is written last; if DIR already has a stamp for the
same shape and seed, nothing is done (use --force to redo).

Shapes:
  llama-3.2-1b  hidden 2048, 16 layers, 32 heads / 8 KV heads (head_dim 64), intermediate 8192,
                vocab 128256, tied embeddings, rope_theta 500000 with Llama-3 rope scaling,
                max_position_embeddings 2048 (the real model has 131072; only the rope table differs;
                transformers then warns that original_max_position_embeddings 8192 exceeds it: harmless).
  llama-3.2-1b-attention
                the 1B's attention (hidden 2048, 32 heads / 8 KV heads, head_dim 64, its rope and context)
                in 2 layers, intermediate 256, vocab 8192: decode's growth with the context is 1/8 of the
                1B's, and a long prefill under qemu takes minutes, not hours (benchmarks/decode_depth.py).
  mid           hidden 512, 4 layers, 8 heads / 4 KV heads (head_dim 64), intermediate 1408,
                vocab 8192, tied embeddings, rope_theta 10000, max_position_embeddings 512.
  tiny          hidden 64, 2 layers, 4 heads / 2 KV heads (head_dim 16), intermediate 128, vocab 320, tied;
                the test fixture tests/fixtures/tiny-hf (about 1 MB).

Without `accelerate` installed, optimum stores the tied lm_head a second time (transposed) in the
export: the file sizes printed at the end show it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

SEED = 0
SHAPES = {
    "llama-3.2-1b": dict(
        hidden_size=2048,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        intermediate_size=8192,
        vocab_size=128256,
        tie_word_embeddings=True,
        rope_theta=500000.0,
        rope_scaling={
            "factor": 32.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        max_position_embeddings=2048,
        bos_token_id=128000,
        eos_token_id=128001,
    ),
    "mid": dict(
        hidden_size=512,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=64,
        intermediate_size=1408,
        vocab_size=8192,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
    ),
    "tiny": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=128,
        vocab_size=320,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        initializer_range=0.2,
    ),
}
# the 1B's attention (hidden, heads, head_dim, rope, context) in 2 of its 16 layers, with a small MLP and
# vocabulary: what a decode step adds per token of context, 1/8 of the 1B's, at a fraction of its prefill
SHAPES["llama-3.2-1b-attention"] = {
    **SHAPES["llama-3.2-1b"],
    "num_hidden_layers": 2,
    "intermediate_size": 256,
    "vocab_size": 8192,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
KEEP = ("model.onnx", "model.onnx_data", "config.json", "generation_config.json")
HF_KEEP = ("model.safetensors",)
TOKENIZER_PIECES = 320
STAMP = "make_llama.json"


def _peak_rss_gb() -> float:
    # ru_maxrss is in KiB on Linux; this process only (the export runs in-process).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def write_tokenizer(out: Path) -> None:
    """A SentencePiece model (the Llama 2 kind: tokenizer.model, BOS 1, EOS 2) trained on the Zen of Python;
    deterministic (one thread, fixed seed sentence order)."""
    import codecs
    import contextlib
    import io

    import sentencepiece as spm

    with contextlib.redirect_stdout(io.StringIO()):  # importing `this` prints the Zen
        import this
    text = codecs.decode(this.s, "rot13")
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp, "zen.txt")
        corpus.write_text(text)
        spm.SentencePieceTrainer.train(
            input=str(corpus),
            model_prefix=str(Path(tmp, "tok")),
            vocab_size=TOKENIZER_PIECES,
            model_type="bpe",
            byte_fallback=True,
            hard_vocab_limit=False,
            num_threads=1,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            minloglevel=2,
        )
        shutil.copyfile(Path(tmp, "tok.model"), out / "tokenizer.model")
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizer",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "add_bos_token": True,
                "add_eos_token": False,
                "legacy": True,
            },
            indent=1,
        )
        + "\n"
    )


def cached(out: Path, shape: str) -> dict | None:
    try:
        stamp = json.loads((out / STAMP).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if stamp.get("shape") != shape or stamp.get("seed") != SEED:
        return None
    if not all((out / f).is_file() for f in [*stamp.get("sizes", {}), *HF_KEEP, "tokenizer.model"]):
        return None  # also an export made before the HF checkpoint was kept
    return stamp


def make(shape: str, out: Path, validate: bool) -> dict:
    import numpy as np
    import torch
    from optimum.exporters.onnx import main_export
    from transformers import LlamaConfig, LlamaForCausalLM

    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    t0 = time.perf_counter()
    cfg = LlamaConfig(
        rms_norm_eps=1e-5,
        hidden_act="silu",
        use_cache=True,
        torch_dtype="float32",
        attention_bias=False,
        mlp_bias=False,
        **SHAPES[shape],
    )
    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="make_llama-", dir=parent) as tmp:
        hf, onnx_dir = Path(tmp, "hf"), Path(tmp, "onnx")
        model = LlamaForCausalLM(cfg).eval()
        n_params = sum(p.numel() for p in model.parameters())  # tied weights counted once
        n_embed = model.model.embed_tokens.weight.numel()
        model.save_pretrained(hf)
        del model  # main_export loads the checkpoint again, as optimum-cli would
        t_model = time.perf_counter() - t0
        print(
            f"{shape}: {n_params / 1e6:.2f}M parameters ({(n_params - n_embed) / 1e6:.2f}M outside the "
            f"embedding), checkpoint written in {t_model:.1f} s",
            file=sys.stderr,
        )
        main_export(
            str(hf), output=str(onnx_dir), task="text-generation-with-past", device="cpu", do_validation=validate
        )
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        for name in KEEP:
            if (onnx_dir / name).exists():
                os.replace(onnx_dir / name, out / name)
        for name in HF_KEEP:  # the same weights as an HF checkpoint, for llama.cpp's converter
            os.replace(hf / name, out / name)
        write_tokenizer(out)
    sizes = {p.name: p.stat().st_size for p in sorted(out.iterdir())}
    stamp = {
        "shape": shape,
        "seed": SEED,
        "config": SHAPES[shape],
        "parameters": n_params,
        "parameters_outside_embedding": n_params - n_embed,
        "sizes": sizes,
        "export_seconds": round(time.perf_counter() - t0, 1),
        "peak_rss_gb": round(_peak_rss_gb(), 2),
        "validated": validate,
    }
    (out / STAMP).write_text(json.dumps(stamp, indent=1) + "\n")
    return stamp


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    ap.add_argument("shape", choices=sorted(SHAPES))
    ap.add_argument("dir", type=Path, help="output directory (model.onnx, model.onnx_data, config.json)")
    ap.add_argument(
        "--validate",
        action="store_true",
        help="let optimum compare onnxruntime against torch (slow and memory-hungry at 1B)",
    )
    ap.add_argument("--force", action="store_true", help="re-export even if DIR already has this model")
    args = ap.parse_args()
    stamp = None if args.force else cached(args.dir, args.shape)
    if stamp:
        print(f"cached: {args.dir} already holds {args.shape} (seed {SEED}); --force to redo", file=sys.stderr)
    else:
        stamp = make(args.shape, args.dir, args.validate)
        print(
            f"exported in {stamp['export_seconds']} s, peak RSS {stamp['peak_rss_gb']} GB (this process, ru_maxrss)",
            file=sys.stderr,
        )
    print(f"{args.dir}: {args.shape}, {stamp['parameters'] / 1e6:.2f}M parameters (seed {stamp['seed']})")
    for name, size in stamp["sizes"].items():
        print(f"  {name:24s} {size / 1e6:12.1f} MB")
    print(f"  {'total':24s} {sum(stamp['sizes'].values()) / 1e6:12.1f} MB")


if __name__ == "__main__":
    main()
