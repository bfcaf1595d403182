"""riscv64 bundles, checked without a board: every weight contraction runs on an mmt4d microkernel with
the tile the target's VLEN asks for (the project's kernels by default, IREE's with --ukernels upstream),
decode packs nothing, and the code is RVV."""

from __future__ import annotations

import pytest
from conftest import DEMO, TINY

from rvdeploy import api

pytestmark = pytest.mark.slow


def _weight_contractions(info, entry):
    """Contractions whose right operand is a weight: all mmt4d rows in our pipeline; attention stays
    batch_matmul on activations."""
    return [r for r in info["dispatches"]["contractions"] if r["entry"] == entry and r["op"] != "linalg.batch_matmul"]


@pytest.mark.parametrize("vlen", [128, 256, 512])
def test_every_weight_contraction_on_mmt4d_ukernel(built, vlen):
    bundle = built(str(DEMO), f"rv64gcv-vlen{vlen}", "mmt4d")
    info = api.inspect(bundle.path)
    n0 = vlen // 4  # the project's tiles (default library): an LMUL-8 group of f32
    assert bundle.manifest.pipeline.ukernels.library == "project"
    assert any(f.startswith("--iree-link-bitcode=riscv_64=") for f in bundle.manifest.pipeline.compiler_flags)
    graph = bundle.manifest.model.graph
    # prefill: 3 rows of LMUL-8 accumulators (tiles.toml), decode one row: both LMUL 8
    for entry, m0 in (("prefill", 3), ("decode", 1)):
        rows = _weight_contractions(info, entry)
        assert rows, f"no contractions found in {entry}"
        for r in rows:
            assert r["mmt4d"] and r["ukernel"], r
            assert r["tile"] == f"{m0}x{n0}x1", r
            assert r["library"] == "project", r
            assert r["kernel"] == f"rvdeploy_uk_mmt4d_tile_f32f32f32_{m0}xN0x1_rvv_m8", r
    # every weight MatMul of the graph was lowered: 7 per layer (q, k, v, o, gate, up, down) + lm_head
    assert bundle.manifest.pipeline.mmt4d.lowered_contractions == 2 * (7 * graph.num_layers + 1)
    assert bundle.manifest.pipeline.mmt4d.not_lowered == ()


def test_decode_packs_no_weight_and_nothing_at_load(built):
    info = api.inspect(built(str(DEMO), "rv64gcv-vlen256", "mmt4d").path)
    packs = info["dispatches"]["packs"]
    assert not [p for p in packs if p["entry"] == "decode"], "decode step packs or unpacks something"
    assert not [p for p in packs if p["operand"] == "weight"], "a weight is packed at run time"
    assert not [r for r in info["dispatches"]["contractions"] if r["entry"] == "initializer"]


def test_riscv_code_is_rvv(built):
    info = api.inspect(built(str(DEMO), "rv64gcv-vlen256", "mmt4d").path)
    rvv = info["dispatches"]["rvv"]
    fma = sum(v for k, v in rvv.items() if k.startswith(("vfmacc", "vfmadd")))
    assert fma > 0 and rvv.get("vle32.v", 0) > 0, rvv
    tiles = info["dispatches"]["ukernel_tiles"]
    assert set(tiles) == {
        "rvdeploy_uk_mmt4d_tile_f32f32f32_1xN0x1_rvv_m8",
        "rvdeploy_uk_mmt4d_tile_f32f32f32_3xN0x1_rvv_m8",
    }, tiles
    assert not any(t.startswith("iree_uk_") for t in tiles), tiles  # the builtin kernels are replaced


def test_upstream_ukernels(tmp_path):
    """--ukernels upstream: IREE's own tiles (N0 = VLEN/8), nothing linked, inspect says upstream."""
    bundle = api.build(str(DEMO), out=tmp_path / "b", target="rv64gcv-vlen256", ukernels="upstream").bundle
    pipe = bundle.manifest.pipeline
    assert pipe.ukernels.library == "upstream"
    assert not any("--iree-link-bitcode" in f for f in pipe.compiler_flags)
    info = api.inspect(bundle.path)
    rows = [r for r in info["dispatches"]["contractions"] if r["mmt4d"]]
    assert rows and all(r["ukernel"] and r["library"] == "upstream" for r in rows), rows
    assert {r["tile"] for r in rows} == {"1x32x1", "7x32x1"}
    tiles = info["dispatches"]["ukernel_tiles"]
    # IREE 3.13 names the tile functions with XX for N0 (e.g. iree_uk_mmt4d_tile_f32f32f32_7xXXx1_riscv_64_v)
    assert any("_7xXXx1_riscv_64" in t for t in tiles) and any("_1xXXx1_riscv_64" in t for t in tiles), tiles


def test_baseline_has_no_mmt4d(built):
    info = api.inspect(built(str(TINY), "rv64gcv-vlen256", "baseline").path)
    rows = info["dispatches"]["contractions"]
    assert rows and not [r for r in rows if r["mmt4d"] or r["ukernel"]]
