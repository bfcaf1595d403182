"""Stage: lower every weight contraction to `linalg.mmt4d` with tiles chosen for the target.

Each ONNX `MatMul(x, W)` whose right operand is a weight global becomes a call to a small helper:
  decode  (x is 1x1xK): x reshaped to 1xKx1x1 (no copy), mmt4d with M0 = 1, result reshaped back;
  prefill (x is BxSxK): x packed to M0xK0 tiles, mmt4d, result unpacked (activations only).
W is replaced by a new global holding it pre-packed as N1xK1xN0xK0, so neither module load nor any
step packs a weight, and each weight is stored once, in the layout its kernel reads. IREE then lowers
the mmt4d ops to its microkernels (`--iree-llvmcpu-enable-ukernels=mmt4d`). Activation x activation
contractions (attention over the KV cache) are left alone: repacking the cache every token costs
more than the microkernel saves (see the issue's measurements). 4-bit weights (rvdeploy.qgraph's MatMulNBits
chain) become the RVV 4-bit kernels' dispatches on riscv64 (rvdeploy.q4kernel), else one generated
contraction dequantizing the i4 weights in registers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from iree.compiler import ir

from . import q4kernel
from .entrypoints import EntryModule
from .layout import PackedWeight, Tile, tile_for
from .mlir_types import TensorType
from .mmt4d_helpers import embed_lookup_fn, int8_matmul_fn, matmul_fn, q4_matmul_fn
from .q4_lookup import TIED_SCALES, TIED_TABLE
from .targets import Target


@dataclass(frozen=True)
class LoweredModule:
    mlir: Path
    packed: tuple[PackedWeight, ...]
    plain_keys: tuple[str, ...]  # weights still read as imported (embeddings, norms...)
    tiles: dict  # element type -> Tile
    lowered: int  # contractions rewritten
    skipped: tuple[str, ...]  # why other weight contractions were not
    q4: int = 0  # 4-bit weight contractions (not mmt4d)
    q4_kernel: int = 0  # of those, on the RVV 4-bit kernels (rvdeploy.q4kernel); the rest dequantize in a generated one


@dataclass
class _Lowering:
    """What the rewrites of one module share: the module and its globals, where the tiles come from, and
    what the rewrites add up (helper functions, packed weights, tiles used, contractions left alone)."""

    module: ir.Module
    globals_: dict  # global symbol -> its util.global op
    target: Target
    library: str  # mmt4d microkernel library (rvdeploy.ukernels): it picks the tiles
    opset: int
    helpers: dict[str, str] = field(default_factory=dict)  # helper function name -> MLIR text
    packed: dict[str, PackedWeight] = field(default_factory=dict)  # packed parameter key -> weight
    tiles: dict[str, Tile] = field(default_factory=dict)  # element type -> the tile its contractions use
    skipped: list[str] = field(default_factory=list)  # why a weight contraction was not lowered
    # packed global name (without its "rvd_packed." prefix) -> weight: embedding lookups read these
    sym_to_packed: dict[str, PackedWeight] = field(default_factory=dict)
    q4_object: Path | None = None  # the 4-bit kernels' object (rvdeploy.q4kernel), built on first use
    text: str = ""  # the module's text (its resources: inline constants' bytes)
    q8_shared: dict = field(default_factory=dict)  # activation value -> its quantize call (q/k/v share one)
    q4_kernel: int = 0
    # 4-bit weight global on the kernels -> (k, n, n0, panels global, scales global): tied tables read these
    q4_panels: dict[str, tuple] = field(default_factory=dict)

    def tile(self, elt: str) -> Tile | None:
        return tile_for(self.target, elt, self.library)

    def helper(self, name: str, make) -> None:
        """Add helper function NAME (MLIR text from make()) once."""
        if name not in self.helpers:
            self.helpers[name] = make()


def _table_lookups(low: _Lowering) -> list[tuple]:
    """(Gather, the global it reads, its ids' type) for every embedding-style lookup: a Gather on axis 0 of a
    global read directly, with [B, S] int64 ids. The lookups the rewrites below can redirect."""
    gathers = []
    _walk(low.module.operation, lambda op: gathers.append(op) if _onnx_name(op) == "onnx.Gather" else None)
    found = []
    for op in gathers:
        conv = op.operands[0].owner
        load = conv.operands[0].owner if getattr(conv, "name", None) == "torch_c.from_builtin_tensor" else None
        if getattr(load, "name", None) != "util.global.load":
            continue
        axis = ir.IntegerAttr(op.attributes["torch.onnx.axis"]).value if "torch.onnx.axis" in op.attributes else 0
        ids = TensorType.parse(str(op.operands[1].type))
        if axis == 0 and len(ids.dims) == 2 and ids.elt == "i64":
            found.append((op, ir.FlatSymbolRefAttr(load.attributes["global"]).value, ids))
    return found


def _gathers_from_packed(low: _Lowering) -> int:
    """Point embedding Gathers at the transposed-packed copy of the same table (tied lm_head), so the
    plain table can be dropped. Returns how many were rewritten."""
    count = 0
    for op, gname, ids in _table_lookups(low):
        pw = low.sym_to_packed.get(gname + ".T")
        if pw is None or pw.k % pw.k0:
            continue
        helper = f"rvd_embed_packed_{pw.n}x{pw.k}_{pw.elt}_{pw.n0}x{pw.k0}"
        low.helper(helper, lambda: embed_lookup_fn(helper, pw.n, pw.k, pw.elt, pw.n0, low.opset, pw.k0))
        with ir.InsertionPoint(op), op.location:
            args = [
                _builtin(op.operands[1], ids, "tensor<?x?xi64>"),
                _load("rvd_packed." + gname + ".T", pw.tensor_type),
            ]
        _replace_with_call(op, helper, args, f"tensor<?x?x{pw.k}x{pw.elt}>")
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
    if getattr(op, "name", None) == "torch.operator" and ir.StringAttr(op.attributes["name"]).value == "onnx.Transpose":
        # no perm attribute means reversed dims: [1, 0] for a 2-D table
        if "torch.onnx.perm" in op.attributes and [
            ir.IntegerAttr(p).value for p in ir.ArrayAttr(op.attributes["torch.onnx.perm"])
        ] != [1, 0]:
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


def _builtin(value, t: TensorType, want: str):
    """A torch value as the builtin tensor type a helper function takes (converted, then cast if needed)."""
    b = _create("torch_c.to_builtin_tensor", [ir.Type.parse(t.builtin)], [value])
    return b if t.builtin == want else _create("tensor.cast", [ir.Type.parse(want)], [b])


def _load(sym: str, typ: str):
    return _create("util.global.load", [ir.Type.parse(typ)], [], {"global": ir.FlatSymbolRefAttr.get(sym)})


def _replace_with_call(op, helper: str, args: list, result: str) -> None:
    """Replace op by `func.call @helper(args)` (built at op's place by the caller's args) returning the builtin
    `result` type, cast back to op's torch type; op and whatever only it used are erased."""
    with ir.InsertionPoint(op), op.location:
        y = TensorType.parse(str(op.results[0].type))
        yb = _create("func.call", [ir.Type.parse(result)], args, {"callee": ir.FlatSymbolRefAttr.get(helper)})
        if y.builtin != result:
            yb = _create("tensor.cast", [ir.Type.parse(y.builtin)], [yb])
        yv = _create("torch_c.from_builtin_tensor", [op.results[0].type], [yb])
    op.results[0].replace_all_uses_with(yv)
    _erase_dead(op)


def _declare_global(globals_: dict, beside: str, sym: str, key: str, typ: str) -> None:
    """A new parameter-backed global (once), placed beside the one it replaces."""
    if sym not in globals_:
        new = ir.Operation.parse(f'util.global private @"{sym}" = #stream.parameter.named<"model"::"{key}"> : {typ}')
        ir.InsertionPoint(globals_[beside]).insert(new)
        globals_[sym] = new


def _tied_copies(module, globals_, matmuls, is_transpose) -> dict[str, str]:
    """lm_head weights that are a stored transposed copy of an embedding table (exporters without
    `accelerate` store the tied table twice): MatMul global -> the embedding global it duplicates."""
    tables = {}
    _walk(
        module.operation,
        lambda op: (
            tables.setdefault(op, None)
            if op.name == "torch.operator" and ir.StringAttr(op.attributes["name"]).value == "onnx.Gather"
            else None
        ),
    )
    shapes = {}  # embedding global -> (N, K)
    for op in tables:
        conv = op.operands[0].owner
        if getattr(conv, "name", None) == "torch_c.from_builtin_tensor":
            load = conv.operands[0].owner
            if getattr(load, "name", None) == "util.global.load":
                t = TensorType.parse(str(op.operands[0].type))
                if len(t.dims) == 2:  # (a 4-bit table is [V, G, ., .]: rvdeploy.q4_lookup, never an f32 copy)
                    shapes[ir.FlatSymbolRefAttr(load.attributes["global"]).value] = t.dims
    aliases = {}
    for op in matmuls:
        found = _weight_global(op.operands[1])
        if found is None or found[1]:
            continue
        w = TensorType.parse(str(op.operands[1].type)).dims
        for emb, (n, k) in shapes.items():
            if (
                w == (k, n)
                and found[0] not in aliases
                and is_transpose(_param_key(globals_[found[0]]), _param_key(globals_[emb]), k, n)
            ):
                aliases[found[0]] = emb
    return aliases


def _onnx_name(op) -> str | None:
    if getattr(op, "name", None) != "torch.operator":
        return None
    return ir.StringAttr(op.attributes["name"]).value


def _erase_dead(op) -> None:
    """Erase op and then its producers, as long as nothing else uses them."""
    work = [op]
    while work:
        cur = work.pop()
        if not hasattr(cur, "results") or any(list(r.uses) for r in cur.results):
            continue
        producers = [v.owner for v in cur.operands if hasattr(v.owner, "name")]
        cur.erase()
        work.extend(producers)


def _lower_q4(low: _Lowering) -> int:
    """The 4-bit chain rvdeploy.qgraph writes for MatMulNBits -> one call of q4_matmul_fn on the i4 weights."""
    ops = []
    _walk(low.module.operation, lambda op: ops.append(op) if _onnx_name(op) == "onnx.MatMul" else None)
    chain = ["onnx.Transpose", "onnx.Reshape", "onnx.Mul", "onnx.Sub", "onnx.Cast", "onnx.Reshape", "onnx.Concat"]
    count = 0
    for op in ops:
        cur, seen = op.operands[1].owner, []
        for name in chain:
            if _onnx_name(cur) != name:
                break
            seen.append(cur)
            cur = cur.operands[0].owner
        else:
            hi = seen[-1].operands[1].owner  # Unsqueeze(BitShift(B, 4, RIGHT))
            shift = hi.operands[0].owner if _onnx_name(hi) == "onnx.Unsqueeze" else None
            if _onnx_name(shift) != "onnx.BitShift":
                continue
            found = _weight_global(shift.operands[0])
            if found is None:
                continue
            gname = found[0]
            scale_v, zero_v = seen[2].operands[1], seen[3].operands[1]
            x = TensorType.parse(str(op.operands[0].type))
            b = TensorType.parse(str(shift.operands[0].type))
            st = TensorType.parse(str(scale_v.type))
            zt = TensorType.parse(str(zero_v.type))
            if (
                len(x.dims) != 3
                or len(b.dims) != 3
                or st.dims != (b.dims[0], b.dims[1], 1)
                or zt.dims not in ((), st.dims)
                or x.elt not in ("f32", "f16")
            ):
                low.skipped.append(f"{op.location}: unsupported 4-bit MatMul shapes {x.dims} x {b.dims}")
                continue
            n, g, half = b.dims
            bs, k = half * 2, g * half * 2
            per_block = zt.dims != ()
            if _q4_on_kernel(low, op, gname, scale_v, x, n, k, bs, per_block):
                count += 1
                continue
            helper = f"rvd_q4_{k}x{n}_b{bs}_{x.elt}{'_zp' if per_block else ''}"
            low.helper(helper, lambda: q4_matmul_fn(helper, k, n, g, bs, x.elt, per_block, low.opset))
            source_key = _param_key(low.globals_[gname])
            key = f"{source_key}.i4"
            pw = low.packed.setdefault(key, PackedWeight(key, source_key, k, n, "i4", bs, 1, shape=(n, g, bs)))
            sym = "rvd_q4." + gname
            wt = pw.tensor_type
            with ir.InsertionPoint(op), op.location:
                args = [
                    _builtin(op.operands[0], x, f"tensor<?x?x{k}x{x.elt}>"),
                    _load(sym, wt),
                    _builtin(scale_v, st, st.builtin),
                    _builtin(zero_v, zt, zt.builtin),
                ]
            _replace_with_call(op, helper, args, f"tensor<?x?x{n}x{x.elt}>")
            _declare_global(low.globals_, gname, sym, key, wt)
            count += 1
    return count


def _inline_scales(low: _Lowering, value) -> tuple[str, bytes] | None:
    """(resource name, raw bytes) of block scales the importer left inline (tensors under its externalizing
    threshold): an onnx.Constant holding a dense_resource blob, whose bytes are in the module's resources."""
    op = value.owner
    if _onnx_name(op) != "onnx.Constant" or "torch.onnx.value" not in op.attributes:
        return None
    found = re.match(r"dense_resource<([^>]+)>", str(op.attributes["torch.onnx.value"]))
    if found is None:
        return None
    name = found.group(1).strip('"')
    blob = re.search(rf'^\s*"?{re.escape(name)}"?: "0x([0-9A-Fa-f]+)"', low.text, re.M)
    if blob is None:
        return None
    return name, bytes.fromhex(blob.group(1))[4:]  # a 4-byte alignment header, then the data


def _q4_on_kernel(low: _Lowering, op, gname: str, scale_v, x: TensorType, n: int, k: int, bs: int, per_block) -> bool:
    """The 4-bit MatMul `op` as the RVV kernels' two dispatches (rvdeploy.q4kernel) when they apply: riscv64 RVV
    with the project library, f32 activations, blocks of 32, zero point 8 and scales stored as a parameter."""
    scale = _weight_global(scale_v)
    inline = _inline_scales(low, scale_v) if scale is None else None
    if (
        low.library != "project"
        or not q4kernel.applies(low.target)
        or x.elt != "f32"
        or bs != q4kernel.BLOCK
        or per_block
        or (scale is None and inline is None)
        or (scale is not None and scale[1])
    ):
        return False
    if low.q4_object is None:
        low.q4_object = q4kernel.build_object(low.target)
        # added with the helper functions (the name only keeps it once): the exports their dispatches call
        low.helper("!executable", lambda: q4kernel.executable(low.q4_object))
    n0 = q4kernel.panel_width(low.target)
    g = k // bs
    x_in = op.operands[0]
    shared = low.q8_shared.get(x_in)
    if shared is None or shared.operation.block != op.operation.block:
        qname = f"rvd_q8_{k}"
        low.helper(qname, lambda: q4kernel.quantize_fn(qname, k, low.opset))
        with ir.InsertionPoint(op), op.location:
            xb = _builtin(x_in, x, f"tensor<?x?x{k}xf32>")
            shared = ir.Operation.create(
                "func.call",
                results=[ir.Type.parse(f"tensor<?x{k}xi8>"), ir.Type.parse(f"tensor<?x{g}x2xf32>")],
                operands=[xb],
                attributes={"callee": ir.FlatSymbolRefAttr.get(qname)},
            )
        low.q8_shared[x_in] = shared
    helper = f"rvd_q4k_{k}x{n}_n0{n0}"
    low.helper(helper, lambda: q4kernel.matmul_fn(helper, k, n, n0, low.opset))
    w_key = _param_key(low.globals_[gname])
    s_key = _param_key(low.globals_[scale[0]]) if scale else inline[0]
    pw = low.packed.setdefault(
        f"{w_key}.q4p{n0}",
        PackedWeight(f"{w_key}.q4p{n0}", w_key, k, n, "i8", n0, bs, shape=q4kernel.weight_shape(k, n, n0), kind="q4w"),
    )
    ps = low.packed.setdefault(
        f"{w_key}.q4s{n0}",
        PackedWeight(
            f"{w_key}.q4s{n0}",
            s_key,
            k,
            n,
            "f16",
            n0,
            bs,
            shape=q4kernel.scale_shape(k, n, n0),
            kind="q4s",
            data=inline[1] if inline else None,
        ),
    )
    wsym, ssym = "rvd_q4." + gname + f".p{n0}", f"rvd_q4.{gname}.s{n0}"
    with ir.InsertionPoint(op), op.location:
        xb = _builtin(op.operands[0], x, f"tensor<?x?x{k}xf32>")
        args = [xb, shared.results[0], shared.results[1], _load(wsym, pw.tensor_type), _load(ssym, ps.tensor_type)]
    _replace_with_call(op, helper, args, f"tensor<?x?x{n}xf32>")
    _declare_global(low.globals_, gname, wsym, pw.key, pw.tensor_type)
    _declare_global(low.globals_, gname, ssym, ps.key, ps.tensor_type)
    low.q4_panels[gname] = (k, n, n0, wsym, pw.tensor_type, ssym, ps.tensor_type)
    low.q4_kernel += 1
    return True


def _gathers_from_q4_panels(low: _Lowering) -> int:
    """Lookups of a table tied to a 4-bit lm_head on the kernels (rvdeploy.q4_lookup's TIED_TABLE /
    TIED_SCALES beside its MatMulNBits weight, whose nibbles rvdeploy.qgraph stores as `<name>.nib`) read the
    lm_head's panels, so the table's own copy is dropped. Returns how many Gathers were rewritten."""
    count = 0
    for op, table, ids in _table_lookups(low):
        scales = table.endswith(TIED_SCALES)
        base = table[: -len(TIED_SCALES)] if scales else table[: -len(TIED_TABLE)]
        panels = low.q4_panels.get(base + ".nib") if table.endswith((TIED_TABLE, TIED_SCALES)) else None
        if panels is None:
            continue
        k, n, n0, wsym, wtype, ssym, stype = panels
        helper = f"rvd_q4_panel_{'scales' if scales else 'rows'}_{k}x{n}_n0{n0}"
        low.helper(helper, lambda: q4kernel.panel_lookup_fn(helper, k, n, n0, low.opset, scales))
        with ir.InsertionPoint(op), op.location:
            args = [
                _builtin(op.operands[1], ids, "tensor<?x?xi64>"),
                _load(*((ssym, stype) if scales else (wsym, wtype))),
            ]
        g = k // q4kernel.BLOCK
        _replace_with_call(op, helper, args, f"tensor<?x?x{g}x1x{1 if scales else 16}x{'f16' if scales else 'i8'}>")
        count += 1
    return count


def _lower_matmul_integer(low: _Lowering) -> int:
    """MatMulInteger(x uint8, W int8 global, x_zero_point) -> s8 x s8 -> s32 mmt4d (see int8_matmul_fn).
    rvdeploy.qgraph has already dropped zero weight zero points and turned uint8 weights into int8 ones.
    W may be a Transpose of an int8 embedding table (rvdeploy.quantize's tied lm_head): packed from it, and
    registered in sym_to_packed so that the table's lookups read the packed copy too."""
    ops = []
    _walk(
        low.module.operation,
        lambda op: (
            ops.append(op)
            if op.name == "torch.operator" and ir.StringAttr(op.attributes["name"]).value == "onnx.MatMulInteger"
            else None
        ),
    )
    count = 0
    for op in ops:
        where = str(op.location)
        found = _weight_global(op.operands[1]) if len(op.operands) >= 2 else None
        if found is None:
            continue  # activation x activation: left to IREE's code generation
        gname, transposed = found
        tsuffix = ".T" if transposed else ""
        x = TensorType.parse(str(op.operands[0].type))
        w = TensorType.parse(str(op.operands[1].type))
        if len(op.operands) != 3:
            low.skipped.append(f"{where}: MatMulInteger with a weight zero point (not normalized)")
            continue
        zp = TensorType.parse(str(op.operands[2].type))
        if x.torch_elt != "ui8" or w.torch_elt != "si8" or zp.dims not in ((), (1,)) or zp.torch_elt != "ui8":
            low.skipped.append(f"{where}: MatMulInteger {x.torch_elt} x {w.torch_elt} (want ui8 x si8)")
            continue
        tile = low.tile("i8")
        if tile is None:
            low.skipped.append(f"{where}: no mmt4d tile for i8 on {low.target.name}")
            continue
        if len(x.dims) != 3 or len(w.dims) != 2 or w.dims[0] % tile.k0:
            low.skipped.append(f"{where}: unsupported MatMulInteger shapes {x.dims} x {w.dims}")
            continue
        low.tiles["i8"] = tile
        k, n = w.dims
        decode = x.dims[:2] == (1, 1)
        helper = f"rvd_mmt4d_s8_{'decode' if decode else 'prefill'}_{k}x{n}"
        low.helper(helper, lambda: int8_matmul_fn(helper, k, n, tile, decode, low.opset))
        source_key = _param_key(low.globals_[gname])
        key = f"{source_key}{tsuffix}.mmt4d_{tile.n0}x{tile.k0}"
        pw = low.packed.setdefault(
            key,
            PackedWeight(
                key, source_key, k, n, "i8", tile.n0, tile.k0, transposed, colsum_key=f"{source_key}{tsuffix}.colsum"
            ),
        )
        packed_sym, colsum_sym = "rvd_packed." + gname + tsuffix, "rvd_colsum." + gname + tsuffix
        low.sym_to_packed[gname + tsuffix] = pw
        hx = f"tensor<1x1x{k}xi8>" if decode else f"tensor<?x?x{k}xi8>"
        wt = pw.tensor_type
        ct = f"tensor<{n}xi32>"
        with ir.InsertionPoint(op), op.location:
            zb = _builtin(op.operands[2], zp, zp.builtin)
            if zp.dims:
                zb = _create(
                    "tensor.collapse_shape",
                    [ir.Type.parse("tensor<i8>")],
                    [zb],
                    {"reassociation": ir.ArrayAttr.get([])},
                )
            args = [_builtin(op.operands[0], x, hx), zb, _load(packed_sym, wt), _load(colsum_sym, ct)]
        _replace_with_call(op, helper, args, f"tensor<1x1x{n}xi32>" if decode else f"tensor<?x?x{n}xi32>")
        _declare_global(low.globals_, gname, packed_sym, key, wt)
        _declare_global(low.globals_, gname, colsum_sym, pw.colsum_key, ct)
        count += 1
    return count


def _lower_matmul(low: _Lowering, is_transpose) -> int:
    """MatMul(x, W global) in f32/f16/... -> a call of matmul_fn on W packed for the target's tile."""
    matmuls = []
    _walk(
        low.module.operation,
        lambda op: (
            matmuls.append(op)
            if op.name == "torch.operator" and ir.StringAttr(op.attributes["name"]).value == "onnx.MatMul"
            else None
        ),
    )
    aliases = _tied_copies(low.module, low.globals_, matmuls, is_transpose) if is_transpose else {}
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
        tile = low.tile(x.elt)
        where = str(op.location)
        if tile is None:
            low.skipped.append(f"{where}: no mmt4d tile for {x.elt} on {low.target.name}")
            continue
        if len(x.dims) != 3 or len(w.dims) != 2 or w.dims[0] % tile.k0:
            low.skipped.append(f"{where}: unsupported MatMul shapes {x.dims} x {w.dims}")
            continue
        low.tiles[x.elt] = tile
        k, n = w.dims
        decode = x.dims[:2] == (1, 1)
        helper = f"rvd_mmt4d_{'decode' if decode else 'prefill'}_{k}x{n}_{x.elt}"
        low.helper(helper, lambda: matmul_fn(helper, k, n, x.elt, tile, decode, low.opset))
        source_key = _param_key(low.globals_[gname])
        tsuffix = ".T" if transposed else ""
        key = f"{source_key}{tsuffix}.mmt4d_{tile.n0}x{tile.k0}"
        pw = low.packed.setdefault(key, PackedWeight(key, source_key, k, n, x.elt, tile.n0, tile.k0, transposed))
        packed_sym = "rvd_packed." + gname + tsuffix
        low.sym_to_packed[gname + tsuffix] = pw

        hx = f"tensor<1x1x{k}x{x.elt}>" if decode else f"tensor<?x?x{k}x{x.elt}>"
        hy = f"tensor<1x1x{n}x{x.elt}>" if decode else f"tensor<?x?x{n}x{x.elt}>"
        with ir.InsertionPoint(op), op.location:
            args = [_builtin(op.operands[0], x, hx), _load(packed_sym, pw.tensor_type)]
        _replace_with_call(op, helper, args, hy)  # drops the Transpose/conversion/load it alone used
        _declare_global(low.globals_, gname, packed_sym, key, pw.tensor_type)
        lowered += 1
    return lowered


def lower_to_mmt4d(
    entry: EntryModule, target: Target, workdir: Path, ukernels: str = "upstream", is_transpose=None
) -> LoweredModule:
    """`is_transpose(w_key, e_key, k, n)`, when given, says whether weight w (KxN) equals table e (NxK)
    transposed; such copies are dropped and lm_head reads the table (see params.is_transposed_copy)."""
    with ir.Context() as ctx:
        ctx.allow_unregistered_dialects = True
        text = entry.mlir.read_text()
        module = ir.Module.parse(text)
        globals_ = {
            ir.StringAttr(op.attributes["sym_name"]).value: op.operation
            for op in module.body.operations
            if op.operation.name == "util.global"
        }
        opset = 17
        for op in module.body.operations:
            if op.operation.name == "func.func" and "torch.onnx_meta.opset_version" in op.attributes:
                opset = ir.IntegerAttr(op.attributes["torch.onnx_meta.opset_version"]).value
                break

        low = _Lowering(module, globals_, target, ukernels, opset, text=text)
        lowered = _lower_matmul(low, is_transpose)
        q4 = _lower_q4(low)
        lowered += _lower_matmul_integer(low)
        _gathers_from_packed(low)
        _gathers_from_q4_panels(low)

        used: set[str] = set()
        _walk(
            module.operation,
            lambda op: (
                used.add(ir.FlatSymbolRefAttr(op.attributes["global"]).value) if op.name == "util.global.load" else None
            ),
        )
        plain = []
        for name, g in globals_.items():
            if name not in used:
                g.erase()  # a weight now read only in its packed form
            elif not name.startswith(("rvd_packed.", "rvd_colsum.", "rvd_q4.", "rvd_cache_")):  # cache: state
                plain.append(_param_key(g))
        if low.helpers:
            added = ir.Module.parse("\n".join(low.helpers.values()))
            for op in list(added.body.operations):
                op.detach_from_parent()
                module.body.append(op)
        module.operation.verify()
        out = workdir / "module.mmt4d.mlir"
        out.write_text(str(module))
    return LoweredModule(
        mlir=out,
        packed=tuple(low.packed.values()),
        plain_keys=tuple(plain),
        tiles=low.tiles,
        lowered=lowered,
        skipped=tuple(low.skipped),
        q4=q4,
        q4_kernel=low.q4_kernel,
    )
