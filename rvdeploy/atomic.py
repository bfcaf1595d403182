"""Writing a file so that nobody sees it half-written: into a temporary path beside it, renamed into place."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def file_into_place(out: Path) -> Iterator[Path]:
    """Yield a temporary path beside OUT (same file system) for the block to write; it is renamed onto OUT
    when the block ends without error and removed otherwise (also on Ctrl-C)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.partial-")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, out)  # atomic: a concurrent writer leaves one complete file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
