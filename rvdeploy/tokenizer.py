"""Host-side tokenization: boards only ever see token ids."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from .errors import RvdeployError


class TextCodec:
    def __init__(self, path: Path):
        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on bad files
            raise RvdeployError(f"{path}: not a tokenizers tokenizer.json ({exc})") from exc

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of TEXT; add_special_tokens=False for text a chat template rendered (it carries them)."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # bytes that are not UTF-8 reach Python as lone surrogates
            raise RvdeployError("the prompt is not valid UTF-8 text", hint="pass --prompt as UTF-8") from None
        ids = self._tok.encode(text, add_special_tokens=add_special_tokens).ids
        if not ids:
            raise RvdeployError("the prompt encodes to no tokens: give a non-empty --prompt")
        return ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)
