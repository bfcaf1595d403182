"""Target profiles: shipped files load and are consistent; bad files are rejected; flags compile; qemu accepts them."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest
from conftest import system_part_missing

from rvdeploy.datafiles import data_dir
from rvdeploy.errors import RvdeployError
from rvdeploy.targets import FIGURE_KEYS, Target, get_target, list_targets

EXPECTED = {
    "host",
    "rv64gc",
    "rv64gcv-vlen128",
    "rv64gcv-vlen256",
    "rv64gcv-vlen512",
    "spacemit-k1",
    "kendryte-k230",
    "sophgo-sg2044",
    "sifive-x280",
}

RISCV = [t.name for t in list_targets() if t.arch == "riscv64"]


# --------------------------------------------------------------------------------------------- shipped files


def test_every_shipped_target_loads():
    targets = list_targets()
    assert {t.name for t in targets} >= EXPECTED
    assert [t.name for t in targets] == sorted(t.name for t in targets)
    for t in targets:
        assert isinstance(t, Target)
        assert get_target(t.name) == t
        d = t.to_dict()
        assert json.loads(json.dumps(d)) == d
        assert d["cpu_features"] == list(t.cpu_features)
        assert t.has_vector == (t.vlen > 0)
        assert t.is_host == (t.arch == "host")
        for key, value in t.figures.items():
            assert key in FIGURE_KEYS and value > 0 and t.sources[key].strip()


def test_host_target():
    host = get_target("host")
    assert host.is_host and not host.has_vector
    assert (host.triple, host.cpu, host.abi, host.cpu_features, host.qemu_cpu) == ("host", "host", "", (), "")


@pytest.mark.parametrize("name", RISCV)
def test_vlen_matches_zvl_and_qemu(name):
    t = get_target(name)
    assert t.triple == "riscv64-unknown-linux-gnu" and t.abi == "lp64d"
    assert {"+m", "+a", "+f", "+d", "+c"} <= set(t.cpu_features)
    zvl = [int(m.group(1)) for f in t.cpu_features if (m := re.fullmatch(r"\+zvl(\d+)b", f))]
    props = dict(p.split("=", 1) for p in t.qemu_cpu.split(",")[1:])
    if t.vlen == 0:
        assert zvl == [] and "+v" not in t.cpu_features
        assert props.get("v", "false") == "false" and "vlen" not in props
    else:
        assert zvl == [t.vlen], "exactly one +zvlNb, equal to the board's VLEN"
        assert "+v" in t.cpu_features
        assert props["v"] == "true" and int(props["vlen"]) == t.vlen and props["vext_spec"] == "v1.0"


@pytest.mark.parametrize("name", RISCV)
def test_qemu_cpu_enables_every_feature(name):
    """Every extension the compiler may use must be switched on in the emulator (lower-case qemu 10 names)."""
    t = get_target(name)
    props = dict(p.split("=", 1) for p in t.qemu_cpu.split(",")[1:])
    for feat in t.cpu_features:
        ext = feat[1:]
        if ext in {"m", "a", "f", "d", "c"} or re.fullmatch(r"zvl\d+b", ext):
            continue  # in qemu's rv64 base model / given by vlen=
        assert props.get(ext) == "true", f"{feat} in cpu_features but '{ext}=true' missing from qemu_cpu"


def test_board_facts():
    k1 = get_target("spacemit-k1")
    assert (k1.vlen, k1.cores, k1.clock_ghz) == (256, 8, 1.6)
    assert "+zvfh" in k1.cpu_features and "+xsmtvdot" not in k1.cpu_features  # IME is on cluster 0 only
    assert k1.figures == {"peak_gflops_f32": 32.0, "peak_gflops_f16": 64.0, "dram_gbps": 10.7}
    assert get_target("kendryte-k230").vlen == 128
    sg = get_target("sophgo-sg2044")
    assert (sg.vlen, sg.cores, sg.clock_ghz) == (128, 64, 2.6)
    assert get_target("sifive-x280").vlen == 512
    for name in ("rv64gcv-vlen128", "rv64gcv-vlen256", "rv64gcv-vlen512"):
        assert "+zvfh" not in get_target(name).cpu_features


# --------------------------------------------------------------------------------------------- errors


def test_unknown_target_lists_known_names():
    with pytest.raises(RvdeployError) as info:
        get_target("no-such-board")
    err = info.value
    assert err.message == "unknown target 'no-such-board'"
    assert err.hint.startswith("known targets: ")
    assert set(err.hint.removeprefix("known targets: ").split(", ")) == {t.name for t in list_targets()}


_GOOD = """\
name = "demo"
summary = "demo board"
arch = "riscv64"
triple = "riscv64-unknown-linux-gnu"
abi = "lp64d"
cpu = "generic-rv64"
cpu_features = ["+m", "+a", "+f", "+d", "+c", "+v", "+zvl256b"]
vlen = 256
qemu_cpu = "rv64,v=true,vlen=256,elen=64,vext_spec=v1.0"
cores = 8
clock_ghz = 1.6
notes = "test"

