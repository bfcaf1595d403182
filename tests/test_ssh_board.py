"""--board over ssh against a real sshd on 127.0.0.1 whose sessions run on this machine with their own HOME
(the board's cache lives there): upload, content-addressed cache, launcher checks and the host runtime,
exactly as on a board. Every case runs the CLI: one JSON document or one error line, and an exit code."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from boards import start_host_board
from cli_run import one_line_error, rvdeploy
from conftest import DEMO, system_part_missing

from rvdeploy import sshd


@pytest.fixture(scope="module", autouse=True)
def _setup_done():
    if not os.path.exists(sshd.SSHD) or os.geteuid() != 0:
        system_part_missing("needs openssh-server and root (scripts/setup.sh)")


PROMPT = "Beautiful is"


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    root = tmp_path_factory.mktemp("sshboard")
    server = start_host_board(root / "state", root / "home", alias="loopback")
    yield {"name": server.alias, "home": root / "home", "env": {"RVDEPLOY_SSH_CONFIG": str(server.ssh_config)}}
    sshd.stop(server)
    assert not sshd.alive(server)


@pytest.fixture(scope="module")
def host_bundle(built):
    return built(str(DEMO))


def run_json(bundle, board_name, env, prompt=PROMPT, n=16):
    proc = rvdeploy("run", str(bundle.path), "--board", board_name, "--prompt", prompt, "-n", str(n), "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_same_tokens_over_ssh_as_local(board, host_bundle):
    local = run_json(host_bundle, "local", {})
    remote = run_json(host_bundle, board["name"], board["env"])
    assert remote["ids"] == local["ids"] and remote["text"] == local["text"]
    assert remote["text"].startswith(" better than ugly")


def _runners_under(home) -> list[str]:
    """Live rvdeploy-runner processes whose command line or directory is in HOME (the board's side)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if "rvdeploy-runner" in cmd and str(home) in cwd + cmd:
            found.append(cmd)
    return found


def test_board_that_drops_mid_session(board, host_bundle, monkeypatch):
    """The ssh connection dies while a chat session waits for its next turn: one line, and the runner on the
    board ends with it (its stdin closes) instead of waiting forever."""
    from rvdeploy import session
    from rvdeploy.errors import RvdeployError
    from rvdeploy.generation import Sampling

    monkeypatch.setenv("RVDEPLOY_SSH_CONFIG", board["env"]["RVDEPLOY_SSH_CONFIG"])
    b, codec = session.open_bundle(host_bundle.path)
    with session.Session(b, codec, board["name"], Sampling(), 4) as s:
        s.say(PROMPT)
        assert _runners_under(board["home"])  # the session's runner waits on the board for the next turn
        s._proc.proc.kill()  # the ssh client dies (a dropped link)
        s._proc.proc.wait()
        with pytest.raises(RvdeployError) as exc:
            s.say(" Simple is")
    assert "\n" not in str(exc.value) and "rvdeploy-runner" in str(exc.value)
    deadline = time.monotonic() + 10
    while _runners_under(board["home"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _runners_under(board["home"])


def test_unchanged_bundle_is_not_sent_twice(board, host_bundle):
    run_json(host_bundle, board["name"], board["env"], n=2)
    blobs = board["home"] / ".cache" / "rvdeploy" / "blobs"
    before = {p.name: p.stat().st_mtime_ns for p in blobs.iterdir()}
    run_json(host_bundle, board["name"], board["env"], n=2)
    assert {p.name: p.stat().st_mtime_ns for p in blobs.iterdir()} == before
    names = {f.sha256 for f in host_bundle.manifest.files}
    assert names <= set(before)
    assert not [p for p in blobs.iterdir() if p.name.startswith(".")]  # no partial upload left


def test_shell_metacharacters_are_harmless(board, host_bundle, tmp_path):
    canary = board["home"] / "canary"
    canary.write_text("still here")
    witness = Path("/tmp") / f"pw{uuid.uuid4().hex[:6]}"
    prompt = (
        f"'; rm -rf ~; $(reboot) `touch {witness}` \"; touch {witness} && rm -rf ~ | tee {witness} & ${{IFS}}*?\\\n#"
    )
    remote = run_json(host_bundle, board["name"], board["env"], prompt=prompt, n=4)
    local = run_json(host_bundle, "local", {}, prompt=prompt, n=4)
    assert remote["ids"] == local["ids"] and remote["prompt"] == prompt
    assert canary.read_text() == "still here"
    assert not witness.exists()


def test_altered_byte_on_the_board_is_refused(board, host_bundle):
    run_json(host_bundle, board["name"], board["env"], n=1)
    vmfb = host_bundle.manifest.entry("model.vmfb")
    blob = board["home"] / ".cache" / "rvdeploy" / "blobs" / vmfb.sha256
    original = blob.read_bytes()
    try:
        damaged = bytearray(original)
        damaged[len(damaged) // 3] ^= 0x01
        blob.write_bytes(bytes(damaged))
        proc = rvdeploy("run", str(host_bundle.path), "--board", board["name"], "-n", "2", env=board["env"])
        one_line_error(proc, "refused", "model.vmfb", "sha256")
    finally:
        blob.write_bytes(original)


def test_altered_byte_locally_is_refused(board, host_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(host_bundle.path, copy)
    data = bytearray((copy / "model.irpa").read_bytes())
    data[100] ^= 0x80
    (copy / "model.irpa").write_bytes(bytes(data))
    proc = rvdeploy("run", str(copy), "--board", board["name"], "-n", "2", env=board["env"])
    one_line_error(proc, "model.irpa", "sha256")


def test_unreachable_board(tmp_path):
    port = sshd.free_port()  # nothing listens there
    proc = rvdeploy("probe", "--board", f"root@127.0.0.1:{port}", env={"RVDEPLOY_SSH_CONFIG": "/dev/null"})
    one_line_error(proc, "cannot reach board", "Connection refused")


def test_unknown_host_key_is_refused(board, tmp_path):
    config = Path(board["env"]["RVDEPLOY_SSH_CONFIG"])
    text = config.read_text()
    known = tmp_path / "known_hosts"
    known.write_text("")  # an empty known_hosts: the board's key is unknown, and ssh must not accept it
    other = tmp_path / "ssh_config"
    other.write_text(
        "\n".join(ln if "UserKnownHostsFile" not in ln else f"  UserKnownHostsFile {known}" for ln in text.splitlines())
        + "\n"
    )
    proc = rvdeploy("probe", "--board", board["name"], env={"RVDEPLOY_SSH_CONFIG": str(other)})
    one_line_error(proc, "Host key verification failed")
    assert known.read_text() == ""


def test_full_disk_board(tmp_path, host_bundle):
    home = tmp_path / "home"
    home.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(home)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here: " + mounted.stderr.decode().strip())
    try:
        server = start_host_board(tmp_path / "state", home, alias="fullboard")
        try:
            proc = rvdeploy(
                "run",
                str(host_bundle.path),
                "--board",
                "fullboard",
                "-n",
                "2",
                env={"RVDEPLOY_SSH_CONFIG": str(server.ssh_config)},
            )
            one_line_error(proc, "no space left on device")
            blobs = home / ".cache" / "rvdeploy" / "blobs"
            assert not [p for p in blobs.iterdir() if p.name.startswith(".")]  # the partial upload was removed
        finally:
            sshd.stop(server)
    finally:
        subprocess.run(["umount", str(home)], check=True)


def test_nothing_left_in_temporary_directories(board, host_bundle):
    tmp = Path(tempfile.mkdtemp(prefix="rvt-"))  # short: ssh's control socket path must fit 108 bytes
    try:
        env = {**board["env"], "TMPDIR": str(tmp)}
        proc = rvdeploy("run", str(host_bundle.path), "--board", board["name"], "-n", "2", env=env)
        assert proc.returncode == 0, proc.stderr
        proc = rvdeploy("probe", "--board", board["name"], "--json", env=env)
        assert proc.returncode == 0, proc.stderr
        assert list(tmp.iterdir()) == []
        # and no ssh master left behind: none of our processes still names that directory
        leftovers = subprocess.run(["pgrep", "-f", str(tmp)], capture_output=True, text=True).stdout
        assert leftovers.strip() == ""
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_probe_over_ssh_on_a_host_board(board):
    proc = rvdeploy("probe", "--board", board["name"], "--json", env=board["env"])
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["arch"] == os.uname().machine and info["cpus"] >= 1 and info["mem_total"] > 0


def test_bench_over_ssh_uses_the_launcher(board, host_bundle):
    """bench on an ssh board: the bundle's launcher runs the board's iree-benchmark-module."""
    proc = rvdeploy(
        "bench",
        str(host_bundle.path),
        "--board",
        board["name"],
        "-p",
        "8",
        "-n",
        "4",
        "-r",
        "2",
        "--json",
        env=board["env"],
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert [r["test"] for r in doc["results"]] == ["pp8", "tg4"]
    assert all(r["t/s"] > 0 and len(r["samples"]) == 2 for r in doc["results"])
