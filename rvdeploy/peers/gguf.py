"""The bundle's weights as GGUF, for llama.cpp: found as a Hugging Face checkpoint (config.json +
*.safetensors) and converted with llama.cpp's own convert_hf_to_gguf.py (f32, f16, q8_0) or, for q4_0, by
llama.cpp's llama-quantize from the f32 GGUF (run on this machine). Converted files are
cached by the checkpoint's file names, sizes and times, the type and llama.cpp's version.

An ONNX-only model (such as the demo, or onnx-community's exports) has no checkpoint: there is nothing
llama.cpp's converter can read, so the comparison needs the HF weights of the same model (--hf-model).
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

from .. import children
from ..atomic import file_into_place
from ..boards.launch import last_line
from ..bundle import Bundle
from ..errors import RvdeployError
from ..paths import cache_dir
from ..targets import Target
from . import llamacpp_build

GGUF_TYPES = ("f32", "f16", "q8_0", "q4_0")
CONVERTED = ("f32", "f16", "q8_0")  # convert_hf_to_gguf.py --outtype; the rest come from llama-quantize
HF_PATTERNS = [
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
]
DEPS_HINT = 'pip install "rvdeploy[llamacpp]" (torch, transformers, sentencepiece: what the converter imports)'
Step = Callable[[str], None]


def _noop(_: str) -> None:
    pass


def matching_type(bundle: Bundle) -> str:
    """The GGUF type of the bundle's precision (llamacpp.toml [gguf_types]): rvdeploy's own quantization
    (build --quantize) if it has one, else the ONNX variant it was built from."""
    precision = bundle.manifest.model.precision
    types = llamacpp_build.CONFIG["gguf_types"]
    if precision not in types:
        raise RvdeployError(
            f"no GGUF type matches the bundle's precision {precision!r}",
            hint=f"pass --gguf-type ({', '.join(GGUF_TYPES)})",
        )
    return types[precision]


def check_type(t: str) -> str:
    t = t.lower()
    if t not in GGUF_TYPES:
        raise RvdeployError(f"--gguf-type {t!r}: not one of {', '.join(GGUF_TYPES)}")
    return t


def is_checkpoint(d: Path) -> bool:
    return d.is_dir() and (d / "config.json").is_file() and any(d.glob("*.safetensors"))


def _from_hub(repo: str, revision: str | None) -> Path | None:
    """The repo's checkpoint files through huggingface_hub (its cache, offline mode and endpoint as the
    environment says now, as for `build`); None when there are none."""
    from huggingface_hub import snapshot_download

    from ..source import hub_cache_dir, hub_endpoint, hub_offline

    offline = hub_offline()
    try:
        folder = Path(
            snapshot_download(
                repo_id=repo,
                revision=revision,
                allow_patterns=HF_PATTERNS,
                cache_dir=hub_cache_dir(),
                local_files_only=offline,
                endpoint=hub_endpoint(),
            )
        )
    except Exception:  # noqa: BLE001 - not cached offline, no such repo, no network: the caller says what to do
        return None
    return folder if is_checkpoint(folder) else None


def hf_checkpoint(bundle: Bundle, spec: str | None = None) -> Path:
    """The HF checkpoint of the bundle's model: SPEC (a directory or a hub repo id) if given, else the
    directory the bundle was built from (or its parent, for an onnx/ subfolder) or the same hub repo."""
    model = bundle.manifest.model
    if spec:
        path = Path(spec).expanduser()
        if path.exists():
            if is_checkpoint(path):
                return path
            raise RvdeployError(f"--hf-model {spec}: no config.json and *.safetensors there")
        found = _from_hub(spec, None)
        if found is None:
            raise RvdeployError(
                f"--hf-model {spec}: not a directory, and no cached hub checkpoint of that repo "
                "with config.json and *.safetensors",
                hint="download it, or pass its directory",
            )
        return found
    source, model_id = model.source, model.id
    if source in ("dir", "file"):
        p = Path(model_id)  # as given to `build` (relative paths are relative to where it ran)
        if not p.exists():
            raise RvdeployError(
                f"{model_id}, the model {bundle.path} was built from, is not here: --compare llama.cpp "
                "needs its Hugging Face weights",
                hint="pass --hf-model DIR",
            )
        base = p if source == "dir" else p.parent
        for c in (base, base.parent):  # beside the ONNX, or above an onnx/ subfolder
            if is_checkpoint(c):
                return c
    if source == "hub":
        found = _from_hub(model_id, model.revision)
        if found is not None:
            return found
    raise RvdeployError(
        f"{model_id} is an ONNX-only model here: --compare llama.cpp needs its Hugging Face weights "
        "(config.json + *.safetensors) to convert to GGUF",
        hint="pass --hf-model DIR or REPO holding the same weights",
    )


def _cache_key(checkpoint: Path, gguf_type: str) -> str:
    h = hashlib.sha256(f"{llamacpp_build.version()}\0{gguf_type}\0".encode())
    for f in sorted(checkpoint.iterdir()):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()[:16]


def gguf_path(checkpoint: Path, gguf_type: str) -> Path:
    return cache_dir() / "gguf" / f"{checkpoint.name}-{_cache_key(checkpoint.resolve(), gguf_type)}-{gguf_type}.gguf"


def _run(cmd: list[str], what: str, env: dict | None = None) -> None:
    proc = children.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        text = proc.stderr + proc.stdout
        if "No module named" in text:
            missing = text.split("No module named", 1)[1].split("\n", 1)[0].strip()
            raise RvdeployError(f"{what}: the converter needs the Python module {missing}", hint=DEPS_HINT)
        raise RvdeployError(f"{what} failed: {last_line(text)}")


def convert(checkpoint: Path, gguf_type: str, target: Target, step: Step = _noop) -> Path:
    """checkpoint -> GGUF of `gguf_type` (cached). q4_0 is quantized from the f32 GGUF by llama-quantize, the
    build for `target` (a riscv64 one under qemu-user here). GGUFs do not depend on the target."""
    gguf_type = check_type(gguf_type)
    out = gguf_path(checkpoint, gguf_type)
    if out.is_file():
        return out
    if gguf_type in CONVERTED:
        script, env = llamacpp_build.converter()
        step(f"converting {checkpoint.name} to GGUF {gguf_type}")
        with file_into_place(out) as tmp:
            _run(
                [sys.executable, str(script), str(checkpoint), "--outfile", str(tmp), "--outtype", gguf_type],
                f"convert_hf_to_gguf.py {checkpoint} --outtype {gguf_type}",
                env,
            )
        return out
    f32 = convert(checkpoint, "f32", target, step)
    tools = llamacpp_build.build(target, step)
    step(f"quantizing {f32.name} to {gguf_type.upper()}")
    quantize, env = [str(tools / "llama-quantize")], None
    if not target.is_host:  # the riscv64 build, under qemu-user here
        from ..boards.qemu import checked_qemu

        quantize, env = [checked_qemu(), *quantize], {**os.environ, "QEMU_CPU": target.qemu_cpu}
    with file_into_place(out) as tmp:
        _run([*quantize, str(f32), str(tmp), gguf_type.upper()], f"llama-quantize {f32.name} {gguf_type.upper()}", env)
    return out
