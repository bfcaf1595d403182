"""The linalg functions the mmt4d lowering calls, as MLIR text (their shapes depend on the model and the tile).

Each is a private func taking the activation and the pre-packed weight: the fp32 and int8 contractions
(decode: reshape + mmt4d with M0 = 1; prefill: pack + mmt4d + unpack), the 4-bit one (dequantized in
registers inside the contraction) and the embedding lookup from lm_head's packed table. rvdeploy.mmt4d
parses them and rewires the graph to call them.
"""

from __future__ import annotations

from .layout import Tile, packed_shape, tensor_type


def matmul_fn(name: str, k: int, n: int, elt: str, tile: Tile, decode: bool, opset: int) -> str:
    n1, k1, n0, k0 = packed_shape(k, n, tile.n0, tile.k0)
    w = tensor_type((n1, k1, n0, k0), elt)
    attrs = f"attributes {{torch.onnx_meta.opset_version = {opset} : si64}}"
    if decode:
        acc = f"tensor<1x{n1}x1x{n0}x{elt}>"
        lines = [
            f"func.func private @{name}(%x: tensor<1x1x{k}x{elt}>, %w: {w}) -> tensor<1x1x{n}x{elt}> {attrs} {{",
            f"  %zero = arith.constant 0.0 : {elt}",
            f"  %xf = tensor.collapse_shape %x [[0, 1, 2]] : tensor<1x1x{k}x{elt}> into tensor<{k}x{elt}>",
            f"  %xp = tensor.expand_shape %xf [[0, 1, 2, 3]] output_shape [1, {k1}, 1, {k0}] : "
            f"tensor<{k}x{elt}> into tensor<1x{k1}x1x{k0}x{elt}>",
            f"  %oe = tensor.empty() : {acc}",
            f"  %of = linalg.fill ins(%zero : {elt}) outs(%oe : {acc}) -> {acc}",
            f"  %o = linalg.mmt4d ins(%xp, %w : tensor<1x{k1}x1x{k0}x{elt}>, {w}) outs(%of : {acc}) -> {acc}",
            f"  %flat = tensor.collapse_shape %o [[0, 1, 2, 3]] : {acc} into tensor<{n1 * n0}x{elt}>",
        ]
        if n1 * n0 != n:  # N padded up to a whole tile: drop the padding columns
            lines.append(
                f"  %y1 = tensor.extract_slice %flat[0] [{n}] [1] : tensor<{n1 * n0}x{elt}> to tensor<{n}x{elt}>"
            )
        else:
            lines.append(f"  %y1 = tensor.cast %flat : tensor<{n}x{elt}> to tensor<{n}x{elt}>")
        lines += [
            f"  %y = tensor.expand_shape %y1 [[0, 1, 2]] output_shape [1, 1, {n}] : tensor<{n}x{elt}> into "
            f"tensor<1x1x{n}x{elt}>",
            f"  return %y : tensor<1x1x{n}x{elt}>",
            "}",
        ]
        return "\n".join(lines)
    m0 = tile.m0
    lhs = f"tensor<?x{k1}x{m0}x{k0}x{elt}>"
    acc = f"tensor<?x{n1}x{m0}x{n0}x{elt}>"
    return "\n".join(
        [
            f"func.func private @{name}(%x: tensor<?x?x{k}x{elt}>, %w: {w}) -> tensor<?x?x{n}x{elt}> {attrs} {{",
            "  %c0 = arith.constant 0 : index",
            "  %c1 = arith.constant 1 : index",
            f"  %cm0 = arith.constant {m0} : index",
            f"  %zero = arith.constant 0.0 : {elt}",
            f"  %b = tensor.dim %x, %c0 : tensor<?x?x{k}x{elt}>",
            f"  %s = tensor.dim %x, %c1 : tensor<?x?x{k}x{elt}>",
            f"  %x2 = tensor.collapse_shape %x [[0, 1], [2]] : tensor<?x?x{k}x{elt}> into tensor<?x{k}x{elt}>",
            f"  %m = tensor.dim %x2, %c0 : tensor<?x{k}x{elt}>",
            "  %m1 = arith.ceildivui %m, %cm0 : index",
            *_pack_rows(elt, k, k1, m0, k0, lhs),
            f"  %oe = tensor.empty(%m1) : {acc}",
            f"  %of = linalg.fill ins(%zero : {elt}) outs(%oe : {acc}) -> {acc}",
            f"  %o = linalg.mmt4d ins(%xp, %w : {lhs}, {w}) outs(%of : {acc}) -> {acc}",
            f"  %ue = tensor.empty(%m) : tensor<?x{n}x{elt}>",
            f"  %y2 = linalg.unpack %o inner_dims_pos = [0, 1] inner_tiles = [{m0}, {n0}] into %ue : {acc} -> "
            f"tensor<?x{n}x{elt}>",
            f"  %y = tensor.expand_shape %y2 [[0, 1], [2]] output_shape [%b, %s, {n}] : tensor<?x{n}x{elt}> into "
            f"tensor<?x?x{n}x{elt}>",
            f"  return %y : tensor<?x?x{n}x{elt}>",
            "}",
        ]
    )


