"""Call a host bundle's entry points in-process with IREE's Python runtime (for logits checks)."""

from __future__ import annotations

from pathlib import Path

import iree.runtime as rt
import numpy as np


class HostModule:
    def __init__(self, bundle: Path):
        self.config = rt.Config("local-sync")
        index = rt.ParameterIndex()
        index.load(str(bundle / "model.irpa"))
        params = rt.create_io_parameters_module(self.config.vm_instance, index.create_provider(scope="model"))
        hal = rt.create_hal_module(self.config.vm_instance, self.config.device)
        main = rt.VmModule.mmap(self.config.vm_instance, str(bundle / "model.vmfb"))
        self.module = rt.load_vm_modules(params, hal, main, config=self.config)[-1]

    def call(self, name: str, *args: np.ndarray) -> list[np.ndarray]:
        out = getattr(self.module, name)(*args)
        out = out if isinstance(out, (tuple, list)) else [out]
        return [np.array(o.to_host(), copy=True) for o in out]  # device memory is reused by the next call


def greedy_logits(bundle, prompt: list[int], steps: int) -> tuple[list[int], list[np.ndarray]]:
    """prefill on `prompt`, then `steps` decode steps fed the module's own KV cache and its argmax tokens:
    (the tokens fed to decode, the last-position logits of prefill and of each decode step)."""
    graph = bundle.manifest.model.graph
    m = HostModule(bundle.path)
    n = len(prompt)
    kv = [np.zeros((1, graph.num_kv_heads, 0, graph.head_dim), np.float32)] * (2 * graph.num_layers)
    def roles(ids: list[int], past: int) -> list[np.ndarray]:
        """The leading inputs the graph has (an onnxruntime-genai export has no position_ids), in its order."""
        values = {"input_ids": np.array([ids], np.int64), "attention_mask": np.ones((1, past + len(ids)), np.int64),
                  "position_ids": np.arange(past, past + len(ids), dtype=np.int64)[None]}
        return [values[name] for name in graph.inputs if name in values]

    out = m.call("prefill", *roles(prompt, 0), *kv)
    logits, kv, tokens = [out[0][0, -1]], out[1:], []
    for step in range(steps):
        tokens.append(int(np.argmax(logits[-1])))
        out = m.call("decode", *roles(tokens[-1:], n + step), *kv)
        logits.append(out[0][0, -1])
        kv = out[1:]
    return tokens, logits


def perplexity(bundle, ids: list[int]) -> float:
    """exp(mean negative log-likelihood of ids[1:]) from one prefill call's logits over the whole text."""
    graph = bundle.manifest.model.graph
    m = HostModule(bundle.path)
    n = len(ids)
    kv = [np.zeros((1, graph.num_kv_heads, 0, graph.head_dim), np.float32)] * (2 * graph.num_layers)
    logits = m.call("prefill", np.array([ids], np.int64), np.ones((1, n), np.int64), np.arange(n)[None], *kv)[0][0]
    logits = logits[:-1].astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(np.exp(-logp[np.arange(n - 1), ids[1:]].mean()))
