"""`rvdeploy runtime build` on bad input and under interruption: one line naming the cause, nothing
registered, no build folder or half-written runtime left in the cache, no compiler left running; builds of
one cache (and of llama.cpp) wait for each other.

Each test uses a cache of its own (RVDEPLOY_CACHE_DIR) so the session's cached runtime is never touched."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from cli_run import one_line_error, rvdeploy
from conftest import iree_source, system_part_missing

from rvdeploy import runtime_build, runtimes
from rvdeploy.filelock import exclusive

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def archive():
    source = iree_source()
    if source is None or not Path(source).is_file():
        system_part_missing("no IREE source archive (../shared/iree-src/*.tar.gz or RVDEPLOY_IREE_SOURCE)")
    return Path(source)


@pytest.fixture(scope="module")
def source_tree(archive, tmp_path_factory):
    """IREE's source as a directory (a fresh copy: its key differs from the archive's cached build)."""
    root = tmp_path_factory.mktemp("iree-tree")
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    return root


def _env(tmp_path) -> dict:
    return {"RVDEPLOY_CACHE_DIR": str(tmp_path / "cache"), "RVDEPLOY_CONFIG_DIR": str(tmp_path / "config")}


def _assert_cache_clean(tmp_path):
    """Nothing half-done: no build folder, no runtime directory, nothing registered."""
    root = tmp_path / "cache" / "iree-runtime"
    left = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    assert not [n for n in left if n.startswith((".build-", "rt-", ".rt-"))], left
    assert not (tmp_path / "config" / runtimes.REGISTRY).exists()


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_archive_without_flatcc(tmp_path):
    src = _tar(
        tmp_path / "iree.tar.gz",
        {
            "iree/CMakeLists.txt": b"",
            "iree/runtime/src/iree/base/api.h": b"",
            "iree/third_party/benchmark/CMakeLists.txt": b"",
        },
    )
    proc = rvdeploy("runtime", "build", "--source", str(src), env=_env(tmp_path))
    one_line_error(proc, "submodule third_party/flatcc is missing", "git submodule update --init")
    _assert_cache_clean(tmp_path)


def test_archive_that_is_not_iree(tmp_path):
    src = _tar(tmp_path / "other.tar.gz", {"project/README.md": b"hello"})
    one_line_error(
        rvdeploy("runtime", "build", "--source", str(src), env=_env(tmp_path)), str(src), "is not IREE's source"
    )
    text = tmp_path / "notes.tar.gz"
    text.write_text("not an archive")
    one_line_error(
        rvdeploy("runtime", "build", "--source", str(text), env=_env(tmp_path)), str(text), "not a readable .tar.gz"
    )
    one_line_error(
        rvdeploy("runtime", "build", "--source", str(tmp_path / "absent"), env=_env(tmp_path)), "does not exist"
    )
    one_line_error(rvdeploy("runtime", "build", "--source", str(src), "--ref", "v3.13.0", env=_env(tmp_path)), "--ref")
    _assert_cache_clean(tmp_path)


def test_compiler_error_is_one_line_and_leaves_nothing(source_tree, tmp_path):
    broken = source_tree / "iree" / "runtime" / "src" / "iree" / "base" / "status.c"
    original = broken.read_bytes()
    broken.write_bytes(original + b"\n#error rvdeploy test: a broken source file\n")
    try:
        proc = rvdeploy("runtime", "build", "--source", str(source_tree), "--json", env=_env(tmp_path))
    finally:
        broken.write_bytes(original)
    line = one_line_error(proc, "building IREE's runtime failed", "rvdeploy test: a broken source file")
    log = line.split("full log: ", 1)[1].rstrip(")")
    assert Path(log).is_file() and "status.c" in Path(log).read_text()
    _assert_cache_clean(tmp_path)


def _others_running(marker: str) -> list[str]:
    """Command lines of live processes (other than this one) that mention MARKER."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            found.append(cmd)
    return found


def _read_until(proc, needle: str, timeout: float) -> str:
    seen = ""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        assert time.monotonic() < deadline, f"{needle!r} not printed in {timeout} s: {seen[-500:]}"
        line = proc.stderr.readline()
        assert line or proc.poll() is None, f"exited {proc.returncode}: {seen[-500:]}"
        seen += line
    return seen


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_waits_for_another_build_then_interrupted_leaves_nothing(source_tree, tmp_path, sig):
    env = {**os.environ, **_env(tmp_path)}
    lock = tmp_path / "cache" / "iree-runtime" / ".lock"
    with exclusive(lock):  # another build of the same cache is running
        proc = subprocess.Popen(
            [sys.executable, "-m", "rvdeploy", "runtime", "build", "--source", str(source_tree)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _read_until(proc, "waiting for another rvdeploy build", 60)
            time.sleep(1)
            assert proc.poll() is None  # still waiting
        except BaseException:
            proc.kill()
            raise
    try:
        _read_until(proc, "building IREE's runtime for riscv64", 180)  # ninja's steps have started
        time.sleep(2)
        assert _others_running(str(tmp_path / "cache"))  # the compilers are running in the cache's build folder
        proc.send_signal(sig)
        rest = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and "Traceback" not in rest
    time.sleep(1)
    assert not _others_running(str(tmp_path / "cache"))  # no ninja or clang outlived rvdeploy
    _assert_cache_clean(tmp_path)


def test_llama_cpp_builds_wait_for_each_other(tmp_path):
    from rvdeploy.peers import llamacpp_build

    env = {**os.environ, "RVDEPLOY_CACHE_DIR": str(tmp_path / "cache")}
    lock = tmp_path / "cache" / "llama.cpp" / llamacpp_build.version() / ".lock"
    with exclusive(lock):
        proc = subprocess.Popen(
            [sys.executable, "-m", "rvdeploy.peers.llamacpp_build", "--target", "spacemit-k1"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _read_until(proc, "waiting for another rvdeploy build", 60)
            time.sleep(1)
            assert proc.poll() is None
            assert not (tmp_path / "cache" / "llama.cpp" / llamacpp_build.version() / "src").exists()
        finally:
            proc.kill()
            proc.wait()


def test_cache_key_follows_source_and_recipe(archive):
    tc = runtime_build.toolchain()
    src = runtime_build.resolve_source(archive)
    assert runtime_build.build_key(src, tc) == runtime_build.build_key(runtime_build.resolve_source(archive), tc)
    other = runtime_build.IreeSource(**{**src.__dict__, "digest": src.digest + "x"})
    assert runtime_build.build_key(other, tc) != runtime_build.build_key(src, tc)
    assert runtime_build.build_key(src, tc | {"clang": "clang 20"}) != runtime_build.build_key(src, tc)
