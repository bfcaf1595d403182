#!/usr/bin/env python3
"""A bundle's bytes against llama.cpp's GGUF of the same checkpoint (issue 12: a 1B q4 bundle no larger than
the Q4_0 GGUF).

  python benchmarks/make_llama.py llama-3.2-1b DIR
  rvdeploy build --model DIR --target spacemit-k1 --quantize q4 -o B
  python benchmarks/bundle_size.py B --hf-model DIR [--gguf-type q4_0] [--json]

The GGUF is made as `bench --compare llama.cpp --gguf-type T` makes it (rvdeploy.peers.gguf: llama.cpp's
convert_hf_to_gguf.py, then llama-quantize for q4_0), cached; llama-quantize runs as the host build here (a
GGUF does not depend on the machine that quantizes it, and under qemu it would take far longer). The model's
bytes are model.vmfb + model.irpa; the bundle's also count the runtime, probe and tokenizer beside them. The
largest parameters are listed with their share.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rvdeploy.errors import RvdeployError  # noqa: E402
from rvdeploy.peers import gguf  # noqa: E402
from rvdeploy.targets import get_target  # noqa: E402

MODEL_FILES = ("model.vmfb", "model.irpa")


def _largest_parameters(irpa: Path, count: int = 6) -> list[tuple[str, int]]:
    import iree.runtime as rt

    index = rt.ParameterIndex()
    index.load(str(irpa))
    return sorted(((k, e.length) for k, e in index.items()), key=lambda kv: -kv[1])[:count]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--hf-model", type=Path, required=True, help="the HF checkpoint the bundle was built from")
    ap.add_argument("--gguf-type", default="q4_0")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    missing = [f for f in MODEL_FILES if not (args.bundle / f).is_file()]
    if missing:
        print(f"error: {args.bundle} is not a bundle (no {', '.join(missing)})", file=sys.stderr)
        return 2
    try:
        path = gguf.convert(args.hf_model, args.gguf_type, get_target("host"), lambda s: print(s, file=sys.stderr))
    except RvdeployError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    model = sum((args.bundle / f).stat().st_size for f in MODEL_FILES)
    whole = sum(f.stat().st_size for f in args.bundle.rglob("*") if f.is_file())
    result = {
        "bundle": str(args.bundle),
        "model_bytes": model,
        "bundle_bytes": whole,
        "gguf": str(path),
        "gguf_type": args.gguf_type,
        "gguf_bytes": path.stat().st_size,
        "model_vs_gguf": round(model / path.stat().st_size, 3),
        "largest_parameters": _largest_parameters(args.bundle / "model.irpa"),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    mb = 1e6
    print(f"bundle {args.bundle}: model (vmfb + irpa) {model / mb:.1f} MB, whole bundle {whole / mb:.1f} MB")
    print(f"llama.cpp {args.gguf_type.upper()} GGUF: {path.stat().st_size / mb:.1f} MB ({path.name})")
    print(f"model / GGUF = {result['model_vs_gguf']:.3f}")
    for key, n in result["largest_parameters"]:
        print(f"  {n / mb:9.1f} MB  {n / model:6.1%}  {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
