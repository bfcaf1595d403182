"""A model's own chat template (tokenizer_config.json's `chat_template`), rendered as transformers renders it
(jinja2 in a sandbox, trim_blocks and lstrip_blocks, loop controls, `raise_exception`, `strftime_now`), so the
ids a chat turn sends equal `tokenizer.apply_chat_template(messages, add_generation_prompt=True)`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .errors import RvdeployError


@dataclass(frozen=True)
class ChatTemplate:
    source: str
    special: dict  # bos_token, eos_token, ... as strings, passed to the template

    @classmethod
    def load(cls, tokenizer_config: Path | None) -> "ChatTemplate":
        if tokenizer_config is None or not tokenizer_config.is_file():
            raise RvdeployError(
                "the model has no chat template (no tokenizer_config.json in the bundle)",
                hint="drop --chat and give the prompt as plain text",
            )
        try:
            cfg = json.loads(tokenizer_config.read_text())
        except (OSError, ValueError) as exc:
            raise RvdeployError(f"{tokenizer_config}: not valid JSON ({exc})")
        template = cfg.get("chat_template") if isinstance(cfg, dict) else None
        if isinstance(template, list):  # named templates: the default one
            template = next(
                (t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"), None
            )
        if not isinstance(template, str) or not template.strip():
            raise RvdeployError(
                f"{tokenizer_config} has no chat_template", hint="drop --chat and give the prompt as plain text"
            )
        special = {}
        for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
            value = cfg.get(key)
            if isinstance(value, dict):  # AddedToken form
                value = value.get("content")
            if isinstance(value, str):
                special[key] = value
        return cls(template, special)

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        from jinja2 import TemplateError
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False: json.dumps(
            x, indent=indent, ensure_ascii=ensure_ascii
        )
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            return env.from_string(self.source).render(
                messages=messages, add_generation_prompt=add_generation_prompt, **self.special
            )
        except TemplateError as exc:
            raise RvdeployError(f"the model's chat template failed to render: {' '.join(str(exc).split())[:200]}")
