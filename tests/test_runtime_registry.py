"""`rvdeploy runtime add | show` with a real riscv64 ELF stand-in (cross-compiled here; it runs no IREE
module), and what `build` and `run` do with and without a registered runtime."""

from __future__ import annotations

import json
import os
import sys

import pytest

from boards import fake_runtime
from cli_run import rvdeploy
from conftest import TINY
from rvdeploy import api, runtimes
from rvdeploy.errors import RvdeployError

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/bin/clang-19"), reason="needs clang-19 (scripts/setup.sh)")


def test_add_and_show(tmp_path):
    rt_dir = fake_runtime(tmp_path / "rt")
    env = {"RVDEPLOY_CONFIG_DIR": str(tmp_path / "config")}
    proc = rvdeploy("runtime", "add", str(rt_dir), "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    rt = json.loads(proc.stdout)
    assert rt["arch"] == "riscv64" and rt["version"] == "3.13.0" and set(rt["tools"]) == set(runtimes.TOOLS)
    shown = json.loads(rvdeploy("runtime", "show", "--json", env=env).stdout)
    assert [r["path"] for r in shown["registered"]] == [str(rt_dir)]
    assert shown["host"]["version"] == runtimes.host_runtime_version()


def test_version_mismatch_warns(tmp_path):
    rt_dir = fake_runtime(tmp_path / "rt", version="3.12.0")
    proc = rvdeploy("runtime", "add", str(rt_dir), env={"RVDEPLOY_CONFIG_DIR": str(tmp_path / "config")})
    assert proc.returncode == 0 and "3.12.0 differs" in proc.stderr


def test_refuses_host_elf_and_missing_tool(tmp_path):
    host = tmp_path / "host"
    host.mkdir()
    for tool in runtimes.TOOLS:
        os.symlink(sys.executable, host / tool)
    with pytest.raises(RvdeployError, match="not riscv64"):
        runtimes.inspect_runtime(host)
    half = fake_runtime(tmp_path / "half")
    (half / "iree-benchmark-module").unlink()
    with pytest.raises(RvdeployError, match="iree-benchmark-module is missing"):
        runtimes.inspect_runtime(half)
    text = tmp_path / "text"
    text.mkdir()
    for tool in runtimes.TOOLS:
        (text / tool).write_text("#!/bin/sh\n")
    with pytest.raises(RvdeployError, match="not a 64-bit little-endian ELF"):
        runtimes.inspect_runtime(text)


def test_changed_registered_runtime_is_an_error(tmp_path):
    rt_dir = fake_runtime(tmp_path / "rt")
    runtimes.add(rt_dir)
    try:
        (rt_dir / "iree-run-module").write_bytes((rt_dir / "iree-run-module").read_bytes() + b"\0")
        with pytest.raises(RvdeployError, match="changed since it was added"):
            runtimes.for_arch("riscv64")
    finally:
        (runtimes.config_dir() / runtimes.REGISTRY).unlink()


def test_host_bundle_refuses_runtime(tmp_path):
    with pytest.raises(RvdeployError, match="host bundles"):
        api.build(str(TINY), out=tmp_path / "b", runtime=fake_runtime(tmp_path / "rt"))
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_build_bundles_the_runtime(built, tmp_path):
    rt_dir = fake_runtime(tmp_path / "rt")
    bundle = built(str(TINY), "rv64gcv-vlen256", "baseline", runtime=rt_dir)
    m = bundle.manifest
    assert m["runtime"]["kind"] == "bundled" and m["runtime"]["version"] == "3.13.0"
    entries = {f["path"]: f for f in m["files"]}
    for tool in runtimes.TOOLS:
        assert entries[f"runtime/{tool}"]["executable"]
        assert os.access(bundle.path / "runtime" / tool, os.X_OK)
    assert entries["probe/rvdeploy-probe"]["executable"]
    assert m["requirements"] == {"arch": "riscv64", "vlen": 256,
                                 "extensions": ["i", "m", "a", "f", "d", "c", "v", "zba", "zbb", "zbs"]}


@pytest.mark.slow
def test_bundle_without_runtime_says_what_to_supply(built):
    bundle = built(str(TINY), "rv64gcv-vlen256", "baseline")
    assert bundle.manifest["runtime"]["kind"] == "none"
    with pytest.raises(RvdeployError, match="no riscv64 IREE runtime") as exc:
        api.run(bundle.path, board="qemu", prompt="Beautiful is", max_new_tokens=2)
    assert "rvdeploy runtime add DIR" in str(exc.value)
