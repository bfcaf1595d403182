"""Stage check: the graph is an LLM rvdeploy can build (rvdeploy.graphinfo), its context length, and the graph
brought to the form the importer takes: an onnxruntime-genai export to the common interface
(rvdeploy.genai_interface), quantized when asked (rvdeploy.quantize), quantized ops normalized
(rvdeploy.qgraph)."""

from __future__ import annotations

from dataclasses import replace

from .. import modelconfig
from ..bundle.manifest import Quantization
from ..genai_interface import io_names, prepare as prepare_interface, read_config as read_genai_config
from ..graphinfo import inspect_graph
from ..qgraph import normalize as normalize_quantized
from ..quantize import quantize_file
from ..source import materialize
from .context import BuildContext

QUANTIZED_BY = "rvdeploy.quantize"


def run(ctx: BuildContext) -> BuildContext:
    req, files, work = ctx.request, ctx.files, ctx.work
    graph = inspect_graph(files.onnx)
    genai = read_genai_config(files.onnx)
    if files.config is None and genai is not None and genai.context_length and req.max_context is None:
        context = genai.context_length  # an onnxruntime-genai folder carries genai_config.json, not config.json
    else:
        context = modelconfig.context_length(files.config, req.max_context, req.model)
    onnx_path = materialize(files.onnx, work / "source")
    onnx_path, interface = prepare_interface(onnx_path, work / "interface", graph.num_kv_heads, graph.head_dim, genai)
    if interface:
        graph = replace(graph, **io_names(onnx_path))
    if req.quantize:
        quantized_path = work / "quantized" / "model.onnx"
        count = quantize_file(onnx_path, quantized_path, req.quantize)
        onnx_path = quantized_path
        ctx.quantized = Quantization(req.quantize, QUANTIZED_BY, count)
    onnx_path, normalized = normalize_quantized(onnx_path, work / "normalized")
    ctx.graph, ctx.genai, ctx.context_length, ctx.onnx = graph, genai, context, onnx_path
    ctx.fused_ops_rewritten, ctx.quantized_ops_rewritten = interface, normalized
    return ctx