def _pack_rows(elt: str, k: int, k1: int, m0: int, k0: int, lhs: str) -> list[str]:
    """%x2 [m, k] -> %xp [m1, k1, m0, k0]. With K0 = 1 as pad + reshape + transpose: IREE 3.13 vectorizes
    linalg.pack with M0 x 1 vectors (one tile per step: 19 instructions per element at M0 = 3 on the mid
    model's prefill), and a transpose along K (the activation packing went 0.18M -> 0.07M per prompt token)."""
    if k0 != 1:
        return [
            f"  %pe = tensor.empty(%m1) : {lhs}",
            f"  %xp = linalg.pack %x2 padding_value(%zero : {elt}) inner_dims_pos = [0, 1] inner_tiles = [{m0}, {k0}] "
            f"into %pe : tensor<?x{k}x{elt}> -> {lhs}",
        ]
    return [
        "  %mp = arith.muli %m1, %cm0 : index",
        "  %hi = arith.subi %mp, %m : index",
        f"  %xpad = tensor.pad %x2 low[0, 0] high[%hi, 0] {{\n  ^bb0(%i: index, %j: index):\n"
        f"    tensor.yield %zero : {elt}\n  }} : tensor<?x{k}x{elt}> to tensor<?x{k}x{elt}>",
        f"  %x3 = tensor.expand_shape %xpad [[0, 1], [2]] output_shape [%m1, {m0}, {k}] : tensor<?x{k}x{elt}> into "
        f"tensor<?x{m0}x{k}x{elt}>",
        f"  %te = tensor.empty(%m1) : tensor<?x{k}x{m0}x{elt}>",
        f"  %xt = linalg.transpose ins(%x3 : tensor<?x{m0}x{k}x{elt}>) outs(%te : tensor<?x{k}x{m0}x{elt}>) "
        "permutation = [0, 2, 1]",
        f"  %xp = tensor.expand_shape %xt [[0], [1], [2, 3]] output_shape [%m1, {k}, {m0}, 1] : "
        f"tensor<?x{k}x{m0}x{elt}> into {lhs}",
    ]


