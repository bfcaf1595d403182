"""The llama.cpp side of `rvdeploy bench --compare llama.cpp`: llama.cpp's tools built for the ISA of the
board (once), and the bundle's weights as GGUF in the requested types (the bundle's precision by default)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..boards.base import Board
from ..bundle import Bundle
from ..targets import Target
from . import gguf, llamacpp_build


@dataclass(frozen=True)
class LlamaCpp:
    tools: Path  # llama-bench, llama-quantize, llama-completion
    ggufs: dict[str, Path]  # GGUF type -> file
    target: str  # the target profile whose ISA the tools are built for
    cpu: str  # the qemu -cpu string the tools run with on an emulated board here


def for_target(
    target: Target, checkpoint: Path, gguf_types: list[str], step: Callable[[str], None] | None = None
) -> LlamaCpp:
    """llama.cpp built for the target's ISA (once) and the checkpoint as GGUF in each type (cached)."""
    step = step or (lambda _: None)
    types = [gguf.check_type(t) for t in gguf_types]
    tools = llamacpp_build.build(target, step)
    return LlamaCpp(
        tools,
        {t: gguf.convert(checkpoint, t, target, step) for t in dict.fromkeys(types)},
        target.name,
        target.qemu_cpu,
    )


def prepare(
    bundle: Bundle,
    board: Board,
    hf_model: str | None = None,
    gguf_types: list[str] | None = None,
    step: Callable[[str], None] | None = None,
) -> LlamaCpp:
    """The llama.cpp side of comparing BUNDLE on BOARD: its HF checkpoint found (or --hf-model) before any
    build, the GGUF types given or the bundle's precision."""
    target = board.isa_target(bundle)
    types = [gguf.check_type(t) for t in gguf_types] if gguf_types else [gguf.matching_type(bundle)]
    checkpoint = gguf.hf_checkpoint(bundle, hf_model)  # first: an ONNX-only model stops here, before any build
    return for_target(target, checkpoint, types, step)
