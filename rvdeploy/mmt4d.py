"""Stage: lower every weight contraction to `linalg.mmt4d` with tiles chosen for the target.

Each ONNX `MatMul(x, W)` whose right operand is a weight global becomes a call to a small helper:
  decode  (x is 1x1xK): x reshaped to 1xKx1x1 (no copy), mmt4d with M0 = 1, result reshaped back;
  prefill (x is BxSxK): x packed to M0xK0 tiles, mmt4d, result unpacked (activations only).
W is replaced by a new global holding it pre-packed as N1xK1xN0xK0, so neither module load nor any
step packs a weight, and each weight is stored once, in the layout its kernel reads. IREE then lowers
the mmt4d ops to its microkernels (`--iree-llvmcpu-enable-ukernels=mmt4d`). Activation x activation
contractions (attention over the KV cache) are left alone: repacking the cache every token costs
more than the microkernel saves (see the issue's measurements).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from iree.compiler import ir

from .entrypoints import EntryModule
from .mlir_types import TensorType
from .targets import Target

_TILES = Path(__file__).with_name("tiles.toml")


@dataclass(frozen=True)
class Tile:
    m0: int  # prefill rows per tile (decode always uses 1)
    n0: int
    k0: int


@dataclass(frozen=True)
class PackedWeight:
    key: str  # parameter key of the packed tensor
    source_key: str  # parameter key of the KxN original
    k: int
    n: int
    elt: str
    n0: int
    k0: int
    transposed: bool = False  # the source is stored NxK (a tied embedding used through Transpose)

    @property
    def packed_shape(self) -> tuple[int, int, int, int]:
        return (-(-self.n // self.n0), self.k // self.k0, self.n0, self.k0)


@dataclass(frozen=True)
class LoweredModule:
    mlir: Path
    packed: tuple[PackedWeight, ...]
    plain_keys: tuple[str, ...]  # weights still read as imported (embeddings, norms...)
    tiles: dict  # element type -> Tile
    lowered: int  # contractions rewritten
    skipped: tuple[str, ...]  # why other weight contractions were not


def tile_for(target: Target, elt: str, library: str = "upstream") -> Tile | None:
    """The tile for `elt` on `target` with the given microkernel library (rvdeploy.ukernels): tiles.toml's
    [ARCH.project.ELT] for the project's kernels when it has one, else [ARCH.ELT] (IREE's)."""
    table = tomllib.loads(_TILES.read_text())
    arch = table.get("host" if target.is_host else target.arch, {})
    entry = arch.get(library, {}).get(elt) if library != "upstream" else None
    entry = entry or arch.get(elt)
    if entry is None or (not target.is_host and not target.has_vector):
        return None
    n0 = entry["n0"] if "n0" in entry else target.vlen // entry["n0_vlen_divisor"]
    return Tile(m0=entry["prefill_m0"], n0=n0, k0=entry["k0"])


def _helper(name: str, k: int, n: int, elt: str, tile: Tile, decode: bool, opset: int) -> str:
    n1, k1, n0, k0 = -(-n // tile.n0), k // tile.k0, tile.n0, tile.k0
    w = f"tensor<{n1}x{k1}x{n0}x{k0}x{elt}>"
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
            lines.append(f"  %y1 = tensor.extract_slice %flat[0] [{n}] [1] : tensor<{n1 * n0}x{elt}> to tensor<{n}x{elt}>")
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
    return "\n".join([
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
        f"  %pe = tensor.empty(%m1) : {lhs}",
        f"  %xp = linalg.pack %x2 padding_value(%zero : {elt}) inner_dims_pos = [0, 1] inner_tiles = [{m0}, {k0}] "
        f"into %pe : tensor<?x{k}x{elt}> -> {lhs}",
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
    ])


def _gather_helper(name: str, vocab: int, hidden: int, elt: str, n0: int, opset: int) -> str:
    """Embedding lookup straight from lm_head's packed tile layout (a tied embedding is then stored once):
    row v of the NxK table is P[v / N0, :, v % N0, 0]."""
    n1 = -(-vocab // n0)
    p = f"tensor<{n1}x{hidden}x{n0}x1x{elt}>"
    attrs = f"attributes {{torch.onnx_meta.opset_version = {opset} : si64}}"
    return "\n".join([
        f"func.func private @{name}(%ids: tensor<?x?xi64>, %p: {p}) -> tensor<?x?x{hidden}x{elt}> {attrs} {{",
        "  %c0 = arith.constant 0 : index",
        "  %c1 = arith.constant 1 : index",
        f"  %cn0 = arith.constant {n0} : index",
        "  %b = tensor.dim %ids, %c0 : tensor<?x?xi64>",
        "  %s = tensor.dim %ids, %c1 : tensor<?x?xi64>",
        f"  %e = tensor.empty(%b, %s) : tensor<?x?x{hidden}x{elt}>",
        "  %r = linalg.generic {indexing_maps = [affine_map<(d0, d1, d2) -> (d0, d1)>, "
        "affine_map<(d0, d1, d2) -> (d0, d1, d2)>], iterator_types = [\"parallel\", \"parallel\", \"parallel\"]} "
        f"ins(%ids : tensor<?x?xi64>) outs(%e : tensor<?x?x{hidden}x{elt}>) {{",
        f"  ^bb0(%id: i64, %o: {elt}):",
        "    %h = linalg.index 2 : index",
        "    %v = arith.index_cast %id : i64 to index",
        "    %t = arith.divui %v, %cn0 : index",
        "    %j = arith.remui %v, %cn0 : index",
        f"    %x = tensor.extract %p[%t, %h, %j, %c0] : {p}",
        f"    linalg.yield %x : {elt}",
        f"  }} -> tensor<?x?x{hidden}x{elt}>",
        f"  return %r : tensor<?x?x{hidden}x{elt}>",
        "}",
    ])


def _gathers_from_packed(module, globals_, packed_syms: dict, helpers: dict, opset: int) -> int:
    """Point embedding Gathers at the transposed-packed copy of the same table (tied lm_head), so the
    plain table can be dropped. Returns how many were rewritten."""
    gathers = []
    _walk(module.operation, lambda op: gathers.append(op) if op.name == "torch.operator"
          and ir.StringAttr(op.attributes["name"]).value == "onnx.Gather" else None)
    count = 0
    for op in gathers:
        conv = op.operands[0].owner
        if getattr(conv, "name", None) != "torch_c.from_builtin_tensor":
            continue
        load = conv.operands[0].owner
        if getattr(load, "name", None) != "util.global.load":
            continue
        gname = ir.FlatSymbolRefAttr(load.attributes["global"]).value
        pw = packed_syms.get("rvd_packed." + gname + ".T")
        axis = ir.IntegerAttr(op.attributes["torch.onnx.axis"]).value if "torch.onnx.axis" in op.attributes else 0
        if pw is None or pw.k0 != 1 or axis != 0:
            continue
        ids = TensorType.parse(str(op.operands[1].type))
        y = TensorType.parse(str(op.results[0].type))
        if len(ids.dims) != 2 or ids.elt != "i64":
            continue
        helper = f"rvd_embed_packed_{pw.n}x{pw.k}_{pw.elt}"
        helpers.setdefault(helper, _gather_helper(helper, pw.n, pw.k, pw.elt, pw.n0, opset))
        wt = "tensor<" + "x".join(map(str, pw.packed_shape)) + f"x{pw.elt}>"
        with ir.InsertionPoint(op), op.location:
            ib = _create("torch_c.to_builtin_tensor", [ir.Type.parse(ids.builtin)], [op.operands[1]])
            if ids.builtin != "tensor<?x?xi64>":
                ib = _create("tensor.cast", [ir.Type.parse("tensor<?x?xi64>")], [ib])
            pv = _create("util.global.load", [ir.Type.parse(wt)], [],
                         {"global": ir.FlatSymbolRefAttr.get("rvd_packed." + gname + ".T")})
            hy = f"tensor<?x?x{pw.k}x{pw.elt}>"
            yb = _create("func.call", [ir.Type.parse(hy)], [ib, pv], {"callee": ir.FlatSymbolRefAttr.get(helper)})
            if y.builtin != hy:
                yb = _create("tensor.cast", [ir.Type.parse(y.builtin)], [yb])
            yv = _create("torch_c.from_builtin_tensor", [op.results[0].type], [yb])
        op.results[0].replace_all_uses_with(yv)
        op.erase()
        if not list(conv.results[0].uses):
            conv.erase()
            if not list(load.results[0].uses):
                load.erase()
        count += 1
    return count


def _walk(op, visit) -> None:
    for region in op.regions:
        for block in region.blocks:
            for child in list(block.operations):
                visit(child.operation)
                _walk(child.operation, visit)


def _weight_global(value) -> tuple[str, bool] | None:
    """(global name, transposed) when a MatMul's right operand is a weight: a global, or a 2-D
    Transpose of one (how exports share a tied embedding with lm_head)."""
    op = value.owner
    transposed = False
    if (getattr(op, "name", None) == "torch.operator"
            and ir.StringAttr(op.attributes["name"]).value == "onnx.Transpose"):
        # no perm attribute means reversed dims: [1, 0] for a 2-D table
        if "torch.onnx.perm" in op.attributes and \
                [ir.IntegerAttr(p).value for p in ir.ArrayAttr(op.attributes["torch.onnx.perm"])] != [1, 0]:
            return None
        transposed = True
        op = op.operands[0].owner
    if getattr(op, "name", None) != "torch_c.from_builtin_tensor":
        return None
    load = op.operands[0].owner
    if getattr(load, "name", None) != "util.global.load":
        return None
    return ir.FlatSymbolRefAttr(load.attributes["global"]).value, transposed


def _param_key(global_op) -> str:
    # #stream.parameter.named<"model"::"KEY"> : the key is the last quoted string
    text = str(global_op.attributes["initial_value"])
    return text.rsplit('"', 2)[-2]


def _create(name, results, operands, attributes=None):
    return ir.Operation.create(name, results=results, operands=operands, attributes=attributes or {}).result


def _tied_copies(module, globals_, matmuls, is_transpose) -> dict[str, str]:
    """lm_head weights that are a stored transposed copy of an embedding table (exporters without
    `accelerate` store the tied table twice): MatMul global -> the embedding global it duplicates."""
    tables = {}
    _walk(module.operation, lambda op: tables.setdefault(op, None) if op.name == "torch.operator"
          and ir.StringAttr(op.attributes["name"]).value == "onnx.Gather" else None)
    shapes = {}  # embedding global -> (N, K)
    for op in tables:
        conv = op.operands[0].owner
        if getattr(conv, "name", None) == "torch_c.from_builtin_tensor":
            load = conv.operands[0].owner
            if getattr(load, "name", None) == "util.global.load":
                t = TensorType.parse(str(op.operands[0].type))
                shapes[ir.FlatSymbolRefAttr(load.attributes["global"]).value] = t.dims
    aliases = {}
    for op in matmuls:
        found = _weight_global(op.operands[1])
        if found is None or found[1]:
            continue
        w = TensorType.parse(str(op.operands[1].type)).dims
        for emb, (n, k) in shapes.items():
            if w == (k, n) and found[0] not in aliases and \
                    is_transpose(_param_key(globals_[found[0]]), _param_key(globals_[emb]), k, n):
                aliases[found[0]] = emb
    return aliases


def lower_to_mmt4d(entry: EntryModule, target: Target, workdir: Path, ukernels: str = "upstream",
                   is_transpose=None) -> LoweredModule:
    """`is_transpose(w_key, e_key, k, n)`, when given, says whether weight w (KxN) equals table e (NxK)
    transposed; such copies are dropped and lm_head reads the table (see params.is_transposed_copy)."""
    with ir.Context() as ctx:
        ctx.allow_unregistered_dialects = True
        module = ir.Module.parse(entry.mlir.read_text())
        globals_ = {ir.StringAttr(op.attributes["sym_name"]).value: op.operation
                    for op in module.body.operations if op.operation.name == "util.global"}
        opset = 17
        for op in module.body.operations:
            if op.operation.name == "func.func" and "torch.onnx_meta.opset_version" in op.attributes:
                opset = ir.IntegerAttr(op.attributes["torch.onnx_meta.opset_version"]).value
                break

        matmuls = []
        _walk(module.operation, lambda op: matmuls.append(op) if op.name == "torch.operator"
              and ir.StringAttr(op.attributes["name"]).value == "onnx.MatMul" else None)

        aliases = _tied_copies(module, globals_, matmuls, is_transpose) if is_transpose else {}
        helpers: dict[str, str] = {}
        packed: dict[str, PackedWeight] = {}
        tiles: dict[str, Tile] = {}
        skipped: list[str] = []
        sym_to_packed: dict[str, PackedWeight] = {}  # packed global name (without prefix) -> weight
        lowered = 0
        for op in matmuls:
            found = _weight_global(op.operands[1])
            if found is None:
                continue  # activation x activation (attention): left to IREE's code generation
            gname, transposed = found
            if gname in aliases:  # read the tied embedding table instead of its stored copy
                gname, transposed = aliases[gname], True
            x = TensorType.parse(str(op.operands[0].type))
            w = TensorType.parse(str(op.operands[1].type))
            y = TensorType.parse(str(op.results[0].type))
            tile = tile_for(target, x.elt, ukernels)
            where = str(op.location)
            if tile is None:
                skipped.append(f"{where}: no mmt4d tile for {x.elt} on {target.name}")
                continue
            if len(x.dims) != 3 or len(w.dims) != 2 or w.dims[0] % tile.k0:
                skipped.append(f"{where}: unsupported MatMul shapes {x.dims} x {w.dims}")
                continue
            tiles[x.elt] = tile
            k, n = w.dims
            decode = x.dims[:2] == (1, 1)
            helper = f"rvd_mmt4d_{'decode' if decode else 'prefill'}_{k}x{n}_{x.elt}"
            helpers.setdefault(helper, _helper(helper, k, n, x.elt, tile, decode, opset))
            source_key = _param_key(globals_[gname])
            key = f"{source_key}{'.T' if transposed else ''}.mmt4d_{tile.n0}x{tile.k0}"
            pw = packed.setdefault(key, PackedWeight(key, source_key, k, n, x.elt, tile.n0, tile.k0, transposed))
            packed_sym = "rvd_packed." + gname + (".T" if transposed else "")
            sym_to_packed[gname + (".T" if transposed else "")] = pw

            hx = f"tensor<1x1x{k}x{x.elt}>" if decode else f"tensor<?x?x{k}x{x.elt}>"
            hy = f"tensor<1x1x{n}x{x.elt}>" if decode else f"tensor<?x?x{n}x{x.elt}>"
            wt = "tensor<" + "x".join(map(str, pw.packed_shape)) + f"x{x.elt}>"
            with ir.InsertionPoint(op), op.location:
                xb = _create("torch_c.to_builtin_tensor", [ir.Type.parse(x.builtin)], [op.operands[0]])
                if x.builtin != hx:
                    xb = _create("tensor.cast", [ir.Type.parse(hx)], [xb])
                wv = _create("util.global.load", [ir.Type.parse(wt)], [],
                             {"global": ir.FlatSymbolRefAttr.get(packed_sym)})
                yb = _create("func.call", [ir.Type.parse(hy)], [xb, wv],
                             {"callee": ir.FlatSymbolRefAttr.get(helper)})
                if y.builtin != hy:
                    yb = _create("tensor.cast", [ir.Type.parse(y.builtin)], [yb])
                yv = _create("torch_c.from_builtin_tensor", [op.results[0].type], [yb])
            op.results[0].replace_all_uses_with(yv)
            chain = op.operands[1].owner
            op.erase()
            while chain is not None and not list(chain.results[0].uses):  # Transpose, conversion, load
                up = chain.operands[0].owner if len(chain.operands) else None
                chain.erase()
                chain = up
            if packed_sym not in globals_:
                ip = ir.InsertionPoint(globals_[gname])
                new = ir.Operation.parse(
                    f'util.global private @"{packed_sym}" = #stream.parameter.named<"model"::"{key}"> : {wt}')
                ip.insert(new)
                globals_[packed_sym] = new
            lowered += 1

        packed_syms = {"rvd_packed." + pw_sym: pw for pw_sym, pw in sym_to_packed.items()}
        _gathers_from_packed(module, globals_, packed_syms, helpers, opset)

        used: set[str] = set()
        _walk(module.operation, lambda op: used.add(ir.FlatSymbolRefAttr(op.attributes["global"]).value)
              if op.name == "util.global.load" else None)
        plain = []
        for name, g in globals_.items():
            if name not in used:
                g.erase()  # a weight now read only in its packed form
            elif not name.startswith("rvd_packed."):
                plain.append(_param_key(g))
        if helpers:
            added = ir.Module.parse("\n".join(helpers.values()))
            for op in list(added.body.operations):
                op.detach_from_parent()
                module.body.append(op)
        module.operation.verify()
        out = workdir / "module.mmt4d.mlir"
        out.write_text(str(module))
    return LoweredModule(mlir=out, packed=tuple(packed.values()), plain_keys=tuple(plain), tiles=tiles,
                         lowered=lowered, skipped=tuple(skipped))
