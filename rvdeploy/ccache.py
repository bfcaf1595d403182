"""Built once, kept by content: what rvdeploy compiles for itself (the board probe, the qemu plugin and its
calibration program, the project's ukernel bitcode, the llama.cpp tools) lives in the cache directory under a
name holding a hash of what it is made from: its sources, the command and the compiler's version. It is
rebuilt exactly when one of them changes, and deleting the cache only costs a rebuild.

A build runs under a lock (a second process waits, then finds it built) into a temporary path that is renamed
into place when complete (nobody sees a half-written one, and a failed build leaves nothing).
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from . import children
from .atomic import dir_into_place, file_into_place
from .errors import RvdeployError
from .filelock import exclusive
from .paths import cache_dir


@functools.cache
def tool_version(exe: str) -> str:
    """The first line of `EXE --version` (once per process): a compiler upgrade changes the key."""
    proc = children.run([exe, "--version"], capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RvdeployError(f"`{exe} --version` failed: {_last_line(proc.stderr)}")
    return lines[0].strip()


def sources_digest(sources: Iterable[Path]) -> str:
    """sha256 over each source's file name and bytes (not its directory: checkouts elsewhere share the cache)."""
    h = hashlib.sha256()
    for path in sources:
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def key(
    *, sources: Iterable[Path] = (), command: Sequence[str] = (), tool_version: str = "", extra: Iterable[str] = ()
) -> str:
    """sha256 (hex) of the sources, the command, the tool version and anything else the result depends on."""
    parts = [sources_digest(sources), *command, "\0tool", tool_version, "\0extra", *extra]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def entry(kind: str, name: str, digest: str) -> Path:
    """Where a build of KIND keyed by DIGEST keeps NAME: cache_dir()/KIND/KEY/NAME."""
    return cache_dir() / kind / digest[:16] / name


def build_once(
    out: Path,
    build: Callable[[Path], None],
    *,
    directory: bool = False,
    lock: Path | None = None,
    ready: Callable[[Path], bool] | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> Path:
    """OUT, made by BUILD(temporary path) unless it is there already. The build holds LOCK (by default a lock
    file beside OUT) and its result is renamed onto OUT (a file, or a directory with DIRECTORY); READY says
    whether an existing OUT is complete (by default: it exists)."""
    ready = ready or (Path.is_dir if directory else Path.is_file)
    if ready(out):
        return out
    with exclusive(lock or out.with_name(f".{out.name}.lock"), on_wait=on_wait):
        if ready(out):  # built by the process we waited for
            return out
        with (dir_into_place if directory else file_into_place)(out) as tmp:
            build(tmp)
    return out


def compile_c(
    kind: str,
    command: Sequence[str],
    source: Path,
    name: str,
    *,
    what: str,
    headers: Sequence[Path] = (),
    hint: str | None = None,
) -> Path:
    """`COMMAND -o OUT SOURCE` (command[0] the compiler) into the cache, as an executable file NAME; HEADERS
    are files the result depends on beyond SOURCE. A failure is one RvdeployError: WHAT failed, and why."""
    digest = key(sources=[source, *headers], command=command, tool_version=tool_version(command[0]))

    def build(tmp: Path) -> None:
        proc = children.run([*command, "-o", str(tmp), str(source)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RvdeployError(f"{what} failed: {_error_line(proc.stderr)}", hint=hint)
        os.chmod(tmp, 0o755)

    return build_once(entry(kind, name, digest), build)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no output"


def _error_line(text: str) -> str:
    """A compiler's first error (its last line is often a note), else its last line."""
    errors = [ln.strip() for ln in text.splitlines() if "error:" in ln]
    return errors[0][:300] if errors else _last_line(text)
