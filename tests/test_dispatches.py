"""rvdeploy.dispatches on real iree-compile dumps of a small module (riscv64 VLEN 256 and host)."""

from __future__ import annotations

import json
import subprocess

import pytest
from iree.compiler.tools.binaries import find_tool

from rvdeploy.dispatches import (
    ContractionRow,
    DispatchReport,
    _classify,
    _kv_match,
    analyze_dump,
    entry_of,
    parse_shapes,
    summarize,
    weight_like,
)

RV256 = [
    "--iree-hal-target-device=local",
    "--iree-hal-local-target-device-backends=llvm-cpu",
    "--iree-llvmcpu-target-triple=riscv64-unknown-linux-gnu",
    "--iree-llvmcpu-target-abi=lp64d",
    "--iree-llvmcpu-target-cpu-features=+m,+a,+f,+d,+c,+v,+zvl256b",
]
HOST = [
    "--iree-hal-target-device=local",
    "--iree-hal-local-target-device-backends=llvm-cpu",
    "--iree-llvmcpu-target-cpu=host",
]
UK = ["--iree-llvmcpu-enable-ukernels=mmt4d"]

# decode: a matmul on a weight global, an mmt4d on a pre-packed weight (3x64x32x1 = N1xK1xN0xK0 for
# VLEN 256), attention-like batch_matmul over a dynamic "KV" (4 heads x ? x 16), a contraction written
# as linalg.generic, and a sum of squares (a reduction with mul+add that is NOT a contraction).
# prefill: activations packed to 7x1 tiles, mmt4d, unpack.
MODULE = """
util.global private @w = #stream.parameter.named<"model"::"w"> : tensor<64x96xf32>
util.global private @w2 = #stream.parameter.named<"model"::"w2"> : tensor<64x48xf32>
util.global private @wp = #stream.parameter.named<"model"::"wp"> : tensor<3x64x32x1xf32>

func.func @decode(%x: tensor<1x64xf32>, %q: tensor<4x1x16xf32>, %k: tensor<4x?x16xf32>)
    -> (tensor<1x96xf32>, tensor<1x3x1x32xf32>, tensor<4x1x?xf32>, tensor<1x48xf32>, tensor<1xf32>) {
  %zero = arith.constant 0.0 : f32
  %c1 = arith.constant 1 : index
  %w = util.global.load @w : tensor<64x96xf32>
  %w2 = util.global.load @w2 : tensor<64x48xf32>
  %wp = util.global.load @wp : tensor<3x64x32x1xf32>
  %e0 = tensor.empty() : tensor<1x96xf32>
  %f0 = linalg.fill ins(%zero : f32) outs(%e0 : tensor<1x96xf32>) -> tensor<1x96xf32>
  %mm = linalg.matmul ins(%x, %w : tensor<1x64xf32>, tensor<64x96xf32>) outs(%f0 : tensor<1x96xf32>) -> tensor<1x96xf32>
  %x4 = tensor.expand_shape %x [[0], [1, 2, 3]] output_shape [1, 64, 1, 1] : tensor<1x64xf32> into tensor<1x64x1x1xf32>
  %e1 = tensor.empty() : tensor<1x3x1x32xf32>
  %f1 = linalg.fill ins(%zero : f32) outs(%e1 : tensor<1x3x1x32xf32>) -> tensor<1x3x1x32xf32>
  %m4 = linalg.mmt4d ins(%x4, %wp : tensor<1x64x1x1xf32>, tensor<3x64x32x1xf32>) outs(%f1 : tensor<1x3x1x32xf32>) -> tensor<1x3x1x32xf32>
  %n = tensor.dim %k, %c1 : tensor<4x?x16xf32>
  %e2 = tensor.empty(%n) : tensor<4x1x?xf32>
  %f2 = linalg.fill ins(%zero : f32) outs(%e2 : tensor<4x1x?xf32>) -> tensor<4x1x?xf32>
  %bm = linalg.batch_matmul indexing_maps = [affine_map<(d0, d1, d2, d3) -> (d0, d1, d3)>,
                                             affine_map<(d0, d1, d2, d3) -> (d0, d2, d3)>,
                                             affine_map<(d0, d1, d2, d3) -> (d0, d1, d2)>]
      ins(%q, %k : tensor<4x1x16xf32>, tensor<4x?x16xf32>) outs(%f2 : tensor<4x1x?xf32>) -> tensor<4x1x?xf32>
  %e3 = tensor.empty() : tensor<1x48xf32>
  %f3 = linalg.fill ins(%zero : f32) outs(%e3 : tensor<1x48xf32>) -> tensor<1x48xf32>
  %g = linalg.generic {indexing_maps = [affine_map<(m, n, k) -> (m, k)>, affine_map<(m, n, k) -> (k, n)>,
                                        affine_map<(m, n, k) -> (m, n)>],
                       iterator_types = ["parallel", "parallel", "reduction"]}
      ins(%x, %w2 : tensor<1x64xf32>, tensor<64x48xf32>) outs(%f3 : tensor<1x48xf32>) {
  ^bb0(%a: f32, %b: f32, %o: f32):
    %p = arith.mulf %a, %b : f32
    %s = arith.addf %o, %p : f32
    linalg.yield %s : f32
  } -> tensor<1x48xf32>
  %e4 = tensor.empty() : tensor<1xf32>
  %f4 = linalg.fill ins(%zero : f32) outs(%e4 : tensor<1xf32>) -> tensor<1xf32>
  %ss = linalg.generic {indexing_maps = [affine_map<(m, k) -> (m, k)>, affine_map<(m, k) -> (m)>],
                        iterator_types = ["parallel", "reduction"]}
      ins(%x : tensor<1x64xf32>) outs(%f4 : tensor<1xf32>) {
  ^bb0(%a: f32, %o: f32):
    %p = arith.mulf %a, %a : f32
    %s = arith.addf %o, %p : f32
    linalg.yield %s : f32
  } -> tensor<1xf32>
  return %mm, %m4, %bm, %g, %ss : tensor<1x96xf32>, tensor<1x3x1x32xf32>, tensor<4x1x?xf32>, tensor<1x48xf32>, tensor<1xf32>
}

func.func @prefill(%x: tensor<?x64xf32>) -> tensor<?x96xf32> {
  %zero = arith.constant 0.0 : f32
  %c0 = arith.constant 0 : index
  %wp = util.global.load @wp : tensor<3x64x32x1xf32>
  %s = tensor.dim %x, %c0 : tensor<?x64xf32>
  %m1 = affine.apply affine_map<()[s0] -> (s0 ceildiv 7)>()[%s]
  %pe = tensor.empty(%m1) : tensor<?x64x7x1xf32>
  %p = linalg.pack %x padding_value(%zero : f32) inner_dims_pos = [0, 1] inner_tiles = [7, 1] into %pe
      : tensor<?x64xf32> -> tensor<?x64x7x1xf32>
  %oe = tensor.empty(%m1) : tensor<?x3x7x32xf32>
  %of = linalg.fill ins(%zero : f32) outs(%oe : tensor<?x3x7x32xf32>) -> tensor<?x3x7x32xf32>
  %m = linalg.mmt4d ins(%p, %wp : tensor<?x64x7x1xf32>, tensor<3x64x32x1xf32>) outs(%of : tensor<?x3x7x32xf32>) -> tensor<?x3x7x32xf32>
  %ue = tensor.empty(%s) : tensor<?x96xf32>
  %u = linalg.unpack %m inner_dims_pos = [0, 1] inner_tiles = [7, 32] into %ue : tensor<?x3x7x32xf32> -> tensor<?x96xf32>
  return %u : tensor<?x96xf32>
}
"""