[figures]
peak_gflops_f32 = 32.0

[sources]
peak_gflops_f32 = "a datasheet"
"""


def _write(tmp_path: Path, text: str, stem: str = "demo") -> Path:
    path = tmp_path / f"{stem}.toml"
    path.write_text(text)
    return path


def test_good_file_in_temp_dir_loads(tmp_path):
    _write(tmp_path, _GOOD)
    t = get_target("demo", directory=tmp_path)
    assert t.vlen == 256 and t.figures == {"peak_gflops_f32": 32.0}
    assert [x.name for x in list_targets(tmp_path)] == ["demo"]


BAD_CASES = {
    # case: (text transformation, key the error must name)
    "missing key": (lambda s: s.replace('abi = "lp64d"\n', ""), "abi"),
    "extra key": (lambda s: s.replace("cores = 8", "cores = 8\nmhz = 1600"), "mhz"),
    "wrong type": (lambda s: s.replace("vlen = 256", 'vlen = "256"'), "vlen"),
    "bool for int": (lambda s: s.replace("cores = 8", "cores = true"), "cores"),
    "name != stem": (lambda s: s.replace('name = "demo"', 'name = "other"'), "name"),
    "zvl below vlen": (lambda s: s.replace('"+zvl256b"', '"+zvl128b"'), "cpu_features"),
    "no zvl": (lambda s: s.replace(', "+zvl256b"', ""), "cpu_features"),
    "vector feature without vlen": (lambda s: s.replace("vlen = 256", "vlen = 0"), "vlen"),
    "qemu vlen differs": (lambda s: s.replace("vlen=256", "vlen=128"), "qemu_cpu"),
    "figure without source": (lambda s: s.replace('peak_gflops_f32 = "a datasheet"\n', ""), "figures.peak_gflops_f32"),
    "source without figure": (lambda s: s + 'dram_gbps = "somewhere"\n', "sources.dram_gbps"),
    "unknown figure": (lambda s: s.replace("[figures]\n", "[figures]\npeak_tops = 2.0\n"), "figures.peak_tops"),
    "feature spelling": (lambda s: s.replace('"+c"', '"c"'), "cpu_features"),
    "bad arch": (lambda s: s.replace('arch = "riscv64"', 'arch = "arm64"'), "arch"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_malformed_file_names_file_and_key(tmp_path, case):
    change, key = BAD_CASES[case]
    path = _write(tmp_path, change(_GOOD))
    for load in (lambda: get_target("demo", directory=tmp_path), lambda: list_targets(tmp_path)):
        with pytest.raises(RvdeployError) as info:
            load()
        assert str(path) in info.value.message
        assert f"key '{key}'" in info.value.message, info.value.message


def test_invalid_toml_names_file(tmp_path):
    path = _write(tmp_path, _GOOD.replace('summary = "demo board"', "summary = demo board"))
    with pytest.raises(RvdeployError) as info:
        get_target("demo", directory=tmp_path)
    assert str(path) in info.value.message and "invalid TOML" in info.value.message


def test_missing_directory_is_an_error(tmp_path):
    with pytest.raises(RvdeployError):
        list_targets(tmp_path / "absent")


def test_default_directory_is_the_shipped_one():
    assert {p.stem for p in data_dir("targets").glob("*.toml")} == {t.name for t in list_targets()}


# --------------------------------------------------------------------------------------------- compiler

_MATMUL = """
func.func @mm(%a: tensor<8x64xf32>, %b: tensor<64x64xf32>) -> tensor<8x64xf32> {
  %z = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<8x64xf32>
  %f = linalg.fill ins(%z : f32) outs(%e : tensor<8x64xf32>) -> tensor<8x64xf32>
  %r = linalg.matmul ins(%a, %b : tensor<8x64xf32>, tensor<64x64xf32>) outs(%f : tensor<8x64xf32>) -> tensor<8x64xf32>
  return %r : tensor<8x64xf32>
}
"""


def _iree_compile() -> str:
    from iree.compiler.tools import binaries

    return binaries.find_tool("iree-compile")


def _flags(t: Target) -> list[str]:
    return [
        "--iree-hal-target-device=local",
        "--iree-hal-local-target-device-backends=llvm-cpu",
        f"--iree-llvmcpu-target-triple={t.triple}",
        f"--iree-llvmcpu-target-abi={t.abi}",
        f"--iree-llvmcpu-target-cpu={t.cpu}",
        f"--iree-llvmcpu-target-cpu-features={','.join(t.cpu_features)}",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("name", RISCV)
def test_riscv_flags_compile_a_matmul(tmp_path, name):
    """The compiler accepts the triple/ABI/CPU/features without warnings, and really uses the target's VLEN:
    with data tiling + the mmt4d ukernel the f32 tile is N0 = VLEN/8 (none at all without V)."""
    t = get_target(name)
    src = tmp_path / "mm.mlir"
    src.write_text(_MATMUL)
    dump = tmp_path / "dump"
    start = time.monotonic()
    proc = subprocess.run(
        [
            _iree_compile(),
            str(src),
            *_flags(t),
            "--iree-opt-data-tiling",
            "--iree-llvmcpu-enable-ukernels=mmt4d",
            f"--iree-hal-dump-executable-files-to={dump}",
            "-o",
            str(tmp_path / "mm.vmfb"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "not a recognized" not in proc.stderr, proc.stderr[-3000:]
    assert "warning" not in proc.stderr.lower(), proc.stderr[-3000:]
    assert time.monotonic() - start < 20
    assert (tmp_path / "mm.vmfb").stat().st_size > 0
    codegen = "".join(p.read_text() for p in dump.glob("*.codegen.ll"))
    calls = re.findall(r"@iree_uk_mmt4d\([^)]*?i32 (\d+), i32 (\d+), i32 (\d+), i32 (\d+)", codegen)
    if t.has_vector:
        assert calls, "no mmt4d ukernel call for a vector target"
        assert {int(n0) for _, n0, _, _ in calls} == {t.vlen // 8}
    else:
        assert not calls


# --------------------------------------------------------------------------------------------- emulator


def _elf(words: list[int]) -> bytes:
    """A static riscv64 ELF whose only code is `words` (RV64 instructions)."""
    code = b"".join(struct.pack("<I", w) for w in words)
    base, ehsz, phsz = 0x10000, 64, 56
    total = ehsz + phsz + len(code)
    header = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    header += struct.pack("<HHIQQQIHHHHHH", 2, 243, 1, base + ehsz + phsz, ehsz, 0, 0x5, ehsz, phsz, 1, 64, 0, 0)
    program = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, total, total, 0x1000)
    return header + program + code


_EXIT = [0x05D00893, 0x00000073]  # li a7, 93 (exit); ecall -- a0 is the exit status
_ZERO_A0 = 0x00000513  # li a0, 0
_CSRR_A0_VLENB = (0xC22 << 20) | (2 << 12) | (10 << 7) | 0x73  # csrr a0, vlenb
_VSETVLI_E16 = (0xC8 << 20) | (7 << 12) | (5 << 7) | 0x57  # vsetvli t0, zero, e16, m1, ta, ma
_VFADD_VV = (1 << 25) | (2 << 20) | (3 << 15) | (1 << 12) | (1 << 7) | 0x57  # vfadd.vv v1, v2, v3
_FADD_H = (0b0000010 << 25) | (3 << 20) | (2 << 15) | (7 << 12) | (1 << 7) | 0x53  # fadd.h f1, f2, f3


def _qemu() -> str:
    qemu = shutil.which("qemu-riscv64")
    if not qemu:
        system_part_missing("qemu-riscv64 not installed (scripts/setup.sh)")
    out = subprocess.run([qemu, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"version (\d+)\.", out)
    if not m or int(m.group(1)) < 10:
        system_part_missing(f"qemu-riscv64 >= 10 needed for the targets' -cpu strings, found: {out.splitlines()[:1]}")
    return qemu


@pytest.mark.slow
@pytest.mark.parametrize("name", RISCV)
def test_qemu_accepts_cpu_string(tmp_path, name):
    """qemu-user accepts the -cpu string silently, reports the target's VLEN, and runs f16 code where the
    features promise Zfh/Zvfh."""
    qemu = _qemu()
    t = get_target(name)
    programs = {"exit": [_ZERO_A0, *_EXIT]}
    if t.has_vector:
        programs["vlenb"] = [_CSRR_A0_VLENB, *_EXIT]
    if "+zvfh" in t.cpu_features:
        programs["zvfh"] = [_VSETVLI_E16, _VFADD_VV, _ZERO_A0, *_EXIT]
    if "+zfh" in t.cpu_features:
        programs["zfh"] = [_FADD_H, _ZERO_A0, *_EXIT]
    for prog, words in programs.items():
        exe = tmp_path / prog
        exe.write_bytes(_elf(words))
        exe.chmod(0o755)
        proc = subprocess.run([qemu, "-cpu", t.qemu_cpu, str(exe)], capture_output=True, text=True, timeout=30)
        assert proc.stderr == "", f"{prog}: {proc.stderr}"
        expected = t.vlen // 8 if prog == "vlenb" else 0
        assert proc.returncode == expected, f"{prog}: exit {proc.returncode}, expected {expected}"
