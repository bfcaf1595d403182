"""The runner's sampler (rvdeploy/runner/runner.c, header comment) written again in Python, to recompute a
seeded sample from onnxruntime's logits."""

from __future__ import annotations

import math

import numpy as np

MASK64 = (1 << 64) - 1


class Pcg32:
    """O'Neill's pcg32_random_r (XSH RR), seeded as pcg32_srandom_r(seed, 54)."""

    def __init__(self, seed: int, seq: int = 54):
        self.state = 0
        self.inc = ((seq << 1) | 1) & MASK64
        self.next()
        self.state = (self.state + seed) & MASK64
        self.next()

    def next(self) -> int:
        old = self.state
        self.state = (old * 6364136223846793005 + self.inc) & MASK64
        xorshifted = (((old >> 18) ^ old) >> 27) & 0xFFFFFFFF
        rot = old >> 59
        return ((xorshifted >> rot) | (xorshifted << ((-rot) & 31))) & 0xFFFFFFFF


def sample(logits: np.ndarray, rng: Pcg32, temperature: float, top_k: int = 0, top_p: float = 1.0) -> int:
    logits = np.asarray(logits, dtype=np.float32)
    if temperature <= 0:
        return int(np.argmax(logits))
    t = float(np.float32(temperature))
    z = [float(v) / t for v in logits]
    order = sorted(range(len(z)), key=lambda i: (-z[i], i))
    n = len(order) if top_k <= 0 or top_k >= len(order) else top_k
    top = z[order[0]]
    p = [math.exp(z[order[i]] - top) for i in range(n)]
    total = sum(p)
    if top_p < 1.0:
        cum, keep = 0.0, n
        for i in range(n):
            cum += p[i] / total
            if cum >= float(np.float32(top_p)):
                keep = i + 1
                break
        n = keep
        total = sum(p[:n])
    u = rng.next() / 4294967296.0
    cum = 0.0
    for i in range(n):
        cum += p[i] / total
        if cum > u:
            return order[i]
    return order[n - 1]
