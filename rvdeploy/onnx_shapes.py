"""Stage: fix the symbolic dims of an optimum-style causal-LM ONNX graph for one phase.

IREE compiles the decode step far better on a static (B=1, S=1) graph: the weight contractions
become plain matrix-vector products with M = 1. Prefill keeps the exported dynamic graph, because
IREE 3.13 fails on static or half-static prefill graphs (see FIELD-NOTES: expand_shape and
delinearize_index errors), while the fully dynamic one compiles.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from .errors import RvdeployError

# optimum's dim names; anything else symbolic is left alone.
_BATCH = "batch_size"
_SEQ = "sequence_length"
_TOTAL = "past_sequence_length + sequence_length"


@dataclass(frozen=True)
class PhaseGraphs:
    prefill: Path  # the graph as exported
    decode: Path  # B=1, S=1; past length dynamic
    data_dir: Path  # where the graphs' external data lives


def _fix_dims(model: onnx.ModelProto) -> None:
    for value in list(model.graph.input) + list(model.graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in (_BATCH, _SEQ):
                dim.dim_value = 1
            elif dim.dim_param == _TOTAL:
                dim.dim_param = "total_sequence_length"


def split_phases(onnx_path: Path, workdir: Path) -> PhaseGraphs:
    """Write decode.onnx (static B=1, S=1) into workdir; prefill stays the source graph."""
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError, ...
        raise RvdeployError(f"{onnx_path}: not a readable ONNX model ({exc.__class__.__name__})") from exc
    _fix_dims(model)
    # Stale intermediate shapes (with a symbolic batch) contradict the now-static inputs and break
    # IREE's shape propagation; the importer re-infers them.
    del model.graph.value_info[:]
    decode = workdir / "decode.onnx"
    onnx.save(model, str(decode))
    return PhaseGraphs(prefill=onnx_path, decode=decode, data_dir=onnx_path.parent)
