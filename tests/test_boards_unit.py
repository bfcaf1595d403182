"""Board plumbing without a board: --board parsing, error mapping, qemu version checks, probe output."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rvdeploy.boards import LocalBoard, QemuBoard, SshBoard, get_board
from rvdeploy.boards.base import NEEDS_EMULATION, Board, require_counting
from rvdeploy.boards.launch import HWPROBE_MISSING, raise_for
from rvdeploy.boards.spec import BoardSpec, parse_ssh
from rvdeploy.errors import RvdeployError
from rvdeploy.probe import parse_env
from rvdeploy.sim import cpu_for, debian_mirror


@pytest.mark.parametrize(
    "spec,parsed",
    [
        ("board", (None, "board", None)),
        ("me@10.0.0.7", ("me", "10.0.0.7", None)),
        ("me@k1.local:2222", ("me", "k1.local", "2222")),
    ],
)
def test_board_spec(spec, parsed):
    assert parse_ssh(spec) == parsed


@pytest.mark.parametrize(
    "spec",
    ["-oProxyCommand=touch /tmp/x", "a b", "me@host:99999", "me@host:ssh", "host;reboot", "$(reboot)", "x@-oFoo"],
)
def test_bad_board_spec_refused(spec):
    with pytest.raises(RvdeployError):
        get_board(spec)


@pytest.mark.parametrize(
    "text,spec,board",
    [
        ("local", BoardSpec("local", "local"), LocalBoard),
        ("qemu", BoardSpec("qemu", "qemu"), QemuBoard),
        ("qemu:", BoardSpec("qemu", "qemu"), QemuBoard),
        ("qemu:rv64gcv-vlen128", BoardSpec("qemu", "qemu:rv64gcv-vlen128", target="rv64gcv-vlen128"), QemuBoard),
        ("me@k1.local:2222", BoardSpec("ssh", "me@k1.local:2222", user="me", host="k1.local", port="2222"), SshBoard),
        ("k1", BoardSpec("ssh", "k1", host="k1"), SshBoard),
    ],
)
def test_board_spec_parsed_once_into_its_board(text, spec, board):
    assert BoardSpec.parse(text) == spec
    made = get_board(spec)  # from the spec: nothing parsed again
    assert type(made) is board and made.name == spec.name and type(get_board(text)) is board


def test_qemu_board_of_a_host_target_refused():
    with pytest.raises(RvdeployError, match="not a riscv64 target"):
        get_board("qemu:host")


def _protocol_members() -> dict[str, inspect.Signature | type]:
    members = {n: t for n, t in Board.__annotations__.items()}
    members.update(
        {
            n: inspect.signature(f)
            for n, f in vars(Board).items()
            if callable(f) and (not n.startswith("_") or n in ("__enter__", "__exit__"))
        }
    )
    return members


@pytest.mark.parametrize(
    "board",
    [LocalBoard(), QemuBoard(), QemuBoard("rv64gcv-vlen512"), SshBoard(BoardSpec.parse("me@k1:22"))],
    ids=lambda b: b.name,
)
def test_every_board_is_a_board(board):
    """Each kind of board has every member of the Board protocol, its methods taking the protocol's
    parameters (by name and kind), so callers never ask which kind of board they hold."""
    members = _protocol_members()
    assert {
        "name",
        "can_count",
        "isa_target",
        "check",
        "probe",
        "start_runner",
        "run_program",
        "count_tool",
        "count_program",
    } <= members.keys()
    for name, want in members.items():
        assert hasattr(board, name), f"{type(board).__name__} has no {name}"
        if not isinstance(want, inspect.Signature):
            assert isinstance(getattr(board, name), {"str": str, "bool": bool}[want]), name
            continue
        got = inspect.signature(getattr(board, name)).parameters
        for p in list(want.parameters.values())[1:]:  # after self
            if p.kind is p.VAR_POSITIONAL:
                assert any(q.kind is q.VAR_POSITIONAL for q in got.values()), f"{name}: no *{p.name}"
                continue
            assert p.name in got and got[p.name].kind == p.kind, f"{type(board).__name__}.{name}: {p.name}"


def test_counting_is_a_capability():
    local = LocalBoard()
    assert not local.can_count and QemuBoard().can_count and SshBoard(BoardSpec.parse("k1")).can_count
    with pytest.raises(RvdeployError) as exc:
        require_counting(local)
    assert str(exc.value).startswith(NEEDS_EMULATION)
    with pytest.raises(RvdeployError, match="--board qemu"):
        local.count_program(Path(sys.executable), ["-c", "pass"])
    require_counting(QemuBoard())  # no error: counting is the qemu board's


def test_isa_targets():
    assert LocalBoard().isa_target(None).name == "host"  # this machine's, whatever the bundle
    assert QemuBoard("rv64gcv-vlen512").isa_target(None).name == "rv64gcv-vlen512"


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
    code = "from rvdeploy.boards.qemu import checked_qemu\nchecked_qemu()"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"},
    )
    assert proc.returncode != 0 and "needs 8.1 or newer" in proc.stderr and "bookworm-backports" in proc.stderr


def test_probe_env_parsing():
    info = parse_env(
        "arch=riscv64\nvlen=256\nhwprobe=1\nextensions=i m a f d c v zba\ndetectable=i m\ncpus=8\nmem_total=1024\n"
    )
    assert info == {
        "arch": "riscv64",
        "vlen": 256,
        "vector": True,
        "extensions": ["i", "m", "a", "f", "d", "c", "v", "zba"],
        "hwprobe": True,
        "cpus": 8,
        "mem_total": 1024,
    }


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