def int8_matmul_fn(name: str, k: int, n: int, tile: Tile, decode: bool, opset: int) -> str:
    """MatMulInteger(x uint8, W int8, x_zero_point uint8) -> i32 on an s8 x s8 -> s32 mmt4d:
    sum_k (x - zp) W = sum_k (x - 128) W - (zp - 128) colsum(W), and x - 128 is x's bits with the top one
    flipped (xor 0x80), so the kernel reads int8 activations and the correction is one multiply-add per
    output with the column sums stored beside the packed weight."""
    n1, k1, n0, k0 = packed_shape(k, n, tile.n0, tile.k0)
    w = tensor_type((n1, k1, n0, k0), "i8")
    attrs = f"attributes {{torch.onnx_meta.opset_version = {opset} : si64}}"
    xor = (
        "  ^bb0(%xa: i8, %xo: i8):\n    %flip = arith.constant -128 : i8\n    %xr = arith.xori %xa, %flip : i8\n"
        "    linalg.yield %xr : i8\n"
    )
    fix = (
        "  ^bb0(%ya: i32, %ycs: i32, %yo: i32):\n    %yt = arith.muli %za, %ycs : i32\n    %yr = arith.subi %ya, %yt : i32\n"
        "    linalg.yield %yr : i32\n"
    )
    head = [
        "  %c0i = arith.constant 0 : i32",
        "  %c128 = arith.constant 128 : i32",
        "  %zpv = tensor.extract %zp[] : tensor<i8>",
        "  %zpi = arith.extui %zpv : i8 to i32",
        "  %za = arith.subi %zpi, %c128 : i32",
    ]
    if decode:
        acc = f"tensor<1x{n1}x1x{n0}xi32>"
        lines = [
            f"func.func private @{name}(%x: tensor<1x1x{k}xi8>, %zp: tensor<i8>, %w: {w}, %colsum: tensor<{n}xi32>) "
            f"-> tensor<1x1x{n}xi32> {attrs} {{",
            *head,
            f"  %xf = tensor.collapse_shape %x [[0, 1, 2]] : tensor<1x1x{k}xi8> into tensor<{k}xi8>",
            f"  %xe = tensor.empty() : tensor<{k}xi8>",
            "  %xs = linalg.generic {indexing_maps = [affine_map<(d0) -> (d0)>, affine_map<(d0) -> (d0)>], "
            f'iterator_types = ["parallel"]}} ins(%xf : tensor<{k}xi8>) outs(%xe : tensor<{k}xi8>) {{\n{xor}'
            f"  }} -> tensor<{k}xi8>",
            f"  %xp = tensor.expand_shape %xs [[0, 1, 2, 3]] output_shape [1, {k1}, 1, {k0}] : "
            f"tensor<{k}xi8> into tensor<1x{k1}x1x{k0}xi8>",
            f"  %oe = tensor.empty() : {acc}",
            f"  %of = linalg.fill ins(%c0i : i32) outs(%oe : {acc}) -> {acc}",
            f"  %o = linalg.mmt4d ins(%xp, %w : tensor<1x{k1}x1x{k0}xi8>, {w}) outs(%of : {acc}) -> {acc}",
            f"  %flat = tensor.collapse_shape %o [[0, 1, 2, 3]] : {acc} into tensor<{n1 * n0}xi32>",
            f"  %y1 = tensor.extract_slice %flat[0] [{n}] [1] : tensor<{n1 * n0}xi32> to tensor<{n}xi32>",
            f"  %ye = tensor.empty() : tensor<{n}xi32>",
            "  %y2 = linalg.generic {indexing_maps = [affine_map<(d0) -> (d0)>, affine_map<(d0) -> (d0)>, "
            'affine_map<(d0) -> (d0)>], iterator_types = ["parallel"]} '
            f"ins(%y1, %colsum : tensor<{n}xi32>, tensor<{n}xi32>) outs(%ye : tensor<{n}xi32>) {{\n{fix}"
            f"  }} -> tensor<{n}xi32>",
            f"  %y = tensor.expand_shape %y2 [[0, 1, 2]] output_shape [1, 1, {n}] : tensor<{n}xi32> into "
            f"tensor<1x1x{n}xi32>",
            f"  return %y : tensor<1x1x{n}xi32>",
            "}",
        ]
        return "\n".join(lines)
    m0 = tile.m0
    lhs = f"tensor<?x{k1}x{m0}x{k0}xi8>"
    acc = f"tensor<?x{n1}x{m0}x{n0}xi32>"
    return "\n".join(
        [
            f"func.func private @{name}(%x: tensor<?x?x{k}xi8>, %zp: tensor<i8>, %w: {w}, %colsum: tensor<{n}xi32>) "
            f"-> tensor<?x?x{n}xi32> {attrs} {{",
            *head,
            "  %c0 = arith.constant 0 : index",
            "  %c1 = arith.constant 1 : index",
            f"  %cm0 = arith.constant {m0} : index",
            "  %zero8 = arith.constant 0 : i8",
            f"  %b = tensor.dim %x, %c0 : tensor<?x?x{k}xi8>",
            f"  %s = tensor.dim %x, %c1 : tensor<?x?x{k}xi8>",
            f"  %x2 = tensor.collapse_shape %x [[0, 1], [2]] : tensor<?x?x{k}xi8> into tensor<?x{k}xi8>",
            f"  %m = tensor.dim %x2, %c0 : tensor<?x{k}xi8>",
            f"  %xe = tensor.empty(%m) : tensor<?x{k}xi8>",
            "  %xs = linalg.generic {indexing_maps = [affine_map<(d0, d1) -> (d0, d1)>, affine_map<(d0, d1) -> (d0, d1)>], "
            f'iterator_types = ["parallel", "parallel"]}} ins(%x2 : tensor<?x{k}xi8>) outs(%xe : tensor<?x{k}xi8>) '
            f"{{\n{xor}  }} -> tensor<?x{k}xi8>",
            "  %m1 = arith.ceildivui %m, %cm0 : index",
            f"  %pe = tensor.empty(%m1) : {lhs}",
            f"  %xp = linalg.pack %xs padding_value(%zero8 : i8) inner_dims_pos = [0, 1] inner_tiles = [{m0}, {k0}] "
            f"into %pe : tensor<?x{k}xi8> -> {lhs}",
            f"  %oe = tensor.empty(%m1) : {acc}",
            f"  %of = linalg.fill ins(%c0i : i32) outs(%oe : {acc}) -> {acc}",
            f"  %o = linalg.mmt4d ins(%xp, %w : {lhs}, {w}) outs(%of : {acc}) -> {acc}",
            f"  %ue = tensor.empty(%m) : tensor<?x{n}xi32>",
            f"  %y1 = linalg.unpack %o inner_dims_pos = [0, 1] inner_tiles = [{m0}, {n0}] into %ue : {acc} -> "
            f"tensor<?x{n}xi32>",
            f"  %ye = tensor.empty(%m) : tensor<?x{n}xi32>",
            "  %y2 = linalg.generic {indexing_maps = [affine_map<(d0, d1) -> (d0, d1)>, affine_map<(d0, d1) -> (d1)>, "
            'affine_map<(d0, d1) -> (d0, d1)>], iterator_types = ["parallel", "parallel"]} '
            f"ins(%y1, %colsum : tensor<?x{n}xi32>, tensor<{n}xi32>) outs(%ye : tensor<?x{n}xi32>) {{\n{fix}"
            f"  }} -> tensor<?x{n}xi32>",
            f"  %y = tensor.expand_shape %y2 [[0, 1], [2]] output_shape [%b, %s, {n}] : tensor<?x{n}xi32> into "
            f"tensor<?x?x{n}xi32>",
            f"  return %y : tensor<?x?x{n}xi32>",
            "}",
        ]
    )


