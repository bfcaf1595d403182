"""The model's config.json (Hugging Face layout): read in one place, so that a file that is not a JSON object
is one clear error wherever it is read (build, graph facts, bench), and the context length a bundle records
is always known."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import RvdeployError

CONTEXT_KEY = "max_position_embeddings"
MAX_CONTEXT = 1 << 24  # far above any model's; a larger figure is a broken config, not a model


def parse(text: str | bytes, where: str) -> dict:
    try:
        config = json.loads(text)
    except (ValueError, RecursionError) as exc:
        detail = f" ({exc.msg} at line {exc.lineno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise RvdeployError(f"{where}: not valid JSON{detail}", hint="fix or replace the model's config.json") from None
    if not isinstance(config, dict):
        raise RvdeployError(
            f"{where}: a JSON {type(config).__name__}, not an object of model settings",
            hint="fix or replace the model's config.json",
        )
    return config


def read(path: Path) -> dict:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RvdeployError(f"{path}: cannot read it ({exc.strerror})") from None
    return parse(data, str(path))


def context_length(config: Path | None, override: int | None, model: str) -> int:
    """The context a bundle supports: config.json's max_position_embeddings, or --max-context (which may lower
    it, never raise it: positions past it are outside what the model was trained and built for)."""
    limit = None
    if config is not None:
        value = read(config).get(CONTEXT_KEY)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_CONTEXT:
                raise RvdeployError(
                    f"{config}: {CONTEXT_KEY} is {value!r}, not a context length", hint="fix the model's config.json"
                )
            limit = value
    if override is not None:
        if limit is not None and override > limit:
            raise RvdeployError(f"--max-context {override} exceeds the model's {CONTEXT_KEY} of {limit} ({config})")
        return override
    if limit is None:
        where = f"{config} has no {CONTEXT_KEY}" if config else f"no config.json beside {model}"
        raise RvdeployError(
            f"{where}: the model's context length is unknown, and a bundle must know it to stop "
            "generation before it runs past it",
            hint="put the model's config.json beside it, or pass --max-context N",
        )
    return limit


def eos_token_ids(config: Path | None) -> list[int]:
    """The ids that end generation: generation_config.json's eos_token_id (beside config.json), else
    config.json's; an int or a list of ints in either. None known: an empty list (generation runs to its
    token limit or the context)."""
    if config is None:
        return []
    for path in (config.with_name("generation_config.json"), config):
        if not path.is_file():
            continue
        value = read(path).get("eos_token_id")
        ids = value if isinstance(value, list) else [value]
        if value is not None and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
            return sorted(set(ids))
    return []
