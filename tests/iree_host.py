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
    if bundle.manifest.kv_cache:  # the module keeps the cache: ids and the cached count
        logits, tokens = [m.call("prefill", np.array([prompt], np.int64), 0)[0][0, -1]], []
        for step in range(steps):
            tokens.append(int(np.argmax(logits[-1])))
            logits.append(m.call("decode", np.array([tokens[-1:]], np.int64), n + step)[0][0, -1])
        return tokens, logits
    kv = [np.zeros((1, graph.num_kv_heads, 0, graph.head_dim), np.float32)] * (2 * graph.num_layers)

    def roles(ids: list[int], past: int) -> list[np.ndarray]:
        """The leading inputs the graph has (an onnxruntime-genai export has no position_ids), in its order."""
        values = {
            "input_ids": np.array([ids], np.int64),
            "attention_mask": np.ones((1, past + len(ids)), np.int64),
            "position_ids": np.arange(past, past + len(ids), dtype=np.int64)[None],
        }
        return [values[name] for name in graph.inputs if name in values]

    out = m.call("prefill", *roles(prompt, 0), *kv)
    logits, kv, tokens = [out[0][0, -1]], out[1:], []
    for step in range(steps):
        tokens.append(int(np.argmax(logits[-1])))
        out = m.call("decode", *roles(tokens[-1:], n + step), *kv)
        logits.append(out[0][0, -1])
        kv = out[1:]
    return tokens, logits


def prefill_returns_last_only(manifest) -> bool:
    """The prefill entry point returns the last position's logits only (rvdeploy.last_logits): [B, 1, V]."""
    results = manifest.entry_points["prefill"].split("->", 1)[1]
    return results.lstrip(" (").startswith("tensor<?x1x")


def _growing_cache_logits(bundle, m: HostModule, ids: list[int]) -> np.ndarray:
    """Logits at positions 0..n-2 from a module that takes and returns the KV cache: one prefill call's, or,
    when prefill returns the last position's only, a 1-token prefill's and then decode steps fed the text."""
    graph = bundle.manifest.model.graph
    n = len(ids)
    kv = [np.zeros((1, graph.num_kv_heads, 0, graph.head_dim), np.float32)] * (2 * graph.num_layers)

    def roles(part: list[int], past: int) -> list[np.ndarray]:
        values = {
            "input_ids": np.array([part], np.int64),
            "attention_mask": np.ones((1, past + len(part)), np.int64),
            "position_ids": np.arange(past, past + len(part), dtype=np.int64)[None],
        }
        return [values[name] for name in graph.inputs if name in values]

    if not prefill_returns_last_only(bundle.manifest):
        return m.call("prefill", *roles(ids, 0), *kv)[0][0][:-1].astype(np.float64)
    out = m.call("prefill", *roles(ids[:1], 0), *kv)
    rows = [out[0][0, -1]]
    for i in range(1, n - 1):
        out = m.call("decode", *roles(ids[i : i + 1], i), *out[1:])
        rows.append(out[0][0, -1])
    return np.stack(rows).astype(np.float64)


def perplexity(bundle, ids: list[int]) -> float:
    """exp(mean negative log-likelihood of ids[1:]) from the logits at every position of the text (a module
    that keeps its cache: prefill on the first token, then decode on each next)."""
    m = HostModule(bundle.path)
    n = len(ids)
    if bundle.manifest.kv_cache:
        rows = [m.call("prefill", np.array([ids[:1]], np.int64), 0)[0][0, -1]]
        rows += [m.call("decode", np.array([[t]], np.int64), i + 1)[0][0, -1] for i, t in enumerate(ids[1:-1])]
        logits = np.stack(rows).astype(np.float64)
    else:
        logits = _growing_cache_logits(bundle, m, ids)
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(np.exp(-logp[np.arange(n - 1), ids[1:]].mean()))
