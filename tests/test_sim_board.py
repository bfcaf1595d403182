"""The emulated riscv64 board (`rvdeploy sim`) and --board qemu: the probe reports the VLEN the board was
started with, a VLEN-256 bundle is refused on a VLEN-128 board before anything runs, and on a matching
board the launcher's checks pass and the bundle's real riscv64 IREE runtime runs the module with token ids
only, giving onnxruntime's greedy tokens.

The userland is debootstrapped once (1-2 minutes) into the user cache directory and reused by later runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from cli_run import one_line_error, rvdeploy
from conftest import DEMO, TINY, system_part_missing
from ort_reference import greedy_tokens
from test_llamacpp import TINY_HF

from rvdeploy import sim, sshd
from rvdeploy.boards.qemu import MIN_VERSION, qemu_version
from rvdeploy.targets import get_target
from rvdeploy.tokenizer import TextCodec

pytestmark = pytest.mark.slow


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (debootstrap, chroot, binfmt_misc)"
    for tool in ("debootstrap", "clang-19", "qemu-riscv64"):
        if shutil.which(tool) is None:
            return f"needs {tool} (scripts/setup.sh)"
    if not os.path.exists(sshd.SSHD):
        return "needs openssh-server (scripts/setup.sh)"
    if qemu_version(shutil.which("qemu-riscv64"))[:2] < MIN_VERSION:
        return "needs qemu-user >= 8.1 (scripts/setup.sh installs it from bookworm-backports)"
    return None


@pytest.fixture(scope="module", autouse=True)
def _setup_done():
    if _why_not():
        system_part_missing(_why_not())


@pytest.fixture(scope="module")
def boards(tmp_path_factory):
    """Three emulated boards on the same cached userland: VLEN 128, VLEN 256, and a SpacemiT K1's ISA."""
    old = os.environ.get("RVDEPLOY_STATE_DIR")
    os.environ["RVDEPLOY_STATE_DIR"] = str(tmp_path_factory.mktemp("simstate"))
    started = {}
    try:
        for vlen in (128, 256):
            name = f"sim{vlen}"
            started[vlen] = sim.up(vlen=vlen, name=name)
        started["k1"] = sim.up(cpu=get_target("spacemit-k1").qemu_cpu, name="simk1")
        yield {
            vlen: {"name": s.board, "env": {"RVDEPLOY_SSH_CONFIG": str(s.ssh_config)}, "pid": s.pid}
            for vlen, s in started.items()
        }
    finally:
        for s in started.values():
            sim.down(s.name)
        if old is None:
            os.environ.pop("RVDEPLOY_STATE_DIR", None)
        else:
            os.environ["RVDEPLOY_STATE_DIR"] = old
    for s in started.values():  # down stopped what up started, by pid
        assert not os.path.exists(f"/proc/{s.pid}") or b"sshd" not in open(f"/proc/{s.pid}/cmdline", "rb").read()


