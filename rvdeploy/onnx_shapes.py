"""Stage: the two graphs that get imported, one per phase, written beside nothing but their metadata.

IREE compiles the decode step far better on a static (B=1, S=1) graph: the weight contractions
become plain matrix-vector products with M = 1. Prefill keeps the exported dynamic graph, because
IREE 3.13 fails on static or half-static prefill graphs (see FIELD-NOTES: expand_shape and
delinearize_index errors), while the fully dynamic one compiles.

Graphs with external data (every model over 2 GB) keep their weights where they are: the rewritten
graphs reference the original data files (the importer gets `--data-dir`), and only the few small
tensors stored out of line (rope tables) are copied inline, because the importer's `--large-model`
mode, needed past protobuf's 2 GB limit, does not read those.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto

from .errors import RvdeployError
from .graphinfo import walk_tensors

# optimum's dim names; anything else symbolic is left alone.
_BATCH = "batch_size"
_SEQ = "sequence_length"
_TOTAL = "past_sequence_length + sequence_length"
# External tensors up to this size are moved inline (rope inv_freq and friends).
INLINE_MAX_BYTES = 64 << 10


@dataclass(frozen=True)
class PhaseGraphs:
    prefill: Path
    decode: Path  # B=1, S=1; past length dynamic
    data_dir: Path  # where the graphs' external data lives
    large: bool  # weights in external data files: import with --large-model


def _fix_dims(model: onnx.ModelProto) -> None:
    for value in list(model.graph.input) + list(model.graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in (_BATCH, _SEQ):
                dim.dim_value = 1
            elif dim.dim_param == _TOTAL:
                dim.dim_param = "total_sequence_length"


def _inline_small_external(model: onnx.ModelProto, data_dir: Path) -> bool:
    """Read small external tensors into the graph; True when large external tensors remain."""
    large = False
    for t in walk_tensors(model.graph):
        if t.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        length = int(info.get("length", -1))
        if length < 0 or length > INLINE_MAX_BYTES:
            large = True
            continue
        path = data_dir / info["location"]
        try:
            with open(path, "rb") as f:
                f.seek(int(info.get("offset", 0)))
                data = f.read(length)
        except OSError as exc:
            raise RvdeployError(f"cannot read external data of {t.name} from {path}: {exc.strerror}") from exc
        if len(data) != length:
            raise RvdeployError(f"{path} is truncated: {t.name} needs {length} bytes at offset {info.get('offset', 0)}")
        t.raw_data = data
        t.data_location = TensorProto.DEFAULT
        del t.external_data[:]
    return large


def split_phases(onnx_path: Path, workdir: Path) -> PhaseGraphs:
    """Write prefill.onnx (as exported) and decode.onnx (static B=1, S=1) into workdir."""
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError, ...
        raise RvdeployError(f"{onnx_path}: not a readable ONNX model ({exc.__class__.__name__})") from exc
    large = _inline_small_external(model, onnx_path.parent)
    prefill = workdir / "prefill.onnx"
    onnx.save(model, str(prefill))
    _fix_dims(model)
    # Stale intermediate shapes (with a symbolic batch) contradict the now-static inputs and break
    # IREE's shape propagation; the importer re-infers them.
    del model.graph.value_info[:]
    decode = workdir / "decode.onnx"
    onnx.save(model, str(decode))
    return PhaseGraphs(prefill=prefill, decode=decode, data_dir=onnx_path.parent, large=large)