def embed_lookup_fn(name: str, vocab: int, hidden: int, elt: str, n0: int, opset: int, k0: int = 1) -> str:
    """Embedding lookup straight from lm_head's packed tile layout (a tied embedding is then stored once):
    row v of the NxK table is P[v / N0, h / K0, v % N0, h % K0] for h < K."""
    p = tensor_type(packed_shape(hidden, vocab, n0, k0), elt)
    attrs = f"attributes {{torch.onnx_meta.opset_version = {opset} : si64}}"
    return "\n".join(
        [
            f"func.func private @{name}(%ids: tensor<?x?xi64>, %p: {p}) -> tensor<?x?x{hidden}x{elt}> {attrs} {{",
            "  %c0 = arith.constant 0 : index",
            "  %c1 = arith.constant 1 : index",
            f"  %cn0 = arith.constant {n0} : index",
            f"  %ck0 = arith.constant {k0} : index",
            "  %b = tensor.dim %ids, %c0 : tensor<?x?xi64>",
            "  %s = tensor.dim %ids, %c1 : tensor<?x?xi64>",
            f"  %e = tensor.empty(%b, %s) : tensor<?x?x{hidden}x{elt}>",
            "  %r = linalg.generic {indexing_maps = [affine_map<(d0, d1, d2) -> (d0, d1)>, "
            'affine_map<(d0, d1, d2) -> (d0, d1, d2)>], iterator_types = ["parallel", "parallel", "parallel"]} '
            f"ins(%ids : tensor<?x?xi64>) outs(%e : tensor<?x?x{hidden}x{elt}>) {{",
            f"  ^bb0(%id: i64, %o: {elt}):",
            "    %h = linalg.index 2 : index",
            "    %hk = arith.divui %h, %ck0 : index",
            "    %hr = arith.remui %h, %ck0 : index",
            "    %v = arith.index_cast %id : i64 to index",
            "    %t = arith.divui %v, %cn0 : index",
            "    %j = arith.remui %v, %cn0 : index",
            f"    %x = tensor.extract %p[%t, %hk, %j, %hr] : {p}",
            f"    linalg.yield %x : {elt}",
            f"  }} -> tensor<?x?x{hidden}x{elt}>",
            f"  return %r : tensor<?x?x{hidden}x{elt}>",
            "}",
        ]
    )


