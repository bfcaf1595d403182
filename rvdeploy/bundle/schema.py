"""The one check of a bundle's manifest.json, used by every reader (through rvdeploy.bundle.Bundle.open): the
schema in manifest_schema.toml (each field's JSON type), and that every path it names stays inside the bundle
and is listed once. A manifest that fails is refused with one line naming the field, before anything reads
a file it names."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path, PurePosixPath

from ..errors import RvdeployError
from .names import RESERVED

SCHEMA = Path(__file__).resolve().parent / "manifest_schema.toml"
_COMPONENT = re.compile(r"[A-Za-z0-9_.+=@-]{1,255}")  # what rvdeploy names files: no spaces, quotes, controls
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def path_problem(value) -> str | None:
    """Why VALUE is not a relative path inside a bundle, or None."""
    if not isinstance(value, str) or not value:
        return "is not a non-empty string"
    shown = _short(value)
    if value.startswith("/"):
        return f"{shown} is an absolute path"
    parts = value.split("/")
    if ".." in parts:
        return f"{shown} points outside the bundle ('..')"
    if any(p in ("", ".") for p in parts):
        return f"{shown} has an empty or '.' component"
    bad = next((p for p in parts if not _COMPONENT.fullmatch(p)), None)
    if bad is not None:
        return f"{shown}: {_short(bad)} is not a plain file name (letters, digits, . _ + = @ -)"
    return None


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# type name -> (check, what it must be)
TYPES = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "count": (_count, "a whole number >= 0"),
    "positive": (lambda v: _count(v) and v >= 1, "a whole number >= 1"),
    "object": (lambda v: isinstance(v, dict), "an object"),
    "list": (lambda v: isinstance(v, list), "a list"),
    "strings": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings"),
    "counts": (lambda v: isinstance(v, list) and all(_count(x) for x in v), "a list of whole numbers"),
    "text-map": (lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()), "an object of strings"),
    "sha256": (lambda v: isinstance(v, str) and bool(_SHA256.fullmatch(v)), "64 lowercase hex digits"),
    "path": (lambda v: path_problem(v) is None, "a relative path inside the bundle"),
    "file": (lambda v: path_problem(v) is None, "a file the manifest lists"),
}


def _load_schema() -> dict[str, tuple[str, bool]]:
    fields = tomllib.loads(SCHEMA.read_text())["fields"]
    return {key: (t.rstrip("?"), t.endswith("?")) for key, t in fields.items()}


FIELDS = _load_schema()


class _Missing:
    pass


MISSING = _Missing()


def _values(doc, key: str):
    """(shown key, value) for each place KEY names in DOC; a missing or null parent yields nothing, a missing
    field yields the sentinel MISSING."""
    places = [("", doc)]
    for part in key.split("."):
        items, values = part.endswith("[]"), part.endswith("{}")
        name = part[:-2] if items or values else part
        nxt = []
        for shown, v in places:
            if not isinstance(v, dict):
                continue
            here = f"{shown}.{name}" if shown else name
            child = v.get(name, MISSING)
            if items:
                if isinstance(child, list):
                    nxt += [(f"{here}[{i}]", x) for i, x in enumerate(child)]
            elif values:
                if isinstance(child, dict):
                    nxt += [(f"{here}.{k}", x) for k, x in child.items()]
            else:
                nxt.append((here, child))
        places = nxt
    return places


def problems(manifest) -> list[str]:
    """Every way MANIFEST (parsed JSON) departs from the schema, as 'field: problem' strings (empty: valid)."""
    if not isinstance(manifest, dict):
        return [f"the manifest is {type(manifest).__name__}, not a JSON object"]
    found = []
    for key, (type_name, optional) in FIELDS.items():
        check, what = TYPES[type_name]
        for shown, value in _values(manifest, key):
            if value is MISSING or value is None:
                if not optional:
                    found.append(f"{shown}: missing" if value is MISSING else f"{shown}: null, must be {what}")
                continue
            if not check(value):
                detail = path_problem(value) if type_name in ("path", "file") else None
                found.append(f"{shown}: {detail or f'{_short(value)} is not {what}'}")
    if found:
        return found
    return _file_problems(manifest)


def _file_problems(manifest: dict) -> list[str]:
    """The listed files: each once, none reserved, none inside another; every `file` field names one."""
    names = [f["path"] for f in manifest["files"]]
    found = []
    seen = set()
    for n in names:
        if n in seen:
            found.append(f"files: {_short(n)} is listed twice")
        seen.add(n)
        if n in RESERVED:
            found.append(f"files: {n!r} is written by rvdeploy itself and cannot be listed")
    dirs = {str(p) for n in names for p in PurePosixPath(n).parents if str(p) != "."}
    found += [f"files: {n!r} is both a file and a directory" for n in sorted(seen & dirs)]
    for key, (type_name, _) in FIELDS.items():
        if type_name != "file":
            continue
        for shown, value in _values(manifest, key):
            if isinstance(value, str) and value not in seen:
                found.append(f"{shown}: {_short(value)} is not among the listed files")
    return found


def check(manifest, where: str) -> dict:
    """MANIFEST if it is valid, else one RvdeployError naming WHERE and the first problem."""
    found = problems(manifest)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise RvdeployError(
            f"{where}: not an rvdeploy manifest: {found[0]}{more}",
            hint="the bundle was altered or written by another tool: rebuild it with `rvdeploy build`",
        )
    return manifest
