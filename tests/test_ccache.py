"""rvdeploy.ccache: compiled C kept by content, with the host's real C compiler."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time

import pytest
from conftest import system_part_missing

from rvdeploy import ccache
from rvdeploy.errors import RvdeployError
from rvdeploy.filelock import exclusive


@pytest.fixture
def cc(tmp_path, monkeypatch):
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        system_part_missing("needs a host C compiler (gcc)")
    monkeypatch.setenv("RVDEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    return compiler


def _leftovers(root):
    return sorted(p.name for p in root.rglob("*") if ".partial-" in p.name)


def test_compiled_once_and_again_when_its_inputs_change(tmp_path, cc):
    src = tmp_path / "hello.c"
    header = tmp_path / "answer.h"
    header.write_text("#define ANSWER 42\n")
    src.write_text('#include <stdio.h>\n#include "answer.h"\nint main(void) { printf("%d\\n", ANSWER); }\n')
    cmd = [cc, "-O1", f"-I{tmp_path}"]
    exe = ccache.compile_c("test", cmd, src, "hello", what="compiling hello.c", headers=[header])
    assert exe.name == "hello" and exe.is_relative_to(tmp_path / "cache" / "test")
    assert subprocess.run([exe], capture_output=True, text=True).stdout == "42\n"
    mtime = os.stat(exe).st_mtime_ns
    assert ccache.compile_c("test", cmd, src, "hello", what="x", headers=[header]) == exe
    assert os.stat(exe).st_mtime_ns == mtime  # from the cache

    header.write_text("#define ANSWER 7\n")  # a header the command line does not name
    exe2 = ccache.compile_c("test", cmd, src, "hello", what="x", headers=[header])
    assert exe2 != exe and subprocess.run([exe2], capture_output=True, text=True).stdout == "7\n"
    exe3 = ccache.compile_c("test", [cc, "-O2", f"-I{tmp_path}"], src, "hello", what="x", headers=[header])
    assert exe3 not in (exe, exe2)  # the command is part of the key
    assert ccache.key(sources=[src], tool_version="a") != ccache.key(sources=[src], tool_version="b")
    assert _leftovers(tmp_path / "cache") == []


def test_a_failed_build_leaves_nothing_and_says_why_in_one_line(tmp_path, cc):
    src = tmp_path / "broken.c"
    src.write_text("int main(void) { return missing; }\n")
    with pytest.raises(RvdeployError) as err:
        ccache.compile_c("test", [cc], src, "broken", what="compiling broken.c", hint="fix it")
    msg = str(err.value)
    assert msg.startswith("compiling broken.c failed: ") and "error:" in msg and "missing" in msg and "\n" not in msg
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and not p.name.endswith(".lock")]


def test_a_second_builder_waits_and_finds_it_built(tmp_path, cc):
    out = tmp_path / "cache" / "test" / "k" / "out.txt"
    lock = tmp_path / "cache" / "test" / ".lock"
    calls = []

    def build(tmp):
        calls.append(tmp)
        tmp.write_text("built")

    waited = []
    with exclusive(lock):
        t = threading.Thread(target=lambda: ccache.build_once(out, build, lock=lock, on_wait=waited.append))
        t.start()
        time.sleep(0.5)
        assert t.is_alive() and not out.exists()  # waiting for the lock, nothing started
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("built by the other")  # what the lock holder made
    t.join(10)
    assert waited and out.read_text() == "built by the other" and calls == []
    assert ccache.build_once(out, build) == out and calls == []
