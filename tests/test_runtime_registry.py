"""`rvdeploy runtime build | add | show` with the real riscv64 IREE runtime (built from IREE's sources once
per session, cached), and what `build` and `run` do with and without one."""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest
from cli_run import one_line_error, rvdeploy
from conftest import TINY

from rvdeploy import api, runtimes
from rvdeploy.errors import RvdeployError
from rvdeploy.probe import probe_binary


def _copy_runtime(rt, dest):
    shutil.copytree(rt.path, dest)
    return dest


def test_build_is_cached_and_registered(riscv_runtime, tmp_path):
    env = {"RVDEPLOY_CONFIG_DIR": str(tmp_path / "config")}
    proc = rvdeploy("runtime", "build", "--json", env=env)  # RVDEPLOY_IREE_SOURCE: the shared archive
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["cached"] is True and doc["seconds"] < 30 and doc["path"] == str(riscv_runtime.path)
    assert doc["source"]["kind"] == "archive" and doc["source"]["digest"].startswith("sha256-")
    assert doc["version"] == riscv_runtime.version != "unknown"
    assert "differs from the compiler's" in proc.stderr  # IREE 3.12 sources, compiler 3.13: said, not hidden
    shown = json.loads(rvdeploy("runtime", "show", "--json", env=env).stdout)
    assert [r["path"] for r in shown["registered"]] == [str(riscv_runtime.path)]
    assert shown["registered"][0]["source"] == doc["source"]
    assert shown["host"]["version"] == runtimes.host_runtime_version()
    table = rvdeploy("runtime", "show", env=env).stdout
    assert "archive iree-src-" in table


def _program_header_types(exe) -> list[int]:
    data = exe.read_bytes()
    phoff = int.from_bytes(data[0x20:0x28], "little")
    size, count = int.from_bytes(data[0x36:0x38], "little"), int.from_bytes(data[0x38:0x3A], "little")
    return [int.from_bytes(data[phoff + i * size : phoff + i * size + 4], "little") for i in range(count)]


def test_built_tools_are_static_riscv64_iree_tools(riscv_runtime):
    for tool in runtimes.TOOLS:
        exe = riscv_runtime.path / tool
        assert runtimes.elf_arch(exe) == "riscv64"
        types = _program_header_types(exe)
        assert 1 in types and 3 not in types  # PT_LOAD segments, no PT_INTERP: static, runs on any riscv64 libc
        assert runtimes._is_iree_tool(exe)
    info = json.loads((riscv_runtime.path / "BUILD.json").read_text())
    assert info["march"] == "rv64gc" and info["static"] is True


