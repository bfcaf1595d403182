"""The deployable bundle: a directory with the module, its weights, the tokenizer and a manifest.

Written into a temporary sibling directory and renamed into place, so an interrupted build never
leaves a half-written bundle under the requested name. Same inputs give the same bytes: the manifest
has no timestamps and its keys are sorted, and the .tar.gz form (pack_bundle) has sorted entries with fixed
modes, owners and times. SHA256SUMS repeats the manifest's hashes in `sha256sum -c` format for the
board-side launcher, which has no JSON parser.
"""

from __future__ import annotations

import hashlib
import json
import os
import gzip
import io
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from .atomic import file_into_place
from .errors import RvdeployError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"


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


def _sums(entries: list[dict]) -> str:
    return "".join(f"{e['sha256']}  {e['path']}\n" for e in entries)


def _move_into_place(staging: Path, out: Path) -> None:
    """Rename a finished directory to its name; an old bundle there is moved aside first, then deleted."""
    if out.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.rename(out, trash / "bundle")
        os.rename(staging, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(staging, out)


def write_bundle(out: Path, files: dict[str, Path], manifest: dict, force: bool = False,
                 executables: frozenset[str] | set[str] = frozenset()) -> Bundle:
    """Copy `files` (bundle name -> source path) and write the manifest and SHA256SUMS, atomically.
    Names in `executables` get mode 0755 (recorded in the manifest), every other file 0644."""
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
            os.chmod(dst, 0o755 if name in executables else 0o644)
            entry = {"path": name, "size": dst.stat().st_size, "sha256": sha256_file(dst)}
            if name in executables:
                entry["executable"] = True
            entries.append(entry)
        manifest = dict(manifest, schema_version=SCHEMA_VERSION, files=entries)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        (staging / SUMS).write_text(_sums(entries))
        os.chmod(staging, 0o755)
        _move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Bundle.open(out)


# ---- .tar.gz form -------------------------------------------------------------------------------------

def _members(bundle: Bundle) -> list[str]:
    names = [MANIFEST] + ([SUMS] if (bundle.path / SUMS).is_file() else []) + [f["path"] for f in bundle.manifest["files"]]
    return sorted(names)


def pack_bundle(bundle_path: Path | str, out: Path | str) -> Path:
    """Write the bundle as a .tar.gz, byte-identical for identical bundles: sorted entries, no directory
    entries, mode 0644/0755, uid/gid 0, no user names, mtime 0, and a gzip header without name or time."""
    bundle = Bundle.open(bundle_path)
    bundle.verify()
    out = Path(out)
    executable = {f["path"] for f in bundle.manifest["files"] if f.get("executable")}
    with file_into_place(out) as tmp, open(tmp, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in _members(bundle):
            data = (bundle.path / name).read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0, 0, "", ""
            info.mode = 0o755 if name in executable else 0o644
            tar.addfile(info, io.BytesIO(data))
    return out


def _safe_member(tar_path: Path, m: tarfile.TarInfo) -> str:
    name = m.name
    parts = Path(name).parts
    if name.startswith("/") or Path(name).is_absolute():
        raise RvdeployError(f"{tar_path}: entry {name!r} has an absolute path; refusing to unpack")
    if ".." in parts:
        raise RvdeployError(f"{tar_path}: entry {name!r} points outside the bundle ('..'); refusing to unpack")
    if m.issym() or m.islnk():
        # bundles never contain links; a link is how an archive writes outside its directory
        raise RvdeployError(f"{tar_path}: entry {name!r} is a link to {m.linkname!r}; refusing to unpack")
    if not (m.isfile() or m.isdir()):
        raise RvdeployError(f"{tar_path}: entry {name!r} is not a regular file; refusing to unpack")
    return name


def unpack_bundle(tar_path: Path | str, out: Path | str, force: bool = False) -> Bundle:
    """Unpack a bundle .tar.gz into `out` after checking every entry (no absolute paths, no '..', no links,
    no devices), then verify every file against the manifest. Atomic like write_bundle."""
    tar_path, out = Path(tar_path), Path(out)
    if not tar_path.is_file():
        raise RvdeployError(f"bundle archive not found: {tar_path}")
    _prepare_output(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        try:
            with tarfile.open(tar_path, "r:gz") as tar:
                members = tar.getmembers()
                for m in members:
                    _safe_member(tar_path, m)
                for m in members:
                    dst = staging / m.name
                    if m.isdir():
                        dst.mkdir(parents=True, exist_ok=True)
                        continue
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(m) as src, open(dst, "wb") as f:
                        shutil.copyfileobj(src, f)
                    os.chmod(dst, 0o755 if m.mode & 0o111 else 0o644)
        except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise RvdeployError(f"{tar_path}: not a readable .tar.gz ({exc})") from exc
        os.chmod(staging, 0o755)
        Bundle.open(staging).verify()
        _move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Bundle.open(out)
