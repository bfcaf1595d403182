"""Builds a local Hugging Face hub cache in the exact on-disk layout huggingface_hub uses.

    <cache>/models--<org>--<name>/
        blobs/<etag>                      file contents; etag = sha256 for LFS files, git blob sha1 otherwise
        snapshots/<40-hex commit>/<path>  relative symlinks to ../../blobs/<etag> (deeper for subfolders)
        refs/<branch>                     the commit sha, no trailing newline

huggingface_hub's own code (snapshot_download with local_files_only / HF_HUB_OFFLINE) reads it; nothing of
the library is replaced.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

LFS_SUFFIXES = (".onnx", ".onnx_data", ".data", ".bin", ".safetensors")


def is_lfs(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return name.endswith(LFS_SUFFIXES) or "_data_" in name


def etag(path: str, content: bytes) -> str:
    """The etag the hub reports: sha256 of an LFS file, the git blob sha1 of a regular one."""
    if is_lfs(path):
        return hashlib.sha256(content).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def fake_commit(*parts: str) -> str:
    return hashlib.sha1("\0".join(parts).encode()).hexdigest()


def repo_dir(cache: Path, repo_id: str) -> Path:
    return cache / ("models--" + repo_id.replace("/", "--"))


def add_snapshot(
    cache: Path, repo_id: str, files: dict[str, bytes], commit: str | None = None, ref: str | None = "main"
) -> str:
    """Adds one commit of a model repo to the cache; returns the commit sha. ref=None writes no ref."""
    commit = commit or fake_commit(repo_id, *sorted(files))
    assert len(commit) == 40
    storage = repo_dir(cache, repo_id)
    blobs = storage / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    snapshot = storage / "snapshots" / commit
    for rel, content in files.items():
        blob = blobs / etag(rel, content)
        if not blob.exists():
            blob.write_bytes(content)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(os.path.relpath(blob, link.parent), link)
    snapshot.mkdir(parents=True, exist_ok=True)
    if ref:
        (storage / "refs").mkdir(parents=True, exist_ok=True)
        (storage / "refs" / ref).write_text(commit)
    return commit


def files_from_dir(root: Path) -> dict[str, bytes]:
    """All files under root as {posix relative path: bytes}."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
