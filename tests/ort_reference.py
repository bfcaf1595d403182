"""onnxruntime greedy decoding: the numerical reference for optimum-style decoder exports.

Works for any `optimum-cli export onnx --task text-generation-with-past` style model
(onnx-community Llama exports have the same interface), and for onnxruntime-genai builder exports (the same
names, no position_ids, head_dim from genai_config.json; onnxruntime runs their fused ops itself):

  inputs   input_ids [B,S] i64, attention_mask [B,P+S] i64, position_ids [B,S] i64 (optional),
           past_key_values.N.key / past_key_values.N.value [B, kv_heads, P, head_dim]
  outputs  logits [B,S,V], present.N.key / present.N.value [B, kv_heads, P+S, head_dim]

Everything (layer count, KV heads, head dim, KV dtype) is read from the graph inputs; when the
graph leaves the KV head count or head dim symbolic, config.json beside the model fills them in.
Deliberately free of torch so the tests can use it without the demo-building dependencies.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort

_PAST_RE = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(bfloat16)": None,  # numpy has no bf16; rejected below
}


def _kv_layout(session: ort.InferenceSession, onnx_path: Path) -> tuple[list[str], int, int, np.dtype]:
    """(past input names in layer order key,value,..., kv_heads, head_dim, dtype)."""
    past = {}
    for inp in session.get_inputs():
        m = _PAST_RE.match(inp.name)
        if m:
            past[(int(m.group(1)), m.group(2))] = inp
    if not past:
        return [], 0, 0, np.dtype(np.float32)
    n_layers = max(layer for layer, _ in past) + 1
    names = []
    for layer in range(n_layers):
        for kind in ("key", "value"):
            if (layer, kind) not in past:
                raise ValueError(f"{onnx_path}: missing input past_key_values.{layer}.{kind}")
            names.append(past[(layer, kind)].name)
    first = past[(0, "key")]
    np_dtype = _ORT_DTYPES.get(first.type)
    if np_dtype is None:
        raise ValueError(f"{onnx_path}: unsupported KV cache type {first.type}")
    shape = first.shape  # [batch, kv_heads, past_len, head_dim]; symbolic dims are str/None
    kv_heads, head_dim = shape[1], shape[3]
    genai_path = onnx_path.parent / "genai_config.json"  # onnxruntime-genai exports: head_dim is "kv_cache_dim"
    if (not isinstance(kv_heads, int) or not isinstance(head_dim, int)) and genai_path.is_file():
        dec = json.loads(genai_path.read_text())["model"]["decoder"]
        kv_heads = kv_heads if isinstance(kv_heads, int) else dec["num_key_value_heads"]
        head_dim = head_dim if isinstance(head_dim, int) else dec["head_size"]
    if not isinstance(kv_heads, int) or not isinstance(head_dim, int):
        cfg_path = onnx_path.parent / "config.json"
        if not cfg_path.is_file():
            raise ValueError(f"{onnx_path}: symbolic KV shape {shape} and no config.json beside it")
        cfg = json.loads(cfg_path.read_text())
        n_heads = cfg["num_attention_heads"]
        if not isinstance(kv_heads, int):
            kv_heads = cfg.get("num_key_value_heads", n_heads)
        if not isinstance(head_dim, int):
            head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_heads
    return names, int(kv_heads), int(head_dim), np.dtype(np_dtype)


def greedy_tokens(
    onnx_path,
    prompt_ids: list[int],
    max_new_tokens: int,
    *,
    eos_token_id: int | None = None,
    intra_op_num_threads: int = 1,
    choose=None,
) -> tuple[list[int], list[np.ndarray]]:
    """Greedy decoding with onnxruntime and a KV cache.

    The prompt is prefilled in one run; then one token per run, feeding present.* back as
    past_key_values.*, attention_mask all ones, position_ids = absolute positions.
    Returns (generated ids, the last-position logits of every step as float32 1-D arrays);
    logits[i] is the distribution generated[i] was taken from. Stops early only when
    eos_token_id is given and generated. A graph without past inputs is run on the whole
    sequence every step. `choose(logits) -> id` replaces argmax (a sampler).
    """
    onnx_path = Path(onnx_path)
    if not prompt_ids:
        raise ValueError("prompt_ids must not be empty")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_num_threads  # 1 = reproducible reductions
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    input_names = {i.name for i in sess.get_inputs()}
    output_names = [o.name for o in sess.get_outputs()]
    if "logits" not in output_names:
        raise ValueError(f"{onnx_path}: no 'logits' output (outputs: {output_names})")
    past_names, kv_heads, head_dim, kv_dtype = _kv_layout(sess, onnx_path)
    present_names = [n.replace("past_key_values.", "present.", 1) for n in past_names]
    missing = [n for n in present_names if n not in output_names]
    if missing:
        raise ValueError(f"{onnx_path}: outputs {missing} missing for inputs {past_names}")

    past = {n: np.zeros((1, kv_heads, 0, head_dim), dtype=kv_dtype) for n in past_names}
    seq = [int(t) for t in prompt_ids]
    generated: list[int] = []
    step_logits: list[np.ndarray] = []
    new = list(seq)  # tokens not yet seen by the model
    for _ in range(max_new_tokens):
        if past_names:
            past_len = len(seq) - len(new)
            chunk = new
        else:
            past_len, chunk = 0, seq
        feeds = {"input_ids": np.asarray([chunk], dtype=np.int64)}
        if "attention_mask" in input_names:
            feeds["attention_mask"] = np.ones((1, past_len + len(chunk)), dtype=np.int64)
        if "position_ids" in input_names:
            feeds["position_ids"] = np.arange(past_len, past_len + len(chunk), dtype=np.int64)[None, :]
        feeds.update(past)
        outs = dict(zip(output_names, sess.run(output_names, feeds)))
        last = np.asarray(outs["logits"][0, -1], dtype=np.float32).copy()
        tok = int(np.argmax(last)) if choose is None else int(choose(last))
        generated.append(tok)
        step_logits.append(last)
        past = {p: outs[q] for p, q in zip(past_names, present_names)}
        seq.append(tok)
        new = [tok]
        if eos_token_id is not None and tok == eos_token_id:
            break
    return generated, step_logits
