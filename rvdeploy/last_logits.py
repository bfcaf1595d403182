"""Prefill computes the logits of the last position only: the runner and `generate` read only that row of a
[B, S, V] result (the next token comes from it), and lm_head over every prompt position is a large share of
prefill's multiply-adds (26 % of the mid model's, 17 % at Llama-3.2-1B).

The rewrite walks back from the `logits` output through position-wise ops (Cast, and Mul/Add/Sub/Div whose
other operand holds no sequence axis: a bias, int8 scales) to the weight contraction (MatMul or MatMulInteger on
a weight computed from initializers only) and slices its activation to the last position (Slice on axis 1).
An int8 activation is sliced after its DynamicQuantizeLinear, so the quantization scale still comes from the
whole prompt and the numbers stay onnxruntime's. The prefill graph then returns logits [B, 1, V] (its
signature in the manifest's entry_points says so); a graph of another shape is left as it is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

LOGITS = "logits"
CONTRACTIONS = ("MatMul", "MatMulInteger")
POSITIONWISE = ("Cast", "Mul", "Add", "Sub", "Div")
SLICED = "rvdeploy.last_position"


def _producers(graph) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def _input_dependent(graph) -> set[str]:
    """The values computed from a graph input (ONNX nodes are in topological order); the rest are constants."""
    dynamic = {i.name for i in graph.input}
    for node in graph.node:
        if any(i in dynamic for i in node.input):
            dynamic.update(node.output)
    return dynamic


def _rank(graph, name: str, inits: dict) -> int | None:
    if name in inits:
        return len(inits[name].dims)
    for vi in list(graph.value_info) + list(graph.input) + list(graph.output):
        if vi.name == name and vi.type.tensor_type.HasField("shape"):
            return len(vi.type.tensor_type.shape.dim)
    return None


def slice_last_position(model: onnx.ModelProto) -> bool:
    """Rewrite `model` in place so that its logits are computed for the last position only; False (model
    untouched) when the logits do not come from a weight contraction through position-wise ops."""
    graph = model.graph
    outputs = {o.name: o for o in graph.output}
    if LOGITS not in outputs or len(outputs[LOGITS].type.tensor_type.shape.dim) != 3:
        return False
    if any(n.name.startswith(SLICED) for n in graph.node):
        return False  # already rewritten
    producers = _producers(graph)
    inits = {t.name: t for t in graph.initializer}
    dynamic = _input_dependent(graph)
    # the ranks of intermediate values, where the exporter did not record them
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
    chain, name = [], LOGITS
    while name in producers and producers[name].op_type in POSITIONWISE:
        node = producers[name]
        # one operand carries the positions; any other is a scalar or a [V] vector (a bias, int8 scales)
        ranks = {i: _rank(inferred, i, inits) for i in node.input}
        main = [i for i in node.input if ranks[i] is None or ranks[i] > 1]
        if len(main) != 1 or main[0] not in dynamic:
            return False
        chain.append(name)
        name = main[0]
    node = producers.get(name)
    if node is None or node.op_type not in CONTRACTIONS or len(node.input) < 2:
        return False
    if node.input[1] in dynamic or _rank(inferred, node.input[0], inits) != 3:
        return False
    chain.append(name)
    act = node.input[0]
    last = f"{act}/{SLICED}"
    starts, ends, axes = (f"{SLICED}/{k}" for k in ("starts", "ends", "axes"))
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([-1], np.int64), starts),
            numpy_helper.from_array(np.array([np.iinfo(np.int64).max], np.int64), ends),
            numpy_helper.from_array(np.array([1], np.int64), axes),
        ]
    )
    index = list(graph.node).index(node)
    graph.node.insert(index, helper.make_node("Slice", [act, starts, ends, axes], [last], name=f"{SLICED}/Slice"))
    node.input[0] = last
    # the values from the contraction to the logits now hold one position: drop their recorded shapes
    stale = set(chain)
    kept = [vi for vi in graph.value_info if vi.name not in stale]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    seq = outputs[LOGITS].type.tensor_type.shape.dim[1]
    seq.Clear()
    seq.dim_value = 1
    return True


def prefill_last_logits(prefill: Path) -> bool:
    """Rewrite the prefill graph file (rvdeploy.onnx_shapes.split_phases' prefill.onnx) in place; True when
    its logits are now the last position's only."""
    model = onnx.load(str(prefill), load_external_data=False)
    if not slice_last_position(model):
        return False
    tmp = prefill.with_name(prefill.name + ".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(prefill)
    return True
