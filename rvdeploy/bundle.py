"""The deployable bundle: a directory with the module, its weights, the tokenizer and a manifest.

Written into a temporary sibling directory and renamed into place, so an interrupted build never
leaves a half-written bundle under the requested name. Same inputs give the same bytes: the manifest
has no timestamps and its keys are sorted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import RvdeployError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict

    @classmethod
    def open(cls, path: Path | str) -> "Bundle":
        path = Path(path)
        mf = path / MANIFEST
        if not path.is_dir():
            raise RvdeployError(f"bundle not found: {path}", hint="build one with `rvdeploy build -o DIR`")
        if not mf.is_file():
            raise RvdeployError(f"{path} is not an rvdeploy bundle: no {MANIFEST}")
        try:
            manifest = json.loads(mf.read_text())
        except json.JSONDecodeError as exc:
            raise RvdeployError(f"{mf}: invalid JSON ({exc.msg} at line {exc.lineno})") from exc
        version = manifest.get("schema_version")
        if version != SCHEMA_VERSION:
            raise RvdeployError(f"{mf}: schema_version {version!r}, this rvdeploy reads {SCHEMA_VERSION}",
                                hint="rebuild the bundle with this rvdeploy")
        return cls(path, manifest)

    def file(self, name: str) -> Path:
        if name not in {f["path"] for f in self.manifest["files"]}:
            raise RvdeployError(f"{self.path}: manifest lists no file {name!r}")
        return self.path / name

    def verify(self) -> None:
        """Every file present with the recorded size and sha256."""
        for entry in self.manifest["files"]:
            p = self.path / entry["path"]
            if not p.is_file():
                raise RvdeployError(f"{self.path}: {entry['path']} is missing")
            if p.stat().st_size != entry["size"] or sha256_file(p) != entry["sha256"]:
                raise RvdeployError(f"{self.path}: {entry['path']} does not match its sha256 in the manifest",
                                    hint="the bundle was altered or damaged: rebuild or copy it again")


def _prepare_output(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise RvdeployError(f"output directory {out} already exists", hint="pass --force to replace it")
    if out.exists() and not (out / MANIFEST).is_file() and any(out.iterdir()):
        # --force replaces bundles, never arbitrary directories
        raise RvdeployError(f"{out} exists and is not an rvdeploy bundle; refusing to replace it")


def write_bundle(out: Path, files: dict[str, Path], manifest: dict, force: bool = False) -> Bundle:
    """Copy `files` (bundle name -> source path) and write the manifest, atomically."""
    out = Path(out)
    _prepare_output(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        entries = []
        for name in sorted(files):
            dst = staging / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(files[name], dst)
            entries.append({"path": name, "size": dst.stat().st_size, "sha256": sha256_file(dst)})
        manifest = dict(manifest, schema_version=SCHEMA_VERSION, files=entries)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        os.chmod(staging, 0o755)
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rename(out, trash / "bundle")
            os.rename(staging, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Bundle.open(out)
