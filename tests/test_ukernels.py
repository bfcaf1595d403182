"""The project's mmt4d microkernels (ukernels/): the C harness checks every kernel against a scalar
reference under qemu-user at VLEN 128/256/512, and rvdeploy compiles them to cached, IREE-linkable bitcode."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import system_part_missing

from rvdeploy import ukernels
from rvdeploy.targets import get_target

UKERNELS = Path(__file__).resolve().parents[1] / "ukernels"
CLANG = shutil.which("clang-19")
QEMU = shutil.which("qemu-riscv64")


def _need_toolchain():
    missing = [
        n for n, p in (("clang-19", CLANG), ("qemu-riscv64", QEMU), ("ld.lld-19", shutil.which("ld.lld-19"))) if not p
    ]
    if missing or not Path("/usr/riscv64-linux-gnu/lib").is_dir():
        system_part_missing(f"needs {', '.join(missing) or 'libc6-dev-riscv64-cross'} (installed by scripts/setup.sh)")


@pytest.mark.slow
@pytest.mark.parametrize("vlen", [128, 256, 512])
def test_harness_under_qemu(tmp_path, vlen):
    """Every kernel (f32 M0 = 1..8 incl. rvdeploy's 1 x VLEN/4 and 7 x VLEN/4 tiles at K = 2048/8192, s16 RVV
    kernels, s8 x s8 -> s32 M0 = 1..7 incl. rvdeploy's int8 tiles, the 4-bit kernels, the portable fallback for all ten element-type
    combinations and K0 > 1), K = 0/1/large,
    accumulate on and off: exact for integers and integer-valued floats, the summation bound otherwise."""
    _need_toolchain()
    exe = tmp_path / f"harness{vlen}"
    subprocess.run(
        [
            CLANG,
            "--target=riscv64-linux-gnu",
            f"-march=rv64gcv_zvl{vlen}b",
            "-mabi=lp64d",
            "-O2",
            "-fuse-ld=lld",
            "-static",
            "-DRVD_HARNESS",
            "-Wall",
            "-Werror",
            str(UKERNELS / "harness.c"),
            str(UKERNELS / "rvd_mmt4d.c"),
            str(UKERNELS / "rvd_q4.c"),
            "-lm",
            "-o",
            str(exe),
        ],
        check=True,
    )
    proc = subprocess.run(
        [QEMU, "-cpu", f"rv64,v=true,vlen={vlen},elen=64,vext_spec=v1.0", str(exe)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr
    fails = [ln for ln in proc.stdout.splitlines() if ln.startswith("FAIL") or ln.startswith("     ")]
    assert proc.returncode == 0, "\n".join(fails[:20]) or proc.stderr
    assert tail.endswith(" 0 failures"), tail
    out = proc.stdout
    assert f"harness: VLEN {vlen}" in out
    # the RVV kernels rvdeploy's tiles use actually ran (not only the fallback)
    assert f"tile=1x{vlen // 4}x1" in out and "rvdeploy_uk_mmt4d_tile_f32f32f32_1xN0x1_rvv_m8" in out
    assert f"tile=7x{vlen // 4}x1" in out and "rvdeploy_uk_mmt4d_tile_f32f32f32_7xN0x1_rvv_m4" in out
    assert "K=8192" in out and "rvdeploy_uk_mmt4d_tile_s16s8s32_7xN0x1_rvv" in out
    # int8 builds' tiles: s8 x s8 -> s32 on the RVV kernels at Llama depth, including all -128 operands
    s8 = [ln for ln in out.splitlines() if " s8s8s32 " in ln]
    assert any(
        f"K=8192  tile=1x{vlen // 4}x1" in ln and ln.endswith("rvdeploy_uk_mmt4d_tile_s8s8s32_1xN0x1_rvv_m8")
        for ln in s8
    )
    assert any(
        f"tile=7x{vlen // 4}x1" in ln and ln.endswith("rvdeploy_uk_mmt4d_tile_s8s8s32_7xN0x1_rvv_m4") for ln in s8
    )
    assert not any("tile_generic" in ln for ln in s8 if "x1 acc" in ln and " tile=8x" not in ln)
    # q4 builds' kernels (rvd_q4.c): activation quantization exact, matmul within the bound, at Llama depth
    q4 = [ln for ln in out.splitlines() if " q4 " in ln]
    assert len(q4) == 6 and all(ln.startswith("ok") for ln in q4), q4
    assert any(f"K=8192  N0={vlen // 4} " in ln for ln in q4) and any("extreme" in ln for ln in q4)


def test_bitcode_is_cached_and_linkable(tmp_path, monkeypatch):
    if not CLANG or not shutil.which("llvm-as-19"):
        system_part_missing("needs clang-19 and llvm-19 (installed by scripts/setup.sh)")
    monkeypatch.setenv("RVDEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    tgt = get_target("rv64gcv-vlen256")
    choice = ukernels.choose(tgt, "project")
    assert choice.library == "project" and choice.bitcode.is_file()
    assert choice.compile_flags() == [f"--iree-link-bitcode=riscv_64={choice.bitcode}"]
    assert "zvl256b" in " ".join(choice.info["clang_flags"])
    mtime = os.stat(choice.bitcode).st_mtime_ns
    again = ukernels.choose(tgt, "project")
    assert again.bitcode == choice.bitcode and os.stat(again.bitcode).st_mtime_ns == mtime  # from the cache
    other = ukernels.choose(get_target("rv64gcv-vlen512"), "project")
    assert other.bitcode != choice.bitcode  # keyed by the flags (VLEN)
    dis = shutil.which("llvm-dis-19")
    if dis:
        text = subprocess.run([dis, str(choice.bitcode), "-o", "-"], capture_output=True, text=True, check=True).stdout
        assert '"target-features"' not in text and '"target-cpu"' not in text
        defined = [ln for ln in text.splitlines() if ln.startswith("define") and "internal" not in ln]
        assert len(defined) == 1 and "@iree_uk_mmt4d(" in defined[0], defined  # only the entry is external
    # host and non-vector targets have nothing to link
    assert ukernels.choose(get_target("host"), "project").library == "upstream"
    assert ukernels.choose(tgt, "upstream").bitcode is None


def test_unknown_library_is_an_error():
    from rvdeploy.errors import RvdeployError

    with pytest.raises(RvdeployError, match="unknown ukernel library"):
        ukernels.choose(get_target("rv64gcv-vlen256"), "mine")


def test_q4_object_is_cached_hidden_and_per_isa(tmp_path, monkeypatch):
    """The 4-bit kernels' object (rvdeploy.q4kernel): cached by content and flags, one per VLEN and f16 support,
    its two entry points defined and hidden (a module's embedded ELF has no PLT to reach default-visibility
    symbols through: the dispatch would jump to nothing)."""
    from rvdeploy import q4kernel

    readelf = shutil.which("llvm-readelf-19") or shutil.which("llvm-readelf")
    if not CLANG or not readelf:
        system_part_missing("needs clang-19 and llvm-19 (installed by scripts/setup.sh)")
    monkeypatch.setenv("RVDEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    k1 = q4kernel.build_object(get_target("spacemit-k1"))
    mtime = os.stat(k1).st_mtime_ns
    assert q4kernel.build_object(get_target("spacemit-k1")) == k1 and os.stat(k1).st_mtime_ns == mtime
    plain = q4kernel.build_object(get_target("rv64gcv-vlen256"))  # same VLEN, no Zvfh: integer f16 conversion
    assert plain != k1 and "_zvfhmin" in " ".join(q4kernel.clang_flags(get_target("spacemit-k1")))
    assert "_zvfhmin" not in " ".join(q4kernel.clang_flags(get_target("rv64gcv-vlen256")))
    syms = subprocess.run([readelf, "-sW", str(k1)], capture_output=True, text=True, check=True).stdout
    for name in ("rvd_q4_matmul", "rvd_q8_quantize"):
        line = next(ln for ln in syms.splitlines() if ln.split()[-1:] == [name])
        assert " FUNC " in line and " HIDDEN " in line and " UND " not in line, line
    assert not q4kernel.applies(get_target("host")) and not q4kernel.applies(get_target("rv64gc"))
    assert q4kernel.panel_width(get_target("rv64gcv-vlen512")) == 128
