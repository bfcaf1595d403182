"""Board plumbing without a board: --board parsing, error mapping, qemu version checks, probe output."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rvdeploy.boards import get_board
from rvdeploy.boards.launch import HWPROBE_MISSING, raise_for
from rvdeploy.boards.ssh import parse_spec
from rvdeploy.errors import RvdeployError
from rvdeploy.probe import parse_env
from rvdeploy.sim import cpu_for, debian_mirror


@pytest.mark.parametrize("spec,parsed", [
    ("board", (None, "board", None)),
    ("me@10.0.0.7", ("me", "10.0.0.7", None)),
    ("me@k1.local:2222", ("me", "k1.local", "2222")),
])
def test_board_spec(spec, parsed):
    assert parse_spec(spec) == parsed


@pytest.mark.parametrize("spec", ["-oProxyCommand=touch /tmp/x", "a b", "me@host:99999", "me@host:ssh",
                                  "host;reboot", "$(reboot)", "x@-oFoo"])
def test_bad_board_spec_refused(spec):
    with pytest.raises(RvdeployError):
        get_board(spec)


def test_hwprobe_failure_is_explained():
    with pytest.raises(RvdeployError, match="qemu-user older than 8.1"):
        raise_for("qemu", 1, f"some output\n{HWPROBE_MISSING}\n")


def test_disk_full_is_one_line():
    with pytest.raises(RvdeployError, match="no space left on device"):
        raise_for("board b", 1, "cat: write error: No space left on device\n")


def test_old_qemu_is_refused_with_what_to_do(tmp_path):
    fake = tmp_path / "qemu-riscv64"  # a real executable that answers like Debian 12's qemu-user
    fake.write_text("#!/bin/sh\necho 'qemu-riscv64 version 7.2.15 (Debian 1:7.2+dfsg-7+deb12u18)'\n")
    fake.chmod(0o755)
    code = ("from rvdeploy.boards.qemu import checked_qemu\nchecked_qemu()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert proc.returncode != 0 and "needs 8.1 or newer" in proc.stderr and "bookworm-backports" in proc.stderr


def test_probe_env_parsing():
    info = parse_env("arch=riscv64\nvlen=256\nhwprobe=1\nextensions=i m a f d c v zba\ndetectable=i m\n"
                     "cpus=8\nmem_total=1024\n")
    assert info == {"arch": "riscv64", "vlen": 256, "vector": True, "extensions": ["i", "m", "a", "f", "d", "c", "v", "zba"],
                    "hwprobe": True, "cpus": 8, "mem_total": 1024}


def test_sim_cpu_strings():
    assert cpu_for(128, None) == (cpu_for(128, None)[0], 128) and "vlen=128" in cpu_for(128, None)[0]
    assert cpu_for(256, "rv64,v=true,vlen=512,zvfh=true") == ("rv64,v=true,vlen=512,zvfh=true", 512)
    assert cpu_for(256, "rv64,v=false")[1] == 0
    with pytest.raises(RvdeployError):
        cpu_for(96, None)


def test_mirror_comes_from_apt_sources():
    if not os.path.isdir("/etc/apt"):
        pytest.skip("not a Debian machine")
    assert debian_mirror().startswith(("http://", "https://"))