def q4_matmul_fn(name: str, k: int, n: int, g: int, bs: int, elt: str, per_block_zero: bool, opset: int) -> str:
    """Y = X W^T with W [N, K] held as signed 4-bit blocks (q - 8) [N, G, bs], a scale per block and (asymmetric
    exports) a zero point per block. One linalg.generic does both the dequantization and the contraction, so
    IREE can neither split the dequantization into its own dispatch (fp32 weights written to memory each
    call) nor hoist it out of generate's decode loop (fp32 weights kept for the whole loop): every step reads
    the 4-bit weights."""
    attrs = f"attributes {{torch.onnx_meta.opset_version = {opset} : si64}}"
    st = f"tensor<{n}x{g}x1x{elt}>"
    zt = st if per_block_zero else f"tensor<{elt}>"
    zmap = "affine_map<(d0, d1, d2, d3) -> (d1, d2, 0)>" if per_block_zero else "affine_map<(d0, d1, d2, d3) -> ()>"
    wt = f"tensor<{n}x{g}x{bs}xi4>"
    if per_block_zero:  # (q - z) s = ((q - 8) - (z - 8)) s
        deq = [
            f"    %c8 = arith.constant 8.0 : {elt}",
            f"    %zc = arith.subf %qz, %c8 : {elt}",
            f"    %qd = arith.subf %qf, %zc : {elt}",
            f"    %qr = arith.mulf %qd, %qs : {elt}",
        ]
    else:
        deq = [f"    %qr = arith.mulf %qf, %qs : {elt}"]
    return "\n".join(
        [
            f"func.func private @{name}(%x: tensor<?x?x{k}x{elt}>, %w: {wt}, %sc: {st}, %z: {zt}) -> tensor<?x?x{n}x{elt}> "
            f"{attrs} {{",
            "  %c0 = arith.constant 0 : index",
            "  %c1 = arith.constant 1 : index",
            f"  %zero = arith.constant 0.0 : {elt}",
            f"  %b = tensor.dim %x, %c0 : tensor<?x?x{k}x{elt}>",
            f"  %s = tensor.dim %x, %c1 : tensor<?x?x{k}x{elt}>",
            f"  %x2 = tensor.collapse_shape %x [[0, 1], [2]] : tensor<?x?x{k}x{elt}> into tensor<?x{k}x{elt}>",
            f"  %m = tensor.dim %x2, %c0 : tensor<?x{k}x{elt}>",
            f"  %x3 = tensor.expand_shape %x2 [[0], [1, 2]] output_shape [%m, {g}, {bs}] : tensor<?x{k}x{elt}> into "
            f"tensor<?x{g}x{bs}x{elt}>",
            f"  %oe = tensor.empty(%m) : tensor<?x{n}x{elt}>",
            f"  %of = linalg.fill ins(%zero : {elt}) outs(%oe : tensor<?x{n}x{elt}>) -> tensor<?x{n}x{elt}>",
            "  %y2 = linalg.generic {indexing_maps = [affine_map<(d0, d1, d2, d3) -> (d0, d2, d3)>, "
            "affine_map<(d0, d1, d2, d3) -> (d1, d2, d3)>, affine_map<(d0, d1, d2, d3) -> (d1, d2, 0)>, "
            f"{zmap}, affine_map<(d0, d1, d2, d3) -> (d0, d1)>], "
            'iterator_types = ["parallel", "parallel", "reduction", "reduction"]} '
            f"ins(%x3, %w, %sc, %z : tensor<?x{g}x{bs}x{elt}>, {wt}, {st}, {zt}) outs(%of : tensor<?x{n}x{elt}>) {{",
            f"  ^bb0(%ma: {elt}, %q: i4, %qs: {elt}, %qz: {elt}, %mo: {elt}):",
            "    %qi = arith.extsi %q : i4 to i32",
            f"    %qf = arith.sitofp %qi : i32 to {elt}",
            *deq,
            f"    %mp = arith.mulf %ma, %qr : {elt}",
            f"    %ms = arith.addf %mo, %mp : {elt}",
            f"    linalg.yield %ms : {elt}",
            f"  }} -> tensor<?x{n}x{elt}>",
            f"  %y = tensor.expand_shape %y2 [[0, 1], [2]] output_shape [%b, %s, {n}] : tensor<?x{n}x{elt}> into "
            f"tensor<?x?x{n}x{elt}>",
            f"  return %y : tensor<?x?x{n}x{elt}>",
            "}",
        ]
    )
