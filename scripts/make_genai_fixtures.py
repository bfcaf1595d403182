#!/usr/bin/env python3
"""Make the onnxruntime-genai test fixtures (tests/fixtures/genai/): tiny models exported by onnxruntime-genai's
model builder, beside the optimum export of the same weights.

  python3 scripts/make_genai_fixtures.py --genai-python VENV/bin/python [--out tests/fixtures/genai]

onnxruntime-genai's builder needs transformers >= 5, which the test extras (optimum) exclude, so it runs in a
venv of its own:
  python3 -m venv VENV && VENV/bin/pip install onnxruntime-genai==0.18.0 'transformers>=5' onnx_ir torch==2.13.0

Made here (this interpreter: torch, transformers < 5, optimum, sentencepiece, i.e. `pip install -e ".[test]"`):
  qwen2-hf/     a seeded Qwen2ForCausalLM of the tiny Llama's shape (hidden 64, 2 layers, 4 heads / 2 KV heads,
                head_dim 16, vocab 320, tied embeddings, q/k/v biases), the tiny Llama's SentencePiece
                tokenizer, and its optimum export (model.onnx, --task text-generation-with-past)
Exported by the builder (`python -m onnxruntime_genai.models.builder -i HF -o OUT -p P -e cpu`):
  llama-fp32/, llama-int4/   from tests/fixtures/tiny-hf (its model.onnx is the optimum export of the same weights)
  qwen2-fp32/, qwen2-int4/   from qwen2-hf/
each keeping model.onnx, model.onnx.data, genai_config.json, tokenizer.json, tokenizer_config.json.
int4 is the builder's CPU default (RTN, block 32, accuracy level 4: what the hub's
`cpu-int4-rtn-block-32-acc-level-4` folders hold).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY_HF = ROOT / "tests" / "fixtures" / "tiny-hf"
KEEP = ("model.onnx", "model.onnx.data", "genai_config.json", "tokenizer.json", "tokenizer_config.json")
QWEN2 = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    vocab_size=320,
    tie_word_embeddings=True,
    rope_theta=10000.0,
    max_position_embeddings=256,
    bos_token_id=1,
    eos_token_id=2,
    rms_norm_eps=1e-5,
    use_sliding_window=False,
)
SEED = 0


def make_qwen2(out: Path) -> None:
    """A seeded tiny Qwen2 checkpoint with the tiny Llama's tokenizer, and its optimum export."""
    import torch
    from optimum.exporters.onnx import main_export
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(SEED)
    model = Qwen2ForCausalLM(Qwen2Config(**QWEN2, torch_dtype="float32"))
    with torch.no_grad():  # larger weights than the default init, so that greedy tokens are not all alike
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer_config.json",):  # the builder folders carry tokenizer.json
        shutil.copy(TINY_HF / name, out / name)
    with tempfile.TemporaryDirectory() as tmp:
        main_export(str(out), output=tmp, task="text-generation-with-past", device="cpu", do_validation=False)
        shutil.copy(Path(tmp) / "model.onnx", out / "model.onnx")


def builder(genai_python: str, hf: Path, out: Path, precision: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            genai_python,
            "-m",
            "onnxruntime_genai.models.builder",
            "-i",
            str(hf),
            "-o",
            tmp,
            "-p",
            precision,
            "-e",
            "cpu",
            "-c",
            str(Path(tmp) / "cache"),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"builder failed on {hf} ({precision}):\n{proc.stderr[-3000:]}")
        out.mkdir(parents=True, exist_ok=True)
        for name in KEEP:
            if (Path(tmp) / name).is_file():
                shutil.copy(Path(tmp) / name, out / name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--genai-python", required=True, help="python of a venv with onnxruntime-genai==0.18.0")
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "genai")
    args = ap.parse_args()
    make_qwen2(args.out / "qwen2-hf")
    for name, hf in (("llama", TINY_HF), ("qwen2", args.out / "qwen2-hf")):
        for precision in ("fp32", "int4"):
            builder(args.genai_python, hf, args.out / f"{name}-{precision}", precision)
    for p in sorted(args.out.rglob("*")):
        if p.is_file():
            print(f"{p.stat().st_size:>9}  {p.relative_to(args.out)}")


if __name__ == "__main__":
    main()
