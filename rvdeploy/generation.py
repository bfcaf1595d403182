"""Generation through the bundle's runner (rvdeploy/runner/runner.c): its command line from the manifest and
the sampling options, and its line protocol turned into events; text decoded as tokens arrive.

The runner prints one token id per line the moment it is chosen, then `end REASON` and `stats k=v ...` for
each turn; an interactive session reads the next turn from stdin as `MAX_NEW_TOKENS ID,ID,...`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from .bundle.manifest import Manifest
from .bundle.names import MODULE
from .errors import RvdeployError

RUNNER = "rvdeploy-runner"
_ROLES = {"input_ids": "ids", "attention_mask": "mask", "position_ids": "pos"}


@dataclass(frozen=True)
class Sampling:
    """Greedy when temperature is 0. The runner's header comment specifies the algorithm exactly."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def check(self) -> "Sampling":
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise RvdeployError(f"--temperature must be 0 (greedy) or more (got {self.temperature})")
        if not (0 < self.top_p <= 1):
            raise RvdeployError(f"--top-p must be in (0, 1] (got {self.top_p})")
        if self.top_k < 0:
            raise RvdeployError(f"--top-k must be 0 (all tokens) or more (got {self.top_k})")
        if not 0 <= self.seed < 2**63:
            raise RvdeployError(f"--seed must be in [0, 2^63) (got {self.seed})")
        return self

    def args(self) -> list[str]:
        return [
            f"--temperature={self.temperature!r}",
            f"--top_k={self.top_k}",
            f"--top_p={self.top_p!r}",
            f"--seed={self.seed}",
        ]


def eos_ids(manifest: Manifest) -> list[int]:
    return [int(i) for i in manifest.eos_token_ids]


def runner_args(
    manifest: Manifest,
    prompt_ids: list[int],
    max_new_tokens: int,
    sampling: Sampling,
    interactive: bool = False,
    device: str = "local-sync",
    stop_at_eos: bool = True,
) -> list[str]:
    """The runner's arguments, paths relative to the bundle directory (the launcher cd's there).
    local-sync: one thread, deterministic, no worker pool to start."""
    if not prompt_ids:
        raise RvdeployError("empty prompt: nothing to generate from")
    graph = manifest.model.graph
    if manifest.kv_cache:  # the module keeps the cache (rvdeploy.kvstate): ids and the cached count
        roles, kv = ["ids", "past"], []
    else:
        roles = [_ROLES[name] for name in graph.inputs if name in _ROLES]
        kv = [name for name in graph.inputs if name.startswith("past_key_values.")]
    params = manifest.parameters
    args = [
        f"--module={MODULE}",
        f"--parameters={params.scope}={params.file}",
        f"--device={device}",
        f"--inputs={','.join(roles)}",
        f"--kv_count={len(kv)}",
        f"--kv_heads={graph.num_kv_heads}",
        f"--head_dim={graph.head_dim}",
        f"--kv_type={'f16' if graph.dtype == 'f16' else 'f32'}",
        f"--prompt={','.join(str(int(i)) for i in prompt_ids)}",
        f"--max_new_tokens={int(max_new_tokens)}",
        f"--context={int(manifest.max_context)}",
        *sampling.args(),
    ]
    eos = eos_ids(manifest) if stop_at_eos else []
    if eos:
        args.append(f"--eos={','.join(map(str, eos))}")
    if interactive:
        args.append("--interactive")
    return args


def turn_line(prompt_ids: list[int], max_new_tokens: int) -> str:
    """What an interactive session reads for its next turn."""
    return f"{int(max_new_tokens)} {','.join(str(int(i)) for i in prompt_ids)}\n"


@dataclass
class Turn:
    """One turn's outcome: the ids, why it ended, the runner's own timings."""

    ids: list[int] = field(default_factory=list)
    reason: str = ""
    stats: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def parse_line(line: str, turn: Turn) -> int | None:
    """Update TURN from one line of the runner; returns the token id when the line is one."""
    text = line.strip()
    if not text:
        return None
    if text.isdigit():
        token = int(text)
        turn.ids.append(token)
        return token
    word, _, rest = text.partition(" ")
    if word == "end":
        turn.reason = rest
    elif word == "stats":
        for item in rest.split():
            key, _, value = item.partition("=")
            try:
                turn.stats[key] = int(value)
            except ValueError:
                turn.stats[key] = float(value)
    else:
        raise RvdeployError(f"{RUNNER} printed something it never prints: {text[:120]!r}")
    return None


def rates(stats: dict) -> dict:
    """Tokens per second from a turn's stats: prefill over the prompt, decode over the decode steps."""
    pp = stats.get("prompt_tokens", 0) / stats["prefill_s"] if stats.get("prefill_s") else None
    tg = stats.get("decode_steps", 0) / stats["decode_s"] if stats.get("decode_s") else None
    return {"prefill_tokens_per_s": pp, "decode_tokens_per_s": tg}


class TextStream:
    """Incremental detokenization: the new text for each token, never half a UTF-8 character (a byte-level
    token that ends inside a character is held back until the rest arrives)."""

    def __init__(self, codec):
        self.codec = codec
        self.ids: list[int] = []
        self.shown = ""

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.codec.decode(self.ids)
        if text.endswith("\ufffd"):  # an incomplete character: wait for the next token
            return ""
        new = text[len(self.shown) :] if text.startswith(self.shown) else text
        self.shown = text
        return new

    def flush(self) -> str:
        text = self.codec.decode(self.ids)
        new = text[len(self.shown) :] if text.startswith(self.shown) else ""
        self.shown = text
        return new