# Upstream data tiling on a matmul with a parameter weight (packed by an initializer at load) and an
# attention-like batch_matmul whose "KV" operand gets packed in the step.
MODULE_GT = """
util.global private @w = #stream.parameter.named<"model"::"w"> : tensor<64x96xf32>

func.func @decode(%x: tensor<1x64xf32>, %q: tensor<4x1x16xf32>, %k: tensor<4x?x16xf32>) -> (tensor<1x96xf32>, tensor<4x1x?xf32>) {
  %zero = arith.constant 0.0 : f32
  %c1 = arith.constant 1 : index
  %w = util.global.load @w : tensor<64x96xf32>
  %e0 = tensor.empty() : tensor<1x96xf32>
  %f0 = linalg.fill ins(%zero : f32) outs(%e0 : tensor<1x96xf32>) -> tensor<1x96xf32>
  %mm = linalg.matmul ins(%x, %w : tensor<1x64xf32>, tensor<64x96xf32>) outs(%f0 : tensor<1x96xf32>) -> tensor<1x96xf32>
  %n = tensor.dim %k, %c1 : tensor<4x?x16xf32>
  %e2 = tensor.empty(%n) : tensor<4x1x?xf32>
  %f2 = linalg.fill ins(%zero : f32) outs(%e2 : tensor<4x1x?xf32>) -> tensor<4x1x?xf32>
  %bm = linalg.batch_matmul indexing_maps = [affine_map<(d0, d1, d2, d3) -> (d0, d1, d3)>,
                                             affine_map<(d0, d1, d2, d3) -> (d0, d2, d3)>,
                                             affine_map<(d0, d1, d2, d3) -> (d0, d1, d2)>]
      ins(%q, %k : tensor<4x1x16xf32>, tensor<4x?x16xf32>) outs(%f2 : tensor<4x1x?xf32>) -> tensor<4x1x?xf32>
  return %mm, %bm : tensor<1x96xf32>, tensor<4x1x?xf32>
}
"""