def test_add_and_show(riscv_runtime, tmp_path):
    rt_dir = _copy_runtime(riscv_runtime, tmp_path / "rt")
    env = {"RVDEPLOY_CONFIG_DIR": str(tmp_path / "config")}
    proc = rvdeploy("runtime", "add", str(rt_dir), "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    rt = json.loads(proc.stdout)
    assert rt["arch"] == "riscv64" and rt["version"] == riscv_runtime.version
    assert set(rt["tools"]) == set(runtimes.TOOLS)
    shown = json.loads(rvdeploy("runtime", "show", "--json", env=env).stdout)
    assert [r["path"] for r in shown["registered"]] == [str(rt_dir)]


def test_version_mismatch_warns(riscv_runtime, tmp_path):
    rt_dir = _copy_runtime(riscv_runtime, tmp_path / "rt")
    info = json.loads((rt_dir / "BUILD.json").read_text())
    (rt_dir / "BUILD.json").write_text(json.dumps(info | {"version": "3.11.0"}))
    proc = rvdeploy("runtime", "add", str(rt_dir), env={"RVDEPLOY_CONFIG_DIR": str(tmp_path / "config")})
    assert proc.returncode == 0 and "3.11.0 differs" in proc.stderr


def test_refuses_host_elf_missing_tool_and_other_programs(riscv_runtime, tmp_path):
    host = tmp_path / "host"  # this machine's programs, but not IREE's
    host.mkdir()
    for tool in runtimes.TOOLS:
        os.symlink(sys.executable, host / tool)
    with pytest.raises(RvdeployError, match="x86_64 program but not IREE's rvdeploy-runner"):
        runtimes.inspect_runtime(host)
    half = _copy_runtime(riscv_runtime, tmp_path / "half")
    (half / "iree-benchmark-module").unlink()
    with pytest.raises(RvdeployError, match="iree-benchmark-module is missing"):
        runtimes.inspect_runtime(half)
    text = tmp_path / "text"
    text.mkdir()
    for tool in runtimes.TOOLS:
        (text / tool).write_text("#!/bin/sh\n")
    with pytest.raises(RvdeployError, match="not a 64-bit little-endian ELF"):
        runtimes.inspect_runtime(text)
    probe = tmp_path / "probe"  # a riscv64 ELF that is not IREE's (the board probe) is no runtime
    probe.mkdir()
    for tool in runtimes.TOOLS:
        shutil.copy(probe_binary(), probe / tool)
    proc = rvdeploy("runtime", "add", str(probe), env={"RVDEPLOY_CONFIG_DIR": str(tmp_path / "config")})
    one_line_error(proc, "is a riscv64 program but not IREE's iree-run-module")
    assert not (tmp_path / "config" / runtimes.REGISTRY).exists()


@pytest.mark.parametrize("text", ["[]", '{"runtimes": [{}]}', '{"runtimes": "x"}', '{"runtimes": [[1]]}', "{x"])
def test_malformed_registry_is_one_line(tmp_path, text):
    config = tmp_path / "config"
    config.mkdir()
    (config / runtimes.REGISTRY).write_text(text)
    proc = rvdeploy("runtime", "show", env={"RVDEPLOY_CONFIG_DIR": str(config)})
    one_line_error(proc, str(config / runtimes.REGISTRY))


def test_changed_registered_runtime_is_an_error(riscv_runtime, tmp_path):
    config = tmp_path / "config"
    old = os.environ["RVDEPLOY_CONFIG_DIR"]
    os.environ["RVDEPLOY_CONFIG_DIR"] = str(config)
    try:
        rt_dir = _copy_runtime(riscv_runtime, tmp_path / "rt")
        runtimes.add(rt_dir)
        (rt_dir / "iree-run-module").write_bytes((rt_dir / "iree-run-module").read_bytes() + b"\0")
        with pytest.raises(RvdeployError, match="changed since it was added"):
            runtimes.for_arch("riscv64")
    finally:
        os.environ["RVDEPLOY_CONFIG_DIR"] = old


def test_host_bundle_refuses_riscv64_runtime(riscv_runtime, tmp_path):
    with pytest.raises(RvdeployError, match="riscv64 tools, the target is"):
        api.build(str(TINY), out=tmp_path / "b", runtime=riscv_runtime.path)
    with pytest.raises(RvdeployError, match="host bundles"):
        api.build(str(TINY), out=tmp_path / "b", no_runtime=True)
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_build_bundles_the_runtime(built, riscv_runtime):
    bundle = built(str(TINY), "rv64gcv-vlen256", "baseline")  # none given: the registered one
    m = bundle.manifest
    assert m.runtime.kind == "bundled" and m.runtime.version == riscv_runtime.version
    assert m.runtime.source == riscv_runtime.source and m.runtime.source["kind"] == "archive"
    entries = {f.path: f for f in m.files}
    for tool in runtimes.TOOLS:
        assert entries[f"runtime/{tool}"].executable
        assert entries[f"runtime/{tool}"].sha256 == riscv_runtime.tools[tool]
        assert os.access(bundle.path / "runtime" / tool, os.X_OK)
    assert entries["probe/rvdeploy-probe"].executable
    assert m.requirements.to_dict() == {
        "arch": "riscv64",
        "vlen": 256,
        "extensions": ["i", "m", "a", "f", "d", "c", "v", "zba", "zbb", "zbs"],
    }


@pytest.mark.slow
def test_bundle_without_runtime_says_what_to_supply(built):
    bundle = built(str(TINY), "rv64gcv-vlen256", "baseline", no_runtime=True)
    assert bundle.manifest.runtime.kind == "none"
    with pytest.raises(RvdeployError, match="no riscv64 IREE runtime") as exc:
        api.run(bundle.path, board="qemu", prompt="Beautiful is", max_new_tokens=2)
    assert "rvdeploy runtime build" in str(exc.value)
