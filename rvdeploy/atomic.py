"""Writing an output so that nobody sees it half-written: into a temporary path beside it (same file system),
renamed into place when complete, removed otherwise (also on Ctrl-C). What may be replaced is decided by the
caller (rvdeploy.bundle.outputs); these only write."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from . import signals
from .errors import RvdeployError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _beside(out: Path, make: Callable[..., str]) -> Path:
    """A temporary name beside OUT, created by MAKE (mkstemp or mkdtemp); one line when that is impossible."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        made = make(dir=out.parent, prefix=f".{out.name}.partial-")
    except OSError as exc:
        raise RvdeployError(
            f"cannot write {out}: {exc.strerror} ({exc.filename or out.parent})",
            hint="choose an output in a writable directory",
        ) from None
    if isinstance(made, tuple):  # mkstemp: (fd, path)
        os.close(made[0])
        made = made[1]
    return Path(made)


@contextmanager
def file_into_place(out: Path) -> Iterator[Path]:
    """Yield a temporary path beside OUT for the block to write; it is renamed onto OUT when the block ends
    without error and removed otherwise. The file gets the mode a new file would (0666 less the umask; a
    temporary file starts 0600), before the block, which may change it."""
    path = _beside(out, lambda **kw: tempfile.mkstemp(**kw))
    try:
        os.chmod(path, 0o666 & ~_umask())
        yield path
        os.replace(path, out)  # atomic: a concurrent writer leaves one complete file
    finally:
        if os.path.lexists(path):
            os.unlink(path)


@contextmanager
def dir_into_place(out: Path, before_replace: Callable[[Path], None] = lambda _: None) -> Iterator[Path]:
    """Yield a temporary directory beside OUT for the block to fill; then it becomes OUT. An existing OUT is
    first checked again by BEFORE_REPLACE (it may have changed since the caller's first look), moved aside,
    and deleted only once the new one is in place; if the swap fails the old one is put back."""
    staging = _beside(out, lambda **kw: tempfile.mkdtemp(**kw))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it 0700
        if not os.path.lexists(out):
            os.rename(staging, out)
            return
        before_replace(out)
        trash = _beside(out.with_name(out.name + ".old"), lambda **kw: tempfile.mkdtemp(**kw))
        try:
            with signals.held():  # between the two renames OUT exists only in the trash: no interruption there
                os.rename(out, trash / "old")
                try:
                    os.rename(staging, out)
                except BaseException:
                    os.rename(trash / "old", out)
                    raise
        finally:
            shutil.rmtree(trash, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
