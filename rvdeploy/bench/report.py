"""What bench returns: the report (rows, labels, estimate, cost, notes) and the ratios of the bundle to what it
is compared with."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..bundle import Bundle
from .estimate import model_facts
from .measure import Measurement


def bundle_label(bundle: Bundle) -> dict:
    m = bundle.manifest
    facts = model_facts(bundle)
    return {
        "model": f"{m.model.id} {m.model.variant or ''}".strip(),
        "size_bytes": m.model_bytes,
        "params": facts.params,
        "pipeline": m.pipeline.name,
        "target": m.target.name,
        "bundle": str(bundle.path),
    }


@dataclass
class BenchReport:
    board: str | None
    threads: int
    prompt_tokens: int
    gen_tokens: int
    reps: int
    bundles: list[dict] = field(default_factory=list)  # bundle_label per pipeline
    results: list[Measurement] = field(default_factory=list)
    ratios: dict = field(default_factory=dict)  # test -> {other: bundle t/s / other t/s}
    estimate: dict | None = None
    cost: dict | None = None  # pipeline or llama.cpp backend -> per-token counts
    cost_ratios: dict = field(default_factory=dict)  # phase -> {other: bundle instructions / other's}
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "results"}
        d["results"] = [r.to_dict() for r in self.results]
        d["method"] = {
            "pp": f"P / the runner's prefill time for a {self.prompt_tokens}-token prompt",
            "tg": f"N / the time of the runner's N decode steps after a {self.prompt_tokens}-token prompt",
            "stat": "mean and sample stddev over -r runner processes",
        }
        return d


def ratios(results: list[Measurement], main: str) -> dict:
    """test -> {other pipeline: main's t/s / other's t/s} (above 1: the bundle is faster)."""
    by = {(r.pipeline, r.test): r.tokens_per_s for r in results}
    out: dict = {}
    for (pipe, test), value in by.items():
        mine = by.get((main, test))
        if pipe != main and mine and value:
            out.setdefault(test, {})[pipe] = round(mine / value, 3)
    return out


def cost_ratios(cost: dict, main: str) -> dict:
    """phase -> {other: main's instructions per token / other's} (below 1: the bundle executes fewer)."""
    out: dict = {}
    if main not in cost:
        return out
    for phase in ("per_prompt_token", "per_generated_token"):
        mine = cost[main][phase]["instructions"]
        for other, c in cost.items():
            if other != main and c[phase]["instructions"]:
                out.setdefault(phase, {})[other] = round(mine / c[phase]["instructions"], 3)
    return out