KV = {(1, 2, -1, 16)}  # 2 KV heads broadcast to the module's 4 attention heads


def _compile(tmp, name: str, text: str, flags: list[str]):
    src = tmp / f"{name}.mlir"
    src.write_text(text)
    dump = tmp / f"dump_{name}"
    proc = subprocess.run(
        [
            find_tool("iree-compile"),
            str(src),
            *flags,
            f"--iree-hal-dump-executable-files-to={dump}",
            "-o",
            str(tmp / f"{name}.vmfb"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return dump


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dispatches")
    cache = {}
    specs = {
        "rv_uk": (MODULE, RV256 + UK),
        "rv_cg": (MODULE, RV256),
        "host_uk": (MODULE, HOST + UK),
        "rv_gt": (MODULE_GT, RV256 + UK + ["--iree-global-opt-data-tiling"]),
    }

    def get(name):
        if name not in cache:
            text, flags = specs[name]
            cache[name] = _compile(tmp, name, text, flags)
        return cache[name]

    return get


def _by_op(report, entry, op):
    return [r for r in report.contractions if r.entry == entry and r.op == op]


@pytest.mark.slow
def test_riscv_ukernel_rows(dumps):
    rep = analyze_dump(dumps("rv_uk"), kv_shapes=KV)

    [mm] = _by_op(rep, "decode", "linalg.matmul")
    assert (mm.shapes, mm.types, mm.mmt4d, mm.ukernel, mm.tile, mm.macs) == (
        "1x64 * 64x96 -> 1x96",
        "f32*f32->f32",
        False,
        False,
        None,
        64 * 96,
    )
    assert mm.dispatch.startswith("decode_dispatch_") and "matmul" in mm.dispatch

    [m4] = _by_op(rep, "decode", "linalg.mmt4d")
    assert (m4.shapes, m4.mmt4d, m4.ukernel, m4.tile, m4.macs) == (
        "1x64x1x1 * 3x64x32x1 -> 1x3x1x32",
        True,
        True,
        "1x32x1",
        3 * 64 * 32,
    )
    assert (m4.operands, m4.result) == (((1, 64, 1, 1), (3, 64, 32, 1)), (1, 3, 1, 32))  # the data behind the text

    [bm] = _by_op(rep, "decode", "linalg.batch_matmul")
    assert (bm.shapes, bm.mmt4d, bm.ukernel, bm.tile, bm.macs) == ("4x1x16 * 4x?x16 -> 4x1x?", False, False, None, None)

    [g] = _by_op(rep, "decode", "linalg.generic")  # the contraction; the sum of squares is not one
    assert g.macs == 64 * 48 and not g.mmt4d and "64x48" in g.shapes

    [pm] = _by_op(rep, "prefill", "linalg.mmt4d")
    assert (pm.shapes, pm.ukernel, pm.tile, pm.macs) == ("?x64x7x1 * 3x64x32x1 -> ?x3x7x32", True, "7x32x1", None)

    packs = {(p.op, p.source_shape, p.dest_shape, p.bytes, p.operand, p.entry) for p in rep.packs}
    assert packs == {
        ("linalg.pack", "?x64", "?x64x7x1", None, "activation", "prefill"),
        ("linalg.unpack", "?x3x7x32", "?x96", None, "activation", "prefill"),
    }

    assert any(k.startswith("vfmacc") for k in rep.rvv) and rep.rvv.get("vsetvli", 0) > 0
    tiles = rep.ukernel_tiles
    assert tiles and all(name.startswith("iree_uk_mmt4d_tile_f32f32f32_") and "riscv_64" in name for name in tiles)
    assert tiles.get("iree_uk_mmt4d_tile_f32f32f32_1xXXx1_riscv_64_v") == 1  # decode's 1xN0 tile
    assert tiles.get("iree_uk_mmt4d_tile_f32f32f32_7xXXx1_riscv_64_v") == 1  # prefill's 7xN0 tile

    s = summarize(rep)
    dec = s["entries"]["decode"]
    assert dec["weight_like"]["mmt4d_ukernel"] == 1
    assert dec["weight_like"]["not_by_op"] == {"linalg.matmul": 1, "linalg.generic": 1}
    assert dec["tiles"] == {"1x32x1 (ukernel)": 1}
    assert s["entries"]["prefill"]["tiles"] == {"7x32x1 (ukernel)": 1}
    assert s["entries"]["prefill"]["packs"]["unknown_bytes"] == {"activation": 2}


@pytest.mark.slow
def test_riscv_codegen_rows(dumps):
    rep = analyze_dump(dumps("rv_cg"))
    m4s = [r for r in rep.contractions if r.mmt4d]
    assert {(r.entry, r.tile) for r in m4s} == {("decode", "1x32x1"), ("prefill", "7x32x1")}  # from operand shapes
    assert not any(r.ukernel for r in rep.contractions)
    assert rep.ukernel_tiles == {}
    assert any(k.startswith("vfmacc") for k in rep.rvv)
    s = summarize(rep)
    assert s["entries"]["decode"]["weight_like"]["mmt4d_ukernel"] == 0
    assert s["entries"]["decode"]["weight_like"]["not_by_op"]["linalg.mmt4d (codegen)"] == 1


@pytest.mark.slow
def test_host_has_no_rvv(dumps):
    rep = analyze_dump(dumps("host_uk"))
    assert rep.rvv == {}
    [m4] = _by_op(rep, "decode", "linalg.mmt4d")
    assert m4.ukernel and m4.tile == "1x32x1"
    assert not any("riscv" in name for name in rep.ukernel_tiles)


@pytest.mark.slow
def test_upstream_data_tiling_packs(dumps):
    dump = dumps("rv_gt")
    rep = analyze_dump(dump, kv_shapes=KV)
    init = [p for p in rep.packs if p.entry == "initializer"]
    assert [(p.op, p.source_shape, p.dest_shape, p.bytes, p.operand) for p in init] == [
        ("linalg.pack", "64x96", "3x64x32x1", 64 * 96 * 4, "weight")
    ]
    assert init[0].dispatch.startswith("_initializer_")
    kv = [p for p in rep.packs if p.entry == "decode" and p.operand == "kv-cache"]
    assert [(p.op, p.source_shape, p.bytes) for p in kv] == [("linalg.pack", "4x?x16", None)]
    assert {r.op for r in rep.contractions} == {"linalg.mmt4d", "linalg.batch_mmt4d"}
    assert all(r.ukernel and r.tile == "1x32x1" for r in rep.contractions)

    s = summarize(rep)
    assert s["decode_step_packs_dynamic"]["kv-cache"] == 1
    assert s["decode_step_pack_bytes_per_dynamic_unit"]["kv-cache"] == 4 * 16 * 4
    assert s["entries"]["initializer"]["packs"]["bytes"] == {"weight": 64 * 96 * 4}

    # without KV shapes the same pack is an activation; weight_shapes never makes a KV pack a weight
    plain = analyze_dump(dump)
    assert {p.operand for p in plain.packs if p.entry == "decode"} == {"activation"}

    # the report survives JSON
    again = DispatchReport.from_dict(json.loads(json.dumps(rep.to_dict())))
    assert again == rep
    # rows are written with the keys older readers know (the dims as the "shapes" text)
    assert all(list(r) == [k for k, _ in ContractionRow.json_fields()] for r in rep.to_dict()["contractions"])
    assert "shapes" in ContractionRow.json_fields()[3]


def test_names_and_classification():
    assert entry_of("decode$async_dispatch_90_batch_mmt4d_1x1x8x64x1x32x1_f32") == "decode"
    assert entry_of("generate$async_dispatch_5_batch_matmul_1x8xDx1_f32") == "generate"
    assert entry_of("prefill_dispatch_0_pack_f32") == "prefill"
    assert entry_of("_initializer_14_dispatch_0_pack_f32") == "initializer"

    kv = (1, 2, -1, 16)
    assert _kv_match((2, -1, 16), kv)
    assert _kv_match((4, -1, 16), kv)  # GQA: heads broadcast 2 -> 4
    assert _kv_match((4, 16, -1), kv)  # transposed K
    assert not _kv_match((4, 1, 16), kv)  # a decode query
    assert not _kv_match((-1, 64), kv)
    assert not _kv_match((4, -1, 32), kv)  # wrong head dim

    ws = {(64, 96)}
    assert _classify("decode", (64, 96), None, ws) == "weight"
    assert _classify("decode", (1, 96, 64), None, ws) == "weight"  # unit batch, transposed
    assert _classify("initializer", (7, 7), None, None) == "weight"
    assert _classify("decode", (4, -1, 16), {kv}, ws) == "kv-cache"
    assert _classify("decode", (-1, 64), {kv}, ws) == "activation"

    def row(op, shapes, mmt4d=False):
        return ContractionRow("decode", "d", op, *parse_shapes(shapes), "f32*f32->f32", mmt4d, False, None, None)

    assert weight_like(row("linalg.batch_matmul", "1x1x64 * 1x64x256 -> 1x1x256"))
    assert not weight_like(row("linalg.batch_matmul", "1x8x1 * 1x1x1 -> 1x8x1"))  # rope's outer product
    assert not weight_like(row("linalg.batch_matmul", "4x1x16 * 4x16x8 -> 4x1x8"))  # attention, static
    assert weight_like(row("linalg.mmt4d", "37x64x7x1 * ?x64x32x1 -> 37x?x7x32", True))  # weight as LHS
    assert not weight_like(row("linalg.batch_mmt4d", "4x1x16x1x1 * 4x?x16x32x1 -> 4x1x?x1x32", True))