def test_sessions_run_in_the_riscv64_userland(boards):
    b = boards[256]
    out = subprocess.run(
        ["ssh", "-F", b["env"]["RVDEPLOY_SSH_CONFIG"], b["name"], "uname -m; command -v sha256sum"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["riscv64", "/usr/bin/sha256sum"]


@pytest.mark.parametrize("vlen", [128, 256])
def test_probe_reports_the_vlen_it_was_started_with(boards, vlen):
    b = boards[vlen]
    proc = rvdeploy("probe", "--board", b["name"], "--json", env=b["env"])
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["arch"] == "riscv64" and info["vector"] is True and info["vlen"] == vlen
    assert info["hwprobe"] is True and {"v", "zba", "zbb", "zbs"} <= set(info["extensions"])


def test_vlen256_bundle_refused_on_vlen128_board(boards, built, riscv_runtime):
    bundle = built(str(TINY), "rv64gcv-vlen256", "baseline")
    b = boards[128]
    proc = rvdeploy("run", str(bundle.path), "--board", b["name"], "-n", "2", env=b["env"])
    one_line_error(proc, "refused", "VLEN: bundle needs 256, board has 128")


def test_matching_board_runs_the_module_with_ids_only(boards, built, riscv_runtime):
    bundle = built(str(TINY), "rv64gcv-vlen256", "baseline")
    b = boards[256]
    prompt = "Beautiful is $(reboot)"
    proc = rvdeploy(
        "run", str(bundle.path), "--board", b["name"], "--prompt", prompt, "-n", "8", "--json", env=b["env"]
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    ids = TextCodec(bundle.path / "tokenizer.json").encode(prompt)  # the board saw these ids, not the text
    assert doc["prompt_ids"] == ids and doc["board"] == b["name"]
    assert doc["ids"] == greedy_tokens(TINY / "model.onnx", ids, 8)[0]


def test_chat_three_turns_on_the_emulated_ssh_board(boards, built, riscv_runtime):
    """One runner session over ssh for the whole conversation: the cache grows turn by turn."""
    bundle = built(str(DEMO), "rv64gcv-vlen256")
    b = boards[256]
    proc = rvdeploy(
        "chat",
        str(bundle.path),
        "--board",
        b["name"],
        "-n",
        "8",
        env=b["env"],
        input="Beautiful is\nSimple is\nFlat is\n",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == " better than ugly."
    used = [int(x.split("/")[0]) for x in proc.stderr.split("context ")[1:]]
    assert len(used) == 3 and used[0] == 12 and used[0] < used[1] < used[2]


def test_bundle_without_runtime_says_what_to_supply(boards, built):
    bundle = built(str(DEMO), "rv64gcv-vlen256", "mmt4d", no_runtime=True)
    b = boards[256]
    proc = rvdeploy("run", str(bundle.path), "--board", b["name"], "-n", "2", env=b["env"])
    one_line_error(proc, "has no riscv64 IREE runtime", "rvdeploy runtime build")


def test_llama_cpp_on_the_emulated_ssh_board(boards, built):
    """--compare llama.cpp over ssh: llama-bench and the GGUF go to the board's blob cache and run there
    (under the board's own emulation), beside the bundle's own iree-benchmark-module."""
    bundle = built(str(TINY_HF), "spacemit-k1")
    b = boards["k1"]
    proc = rvdeploy(
        "bench",
        str(bundle.path),
        "--board",
        b["name"],
        "--compare",
        "llama.cpp",
        "--gguf-type",
        "q8_0",
        "-p",
        "8",
        "-n",
        "4",
        "-r",
        "2",
        "--json",
        env=b["env"],
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert [(r["pipeline"], r["test"]) for r in doc["results"]] == [
        ("mmt4d", "pp8"),
        ("mmt4d", "tg4"),
        ("llama.cpp Q8_0", "pp8"),
        ("llama.cpp Q8_0", "tg4"),
    ]
    for r in doc["results"]:
        assert r["t/s"] > 0 and len(r["samples"]) == 2
        if r["pipeline"] == "mmt4d":  # the runner reports its own peak (getrusage on the board)
            assert r["peak_rss_bytes"] > 1 << 20
        else:  # llama-bench ran elsewhere: GNU time here cannot see it
            assert r["peak_rss_bytes"] is None


def test_cost_on_the_emulated_ssh_board_matches_the_qemu_board(boards, built):
    """`sim up` puts the counting qemu on the board; --cost over ssh then counts the same program on the same
    CPU as --board qemu does here: identical vector counts (scalar ones vary by ~0.1 % run to run)."""
    from rvdeploy import qemu_cost

    try:
        qemu_cost.plugin_qemu()
    except Exception as exc:  # noqa: BLE001
        system_part_missing(str(exc))
    bundle = built(str(TINY_HF), "spacemit-k1")
    b = boards["k1"]
    args = ("bench", str(bundle.path), "--compare", "llama.cpp", "--cost", "-p", "9", "-n", "8", "--json")
    over_ssh = rvdeploy(*args, "--board", b["name"], env=b["env"])
    assert over_ssh.returncode == 0, over_ssh.stderr
    here = rvdeploy(*args, "--board", "qemu:spacemit-k1")
    assert here.returncode == 0, here.stderr
    a = json.loads(over_ssh.stdout)["cost"]["llama.cpp F32"]
    c = json.loads(here.stdout)["cost"]["llama.cpp F32"]
    assert a["board"] == "simk1" and c["board"] == "qemu:spacemit-k1"
    for phase in ("per_prompt_token", "per_generated_token"):
        assert a[phase]["vector_instructions"] == c[phase]["vector_instructions"] > 0
        assert a[phase]["vector_lmul_weighted"] == c[phase]["vector_lmul_weighted"]
        assert a[phase]["instructions"] == pytest.approx(c[phase]["instructions"], rel=0.1)


def test_qemu_board(built, riscv_runtime):
    bundle = built(str(TINY), "rv64gcv-vlen256", "baseline")
    one_line_error(
        rvdeploy("run", str(bundle.path), "--board", "qemu:rv64gcv-vlen128", "-n", "2"),
        "refused",
        "VLEN: bundle needs 256, board has 128",
    )
    info = json.loads(rvdeploy("probe", "--board", "qemu:rv64gcv-vlen512", "--json").stdout)
    assert info["vlen"] == 512


def test_probe_without_vector_unit_does_not_crash():
    info = json.loads(rvdeploy("probe", "--board", "qemu:rv64gc", "--json").stdout)
    assert info["vector"] is False and info["vlen"] == 0 and "v" not in info["extensions"]


def test_sim_status_and_down_cleanup(boards):
    proc = rvdeploy(
        "sim", "status", "--name", "sim128", "--json", env={"RVDEPLOY_STATE_DIR": os.environ["RVDEPLOY_STATE_DIR"]}
    )
    info = json.loads(proc.stdout)
    assert info["running"] is True and info["vlen"] == 128 and info["board"] == "sim128"
