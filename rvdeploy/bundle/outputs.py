"""What an output may replace. rvdeploy writes bundles (directories), archives and plots; an existing output
is replaced only with --force, and --force replaces only what rvdeploy itself wrote: an empty directory, or a
bundle whose manifest passes rvdeploy's schema and whose directory holds exactly the manifest's files; a
file only when it is the kind rvdeploy writes there (its archive, a PNG). Anything else is refused, naming
what was found, before any work starts; the writers check again just before the swap (rvdeploy.atomic)."""

from __future__ import annotations

import gzip
import json
import os
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import RvdeployError
from .manifest import listed_files, problem
from .names import MANIFEST, SUMS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FORCE_HINT = "pass --force to replace it"


def absolute(path: Path | str) -> Path:
    """PATH made absolute without resolving links: '.' and 'x/..' get a real name to put a sibling beside."""
    return Path(os.path.abspath(path))


def bundle_problem(path: Path) -> str | None:
    """Why the directory PATH is not a bundle rvdeploy wrote (None: it is, or it is empty)."""
    try:
        entries = list(os.scandir(path))
    except OSError as exc:
        return f"cannot read it: {exc.strerror}"
    if not entries:
        return None
    mf = path / MANIFEST
    if not mf.is_file() or mf.is_symlink():
        return f"no {MANIFEST}"
    try:
        manifest = json.loads(mf.read_bytes())
    except (ValueError, RecursionError, OSError):
        return f"{MANIFEST} is not valid JSON"
    found = problem(manifest)
    if found:
        return f"{MANIFEST} is not rvdeploy's: {found}"
    listed = listed_files(manifest) | {MANIFEST}
    have = set()
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            p = Path(root) / name
            rel = p.relative_to(path).as_posix()
            try:
                mode = p.lstat().st_mode
            except OSError as exc:
                return f"cannot read {rel}: {exc.strerror}"
            if stat.S_ISDIR(mode):
                if not any(f.startswith(rel + "/") for f in listed):
                    return f"it holds {rel}/, which the manifest does not list"
            elif not stat.S_ISREG(mode):
                return f"it holds {rel}, which is not a regular file"
            else:
                have.add(rel)
    extra = sorted(have - listed - {SUMS})
    if extra:
        return (
            f"it holds {extra[0]}"
            + (f" and {len(extra) - 1} more file(s)" if len(extra) > 1 else "")
            + ", which the manifest does not list"
        )
    return None


def check_directory(out: Path, force: bool) -> None:
    """Refuse OUT as a bundle directory to (re)write unless it is absent, or --force and rvdeploy's."""
    if not os.path.lexists(out):
        return
    if not force:
        raise RvdeployError(f"output directory {out} already exists", hint=FORCE_HINT)
    if out.is_symlink():
        raise RvdeployError(f"{out} is a symbolic link; refusing to replace it", hint="give the directory itself")
    if not out.is_dir():
        raise RvdeployError(
            f"{out} is a file, not a bundle directory; refusing to replace it", hint="choose another --output"
        )
    if out == Path(out.anchor):
        raise RvdeployError(f"{out} is the file system root; refusing to replace it")
    problem = bundle_problem(out)
    if problem:
        raise RvdeployError(
            f"{out} exists and is not an rvdeploy bundle ({problem}); refusing to replace it",
            hint="choose another --output, or remove it yourself",
        )


def check_writable_parent(out: Path) -> None:
    """OUT's directory exists or can be made, and takes new entries: tried now (a temporary directory made and
    removed), not after minutes of work."""
    parent = out.parent
    while not os.path.lexists(parent):
        parent = parent.parent
    if not parent.is_dir():
        raise RvdeployError(f"cannot write {out}: {parent} is not a directory", hint="choose another output path")
    if parent == out.parent:
        try:
            os.rmdir(tempfile.mkdtemp(dir=parent, prefix=f".{out.name}.partial-"))
        except OSError as exc:
            raise RvdeployError(
                f"cannot write {out}: {exc.strerror} ({parent})", hint="choose an output in a writable directory"
            ) from None


def directory(out: Path | str, force: bool) -> Path:
    """OUT, absolute, once it may be written as a bundle directory (see check_directory)."""
    out = absolute(out)
    check_directory(out, force)
    check_writable_parent(out)
    return out


def is_bundle_archive(path: Path) -> bool:
    """An archive rvdeploy packed: a gzip whose first tar header has rvdeploy's fixed owner, time and names
    (only the first 512 bytes are decompressed)."""
    try:
        with gzip.open(path, "rb") as f:
            head = f.read(tarfile.BLOCKSIZE)
        info = tarfile.TarInfo.frombuf(head, "utf-8", "surrogateescape")
    except (OSError, EOFError, zlib.error, tarfile.TarError):
        return False
    return (info.uid, info.gid, info.mtime, info.uname, info.gname) == (0, 0, 0, "", "") and info.isfile()


def is_png(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE
    except OSError:
        return False


@dataclass(frozen=True)
class FileKind:
    what: str  # as a message names it
    example: str  # a file name to suggest
    is_ours: Callable[[Path], bool]  # whether an existing file is one rvdeploy wrote


ARCHIVE = FileKind("bundle archive", "bundle.tar.gz", is_bundle_archive)
PLOT = FileKind("PNG", "bench.png", is_png)


def file(out: Path | str, force: bool, kind: FileKind, flag: str = "--output") -> Path:
    """OUT, absolute, once it may be written as a file of KIND: absent, or with --force a regular file of
    that kind."""
    out = absolute(out)
    if not os.path.lexists(out):
        if out.name in ("", ".", ".."):
            raise RvdeployError(f"{flag} {out}: not a file name")
        check_writable_parent(out)
        return out
    if out.is_dir() and not out.is_symlink():
        hint = "remove it or choose another --output" if flag == "--tar" else f"e.g. {out / kind.example}"
        raise RvdeployError(f"{flag} {out} is a directory, not a file to write", hint=hint)
    if not force:
        raise RvdeployError(f"{out} already exists", hint=FORCE_HINT)
    if out.is_symlink() or not out.is_file():
        raise RvdeployError(f"{out} is not a regular file; refusing to replace it")
    if not kind.is_ours(out):
        raise RvdeployError(
            f"{out} exists and is not a {kind.what} rvdeploy wrote; refusing to replace it",
            hint="choose another name, or remove it yourself",
        )
    check_writable_parent(out)
    return out
