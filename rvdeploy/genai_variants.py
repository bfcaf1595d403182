"""onnxruntime-genai repos' variants: one folder per variant (e.g. `cpu_and_mobile/cpu-int4-rtn-block-32-acc-level-4/`),
each holding a genai_config.json, its graph and data, and the tokenizer. `--variant NAME` picks the folder whose
name (or path inside the repo) is NAME; the graph is the file genai_config.json names (model.decoder.filename).
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Iterable

CONFIG = "genai_config.json"


def folders(paths: Iterable[str]) -> dict[str, str]:
    """variant name -> folder inside the repo, from the repo's file paths. A folder's name is its last
    component, or its whole path when two folders share a last component."""
    dirs = sorted({str(PurePosixPath(p).parent) for p in paths if PurePosixPath(p).name == CONFIG} - {"."})
    last = [PurePosixPath(d).name for d in dirs]
    return {(PurePosixPath(d).name if last.count(PurePosixPath(d).name) == 1 else d): d for d in dirs}


def local_paths(root: Path) -> list[str]:
    """genai_config.json files under a directory (a local repo or a hub snapshot), as repo paths."""
    return [p.relative_to(root).as_posix() for p in sorted(root.rglob(CONFIG))]


def match(variant: str, found: dict[str, str]) -> str | None:
    """The folder for `variant`: by name, or by its path inside the repo."""
    return found.get(variant) or next((d for d in found.values() if d == variant.strip("/")), None)


def graph_name(folder: Path) -> str:
    """The decoder graph's file name in a variant folder (genai_config.json's model.decoder.filename)."""
    try:
        return json.loads((folder / CONFIG).read_text())["model"]["decoder"].get("filename") or "model.onnx"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "model.onnx"
