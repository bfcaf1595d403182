"""Stage: read what IREE actually generated, from `--iree-hal-dump-executable-files-to=DIR`.

The question this answers is "which contraction ran on which kernel, and what got repacked":

* `configured_module_<exe>.mlir` (one per executable, after CPU configuration) holds the linalg ops with
  their tensor types: contractions (mmt4d, matmul, batch_matmul, contraction-shaped linalg.generic ...)
  and linalg.pack / linalg.unpack.
* `*.codegen.ll` (all executables linked) holds, in each dispatch function, the
  `call i32 @iree_uk_mmt4d(..., M0, N0, K0, flags, ...)` when the mmt4d microkernel is used.
* `*.optimized.ll` shows which ukernel tile functions were inlined into which dispatch function.
  `*.linked.ll` lists every tile function of the architecture bitcode, used or not: never read here.
* `*.s` (riscv64) gives RVV instruction counts.

Everything is parsed from text with regular expressions (no MLIR context): a 1B-parameter model dumps a
few hundred executables and this must stay a fraction of the compile time.

Caveat on sums: IREE deduplicates executables, so identical dispatches (the same op in every layer, or in
`generate` and `decode`) appear once. Byte totals here are per distinct executable, not per invocation.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .errors import RvdeployError
from .ukernels import KERNEL_PREFIX

# ----------------------------------------------------------------------------------------------------
# Rows

DYN = -1
Dims = tuple[int, ...]  # a tensor's dims, DYN where dynamic; () for a scalar


def format_dims(dims: Dims) -> str:
    """(1, DYN, 16) -> "1x?x16" (how the report's text shows a shape)."""
    return "x".join("?" if d == DYN else str(d) for d in dims)


def parse_dims(shape: str) -> Dims:
    return tuple(DYN if d == "?" else int(d) for d in shape.split("x")) if shape else ()


def parse_shapes(text: str) -> tuple[tuple[Dims, ...], Dims]:
    """ContractionRow.shapes' text "A * B -> C" -> ((A, B), C): what dispatches.json stores, read back."""
    ins, _, out = text.partition(" -> ")
    return tuple(parse_dims(s) for s in ins.split(" * ")), parse_dims(out)


@dataclass(frozen=True)
class ContractionRow:
    entry: str  # "prefill" | "decode" | "generate" | "initializer" (from the executable name)
    dispatch: str  # export name, e.g. decode$async_dispatch_90_batch_mmt4d_1x1x8x64x1x32x1_f32
    op: str  # linalg.mmt4d | linalg.batch_mmt4d | linalg.matmul | linalg.batch_matmul | linalg.generic | ...
    operands: tuple[Dims, ...]  # the shaped input operands' dims (LHS, RHS, ...)
    result: Dims  # the output's dims
    types: str  # e.g. "f32*f32->f32"
    mmt4d: bool
    ukernel: bool  # an iree_uk_mmt4d call exists in this dispatch's function in *.codegen.ll (mmt4d ops only)
    tile: str | None  # "M0xN0xK0" from the ukernel call, else from the mmt4d operand shapes
    macs: int | None  # multiply-adds when all loop dims are static (mmt4d: padded tiles included)
    # which mmt4d microkernel library the dispatch's ukernel call runs, from the tile functions inlined into
    # it in *.optimized.ll: "project" (rvdeploy_uk_mmt4d_tile_*, ukernels/), "upstream" (IREE's
    # iree_uk_mmt4d_tile_*), or None (no ukernel, or no tile function found)
    library: str | None = None
    kernel: str | None = None  # the tile function(s) inlined into the dispatch, comma-separated

    @property
    def shapes(self) -> str:
        """ "LHSSHAPE * RHSSHAPE -> OUTSHAPE", ? for dynamic dims: for display, and as dispatches.json stores
        the operand and result dims (the form every reader of the file accepts)."""
        return " * ".join(format_dims(d) for d in self.operands) + " -> " + format_dims(self.result)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("result")
        return {
            ("shapes" if k == "operands" else k): (self.shapes if k == "operands" else v) for k, v in d.items()
        }  # the order of the fields kept

    @classmethod
    def json_fields(cls) -> list[tuple[str, str]]:
        """(key, annotated type) of the dict to_dict writes."""
        return [
            ("shapes", "str") if f.name == "operands" else (f.name, f.type) for f in fields(cls) if f.name != "result"
        ]

    @classmethod
    def from_dict(cls, d: dict) -> "ContractionRow":
        if "shapes" not in d:
            raise TypeError("ContractionRow.shapes is missing")
        operands, result = parse_shapes(d["shapes"])
        return cls(**{k: v for k, v in d.items() if k != "shapes"}, operands=operands, result=result)


@dataclass(frozen=True)
class PackRow:
    entry: str
    dispatch: str
    op: str  # linalg.pack | linalg.unpack
    source_shape: str
    dest_shape: str
    elt: str
    bytes: int | None  # bytes read (the source), None when a dim is dynamic
    operand: str  # "weight" | "kv-cache" | "activation"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def json_fields(cls) -> list[tuple[str, str]]:
        return [(f.name, f.type) for f in fields(cls)]

    @classmethod
    def from_dict(cls, d: dict) -> "PackRow":
        return cls(**d)


@dataclass(frozen=True)
class DispatchReport:
    contractions: tuple[ContractionRow, ...]
    packs: tuple[PackRow, ...]
    rvv: dict[str, int] = field(default_factory=dict)  # RVV mnemonic -> count in the .s; {} if not riscv
    # ukernel tile function (as inlined in *.optimized.ll) -> number of dispatch functions it was inlined into
    ukernel_tiles: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "contractions": [r.to_dict() for r in self.contractions],
            "packs": [r.to_dict() for r in self.packs],
            "rvv": dict(self.rvv),
            "ukernel_tiles": dict(self.ukernel_tiles),
        }

    @classmethod
    def from_dict(cls, d) -> "DispatchReport":
        return cls(
            contractions=tuple(ContractionRow.from_dict(r) for r in d.get("contractions", ())),
            packs=tuple(PackRow.from_dict(r) for r in d.get("packs", ())),
            rvv={str(k): int(v) for k, v in (d.get("rvv") or {}).items()},
            ukernel_tiles={str(k): int(v) for k, v in (d.get("ukernel_tiles") or {}).items()},
        )

    @classmethod
    def parse(cls, text: str, where: str) -> "DispatchReport":
        """dispatches.json's text -> the report; one RvdeployError naming WHERE when it is not one rvdeploy
        wrote (every row field of its annotated type, so that readers never meet a wrong one)."""
        try:
            d = json.loads(text)
            if not isinstance(d, dict):
                raise TypeError("not an object")
            for key, row_type in (("contractions", ContractionRow), ("packs", PackRow)):
                for row in d.get(key, ()):
                    _check_row(row_type, row)
            return cls.from_dict(d)
        except (ValueError, TypeError, AttributeError, RecursionError) as exc:
            raise RvdeployError(
                f"{where}: not a dispatch report rvdeploy wrote ({str(exc)[:80]})", hint="rebuild the bundle"
            ) from None


_ROW_TYPES = {"str": (str,), "bool": (bool,), "str | None": (str, type(None)), "int | None": (int, type(None))}
_SHAPE = r"(?:(?:[0-9]+|\?)(?:x(?:[0-9]+|\?))*)?"  # _Type.shape: "1x?x16", "" for a scalar
# fields the analysis parses further, in the form _analyze writes them
_ROW_FORMATS = {
    "shapes": re.compile(rf"{_SHAPE}(?: \* {_SHAPE})* -> {_SHAPE}"),
    "source_shape": re.compile(_SHAPE),
    "dest_shape": re.compile(_SHAPE),
}


def _check_row(row_type, row) -> None:
    if not isinstance(row, dict):
        raise TypeError(f"a {row_type.__name__} is not an object")
    for name, typ in row_type.json_fields():
        if name not in row:
            continue
        value = row[name]
        if not isinstance(value, _ROW_TYPES[typ]) or (typ == "int | None" and isinstance(value, bool)):
            raise TypeError(f"{row_type.__name__}.{name} is {value!r}")
        form = _ROW_FORMATS.get(name)
        if form is not None and not form.fullmatch(value):
            raise ValueError(f"{row_type.__name__}.{name} is {value[:40]!r}")


# ----------------------------------------------------------------------------------------------------
# MLIR text helpers

_MMT4D_OPS = ("linalg.mmt4d", "linalg.batch_mmt4d")
# Named contraction ops and their default indexing maps (loop dims, then one tuple per operand).
_NAMED = {
    "linalg.matmul": ("m n k", ("m k", "k n", "m n")),
    "linalg.batch_matmul": ("b m n k", ("b m k", "b k n", "b m n")),
    "linalg.batch_reduce_matmul": ("b m n k", ("b m k", "b k n", "m n")),
    "linalg.matvec": ("m k", ("m k", "k", "m")),
    "linalg.vecmat": ("n k", ("k", "k n", "n")),
    "linalg.batch_matvec": ("b m k", ("b m k", "b k", "b m")),
    "linalg.batch_vecmat": ("b n k", ("b k", "b k n", "b n")),
    "linalg.dot": ("k", ("k", "k", "")),
    "linalg.mmt4d": ("m1 n1 k1 m0 n0 k0", ("m1 k1 m0 k0", "n1 k1 n0 k0", "m1 n1 m0 n0")),
    "linalg.batch_mmt4d": ("b m1 n1 k1 m0 n0 k0", ("b m1 k1 m0 k0", "b n1 k1 n0 k0", "b m1 n1 m0 n0")),
}
# Contractions IREE may carry as other ops: reported (no MAC count), never mmt4d.
_OTHER_CONTRACTIONS = ("linalg.contract", "iree_linalg_ext.attention", "iree_linalg_ext.online_attention")

_OP_RE = re.compile(r"^\s*(?:%[\w#:,\s%]+=\s*)?((?:linalg|tensor|iree_linalg_ext)\.[a-z_0-9]+)\b")
_FUNC_RE = re.compile(r"\bfunc\.func\s+(?:public\s+|private\s+)?@\"?([^\"(\s]+)\"?\s*\(")
_EXPORT_RE = re.compile(r"hal\.executable\.export\s+(?:public\s+)?@\"?([^\"\s(]+)\"?")
_MAP_ALIAS_RE = re.compile(r"^#(\w+)\s*=\s*affine_map<(.*)>\s*$", re.M)
_SHAPED_START = re.compile(r"\b(tensor|memref)<")
_DIMS_RE = re.compile(r"^((?:(?:\?|\d+)x)*)(.+)$")


def _match_close(text: str, start: int, open_c: str, close_c: str) -> int:
    """Index of the bracket closing text[start] (== open_c); '->' never closes '<'."""
    depth = 0
    for i in range(start, len(text)):
        c = text[i]
        if c == open_c:
            depth += 1
        elif c == close_c and not (close_c == ">" and i > 0 and text[i - 1] == "-"):
            depth -= 1
            if depth == 0:
                return i
    return len(text)


def _split_top(text: str, sep: str = ",") -> list[str]:
    parts, depth, cur = [], 0, []
    for i, c in enumerate(text):
        if c in "<([{":
            depth += 1
        elif c in ">)]}" and not (c == ">" and i > 0 and text[i - 1] == "-"):
            depth -= 1
        if c == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    if cur or parts:
        parts.append("".join(cur))
    return [p.strip() for p in parts]


@dataclass(frozen=True)
class _Type:
    dims: tuple[int, ...] | None  # None: not a shaped type (a scalar operand)
    elt: str

    @property
    def static(self) -> bool:
        return self.dims is not None and DYN not in self.dims

    @property
    def shape(self) -> str:
        return format_dims(self.dims or ())


def _parse_type(text: str) -> _Type:
    text = text.strip()
    m = _SHAPED_START.match(text)
    if not m:
        return _Type(None, text)
    lt = m.end() - 1
    inner = text[lt + 1 : _match_close(text, lt, "<", ">")]
    head = _split_top(inner)[0]  # drop an encoding / memref layout
    dm = _DIMS_RE.match(head)
    dims = tuple(DYN if d == "?" else int(d) for d in dm.group(1).split("x")[:-1]) if dm.group(1) else ()
    return _Type(dims, dm.group(2).strip())


def _shaped_types(text: str) -> list[_Type]:
    out, pos = [], 0
    while m := _SHAPED_START.search(text, pos):
        end = _match_close(text, m.end() - 1, "<", ">")
        out.append(_parse_type(text[m.start() : end + 1]))
        pos = end + 1
    return out


def _operand_types(line: str, keyword: str) -> list[_Type] | None:
    """Types of `ins(...)` / `outs(...)` on an op line, in operand order (scalars included)."""
    m = re.search(r"\b" + keyword + r"\(", line)
    if not m:
        return None
    start = m.end() - 1
    seg = line[start + 1 : _match_close(line, start, "(", ")")]
    parts = _split_top(seg, ":")
    if len(parts) < 2:
        return []
    return [_parse_type(t) for t in _split_top(":".join(parts[1:]))]


def _parse_map(text: str) -> tuple[list[str], list[str]] | None:
    """'(d0, d1)[s0] -> (d0, d1 + s0)' -> (['d0','d1'], ['d0','d1 + s0'])"""
    m = re.match(r"\s*\(([^)]*)\)\s*(?:\[[^\]]*\])?\s*->\s*\((.*)\)\s*$", text)
    if not m:
        return None
    dims = [d.strip() for d in m.group(1).split(",") if d.strip()]
    return dims, [r for r in _split_top(m.group(2)) if r]


def _indexing_maps(line: str, aliases: dict[str, str]) -> list[tuple[list[str], list[str]]] | None:
    m = re.search(r"indexing_maps\s*=\s*\[", line)
    if not m:
        return None
    start = m.end() - 1
    seg = line[start + 1 : _match_close(line, start, "[", "]")]
    maps = []
    for item in _split_top(seg):
        if item.startswith("affine_map<"):
            body = item[len("affine_map<") : _match_close(item, len("affine_map"), "<", ">")]
        elif item.startswith("#") and item[1:] in aliases:
            body = aliases[item[1:]]
        else:
            return None
        parsed = _parse_map(body)
        if parsed is None:
            return None
        maps.append(parsed)
    return maps


def _loop_sizes(maps, types: list[_Type]) -> list[int] | None:
    """Static size of every loop dim, bound from operand shapes through simple (dK) map results."""
    if not maps or len(maps) != len(types):
        return None
    loop_dims = maps[0][0]
    sizes: dict[str, int] = {}
    for (dims, results), t in zip(maps, types):
        if t.dims is None:
            continue
        for expr, size in zip(results, t.dims):
            if re.fullmatch(r"d\d+", expr) and size != DYN:
                sizes.setdefault(expr, size)
    if any(d not in sizes for d in loop_dims):
        return None
    return [sizes[d] for d in loop_dims]


def _named_maps(op: str):
    loops, operands = _NAMED[op]
    names = loops.split()
    idx = {n: f"d{i}" for i, n in enumerate(names)}
    dims = [idx[n] for n in names]
    return [(dims, [idx[n] for n in spec.split()]) for spec in operands]


_CAST = re.compile(r"^\s*(%[\w#]+)\s*=\s*arith\.(?:extf|extsi|extui|truncf|sitofp|uitofp|bitcast)\s+(%[\w#]+)")
_MUL = re.compile(r"^\s*(%[\w#]+)\s*=\s*arith\.mul[fi]\s+(%[\w#]+)\s*,\s*(%[\w#]+)")
_ADD = re.compile(r"^\s*(%[\w#]+)\s*=\s*arith\.add[fi]\s+(%[\w#]+)\s*,\s*(%[\w#]+)")
_FMA = re.compile(r"^\s*(%[\w#]+)\s*=\s*math\.fma\s+(%[\w#]+)\s*,\s*(%[\w#]+)\s*,\s*(%[\w#]+)")


def _is_contraction_body(body: list[str], n_ins: int) -> bool:
    """mul of two different inputs (through casts), accumulated by an add into the output argument."""
    if not body:
        return False
    m = re.search(r"\^bb\d+\((.*)\)\s*:", body[0])
    if not m:
        return False
    args = [a.split(":")[0].strip() for a in _split_top(m.group(1))]
    if len(args) < 3 or n_ins < 2:
        return False
    root = {a: i for i, a in enumerate(args)}
    out_args = {i for i in range(n_ins, len(args))}
    products: set[str] = set()
    for line in body[1:]:
        if (c := _CAST.match(line)) and c.group(2) in root:
            root[c.group(1)] = root[c.group(2)]
        elif mm := _MUL.match(line):
            a, b = root.get(mm.group(2)), root.get(mm.group(3))
            if a is not None and b is not None and a != b and a < n_ins and b < n_ins:
                products.add(mm.group(1))
            elif (a is not None and a < n_ins and mm.group(3) in products) or (
                b is not None and b < n_ins and mm.group(2) in products
            ):
                products.add(mm.group(1))  # x * (q * scale): a weight dequantized inside the contraction
        elif ad := _ADD.match(line):
            x, y = ad.group(2), ad.group(3)
            if (x in products and root.get(y) in out_args) or (y in products and root.get(x) in out_args):
                return True
        elif f := _FMA.match(line):
            a, b, acc = (root.get(f.group(i)) for i in (2, 3, 4))
            if a is not None and b is not None and a != b and a < n_ins and b < n_ins and acc in out_args:
                return True
    return False


# ----------------------------------------------------------------------------------------------------
# Names


def entry_of(name: str) -> str:
    """`decode$async_dispatch_3_...` -> decode; `_initializer_2_dispatch_0_...` -> initializer."""
    if name.startswith("__builtin"):
        return "builtin"
    m = re.match(r"(.+?)(?:\$async)?_dispatch_\d+(?:_|$)", name)
    func = m.group(1) if m else name
    if re.fullmatch(r"_initializer_\d+", func) or func.startswith("_initializer"):
        return "initializer"
    return func


# ----------------------------------------------------------------------------------------------------
# Per executable file


@dataclass
class _RawContraction:
    func: str
    op: str
    ins: list[_Type]
    outs: list[_Type]
    macs: int | None


@dataclass
class _RawPack:
    func: str
    op: str
    src: _Type
    dst: _Type


def _scan_mlir(text: str, aliases: dict[str, str]) -> tuple[list[str], list[_RawContraction], list[_RawPack]]:
    exports = _EXPORT_RE.findall(text)
    contractions: list[_RawContraction] = []
    packs: list[_RawPack] = []
    lines = text.splitlines()
    func = exports[0] if exports else ""
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if "func.func" in line and (fm := _FUNC_RE.search(line)):
            func = fm.group(1)
            continue
        if "linalg" not in line and "tensor.pack" not in line and "tensor.unpack" not in line:
            continue
        om = _OP_RE.match(line)
        if not om:
            continue
        op = om.group(1)
        if op in ("linalg.pack", "linalg.unpack", "tensor.pack", "tensor.unpack"):
            types = _shaped_types(line)
            if len(types) >= 2:
                packs.append(_RawPack(func, op.replace("tensor.", "linalg."), types[-2], types[-1]))
        elif op in _NAMED or op in _OTHER_CONTRACTIONS:
            ins = _operand_types(line, "ins") or []
            outs = _operand_types(line, "outs") or []
            macs = None
            if op in _NAMED:
                maps = _indexing_maps(line, aliases) or _named_maps(op)
                sizes = _loop_sizes(maps, ins + outs)
                macs = math.prod(sizes) if sizes is not None else None
            contractions.append(_RawContraction(func, op, ins, outs, macs))
        elif op == "linalg.generic":
            # header on this line; region until the braces balance
            depth = line.count("{") - line.count("}")
            body: list[str] = []
            while depth > 0 and i < len(lines):
                body.append(lines[i])
                depth += lines[i].count("{") - lines[i].count("}")
                i += 1
            iters = re.search(r"iterator_types\s*=\s*\[([^\]]*)\]", line)
            if not iters or "reduction" not in iters.group(1):
                continue
            ins = _operand_types(line, "ins") or []
            outs = _operand_types(line, "outs") or []
            if not _is_contraction_body(body, len(ins)):
                continue
            sizes = _loop_sizes(_indexing_maps(line, aliases), ins + outs)
            contractions.append(_RawContraction(func, op, ins, outs, math.prod(sizes) if sizes else None))
    return exports, contractions, packs


# ----------------------------------------------------------------------------------------------------
# LLVM IR / assembly

_DEFINE_RE = re.compile(r'^define\b[^@]*@"?([^"(]+)"?\(')
_UK_CALL_RE = re.compile(r"\bcall\s+[^@]*@iree_uk_mmt4d\((.*)\)")


def _int_arg(arg: str) -> int | None:
    m = re.fullmatch(r"\s*i\d+\s+(?:noundef\s+|signext\s+|zeroext\s+)*(-?\d+)\s*", arg)
    return int(m.group(1)) if m else None


def _ukernel_calls(codegen_ll: list[Path]) -> dict[str, list[str | None]]:
    """Dispatch function -> tiles ('M0xN0xK0', None if not constant) of its iree_uk_mmt4d calls."""
    calls: dict[str, list[str | None]] = defaultdict(list)
    for path in codegen_ll:
        func = None
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("define"):
                    m = _DEFINE_RE.match(line)
                    func = m.group(1) if m else None
                elif func and "@iree_uk_mmt4d(" in line and (m := _UK_CALL_RE.search(line)):
                    args = _split_top(m.group(1))
                    tile = None
                    if len(args) >= 16:
                        m0, n0, k0 = (_int_arg(a) for a in args[12:15])
                        if None not in (m0, n0, k0):
                            tile = f"{m0}x{n0}x{k0}"
                    calls[func].append(tile)
                elif line.startswith("}"):
                    func = None
    return calls


_MD_RE = re.compile(r"^!(\d+) = (?:distinct )?!\{(.*)\}\s*$")
_TILE_NAME_RE = re.compile(r"(?:iree|rvdeploy)_uk_\w*tile\w*")
_SCOPE_REF_RE = re.compile(r"(?:!alias\.scope|!noalias|metadata) !(\d+)")


def _inlined_tiles(optimized_ll: list[Path]) -> dict[str, int]:
    """Ukernel tile function -> number of functions using it: inlined (seen through the noalias scope
    domains the inliner names after it, or the `<name>.exit` blocks it leaves) or still called."""
    result: Counter = Counter()
    for names in _tiles_by_function(optimized_ll).values():
        result.update(names)
    return dict(sorted(result.items()))


def _library_of(tiles: set[str]) -> str | None:
    if any(t.startswith(KERNEL_PREFIX) for t in tiles):
        return "project"
    return "upstream" if tiles else None


def _tiles_by_function(optimized_ll: list[Path]) -> dict[str, set[str]]:
    """Dispatch function -> ukernel tile functions inlined into (or called by) it. The ukernel entry
    (`iree_uk_mmt4d`, left defined when it is also inlined) and tile functions themselves are skipped."""
    result: dict[str, set[str]] = {}
    for path in optimized_ll:
        md: dict[int, list[str]] = {}
        bodies: list[tuple[str, set[int], set[str]]] = []
        func, refs, direct = None, set(), set()
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("!"):
                    m = _MD_RE.match(line)
                    if m:
                        md[int(m.group(1))] = _split_top(m.group(2))
                elif line.startswith("define"):
                    m = _DEFINE_RE.match(line)
                    func, refs, direct = (m.group(1) if m else None), set(), set()
                elif func is not None:
                    if line.startswith("}"):
                        bodies.append((func, refs, direct))
                        func = None
                        continue
                    if "!alias.scope" in line or "!noalias" in line or "noalias.scope.decl" in line:
                        refs.update(int(x) for x in _SCOPE_REF_RE.findall(line))
                    if "_uk_" in line:  # calls, or labels left by inlining (`<tile fn>.exit`)
                        direct.update(_TILE_NAME_RE.findall(line))
        # domains named after a tile function; scopes point at their domain; lists hold scopes
        domain: dict[int, str] = {}
        for k, elems in md.items():
            if elems and elems[0] == f"!{k}" and elems[-1].startswith('!"'):
                name = elems[-1][2:-1]
                if ":" not in name and _TILE_NAME_RE.fullmatch(name):
                    domain[k] = name

        def names_of(k: int, depth: int = 0) -> set[str]:
            if k in domain:
                return {domain[k]}
            if depth > 2 or k not in md:
                return set()
            out: set[str] = set()
            for e in md[k]:
                if re.fullmatch(r"!\d+", e) and int(e[1:]) != k:
                    out |= names_of(int(e[1:]), depth + 1)
            return out

        cache: dict[int, set[str]] = {}
        for fname, frefs, fdirect in bodies:
            if _TILE_NAME_RE.fullmatch(fname) or fname.startswith(("iree_uk_", KERNEL_PREFIX)):
                continue  # a ukernel's own (non-inlined) definition
            names = set(fdirect)
            for r in frefs:
                if r not in cache:
                    cache[r] = names_of(r)
                names |= cache[r]
            if names:
                result.setdefault(fname, set()).update(names)
    return result


_ASM_INSN_RE = re.compile(r"^\s+(v[a-z0-9]+(?:\.[a-z0-9]+)*)\b")


def _rvv_counts(asm: list[Path]) -> dict[str, int]:
    counts: Counter = Counter()
    for path in asm:
        if "riscv" not in path.name:
            continue
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line[:2] in ("\tv", " v") or line.lstrip().startswith("v"):
                    m = _ASM_INSN_RE.match(line)
                    if m:
                        counts[m.group(1)] += 1
    return dict(sorted(counts.items()))


# ----------------------------------------------------------------------------------------------------
# Operand classification


def _is_weight(dims: tuple[int, ...], weight_shapes: set[tuple[int, int]] | None) -> bool:
    if not weight_shapes:
        return False
    d = list(dims)
    while len(d) > 2 and d[0] == 1:  # a unit batch dim
        d.pop(0)
    if len(d) != 2 or DYN in d:
        return False
    return (d[0], d[1]) in weight_shapes or (d[1], d[0]) in weight_shapes


def _kv_match(dims: tuple[int, ...], kv: tuple[int, ...]) -> bool:
    """Same shape as a KV-cache tensor up to unit dims and transposition, the dynamic (sequence) dim
    ignored, and a head count that may be a multiple of the KV heads (GQA broadcast to all heads).
    The last kv dim (head_dim) must match exactly."""
    s = [d for d in dims if d != 1]
    k = [d for d in kv if d != 1]
    if len(s) != len(k) or not k or len(s) > 6:
        return False
    head_pos = len(k) - 1 if k[-1] != DYN else None
    for perm in itertools.permutations(s):
        ok = True
        for j, (sd, kd) in enumerate(zip(perm, k)):
            if kd == DYN:
                continue
            if sd == DYN or (sd != kd if j == head_pos else sd % kd != 0):
                ok = False
                break
        if ok:
            return True
    return False


def _classify(entry: str, plain: tuple[int, ...], kv_shapes, weight_shapes) -> str:
    if entry == "initializer" or _is_weight(plain, weight_shapes):
        return "weight"
    if kv_shapes and any(_kv_match(plain, tuple(kv)) for kv in kv_shapes):
        return "kv-cache"
    return "activation"


_ELT_BYTES = {"index": 8, "i1": 1}


def _elt_bytes(elt: str) -> int | None:
    if elt in _ELT_BYTES:
        return _ELT_BYTES[elt]
    m = re.fullmatch(r"[a-z]*?(\d+)(?:[A-Z]\w*)?", elt)  # f32, bf16, i8, f8E4M3FN
    if not m:
        return None
    return max(1, int(m.group(1)) // 8)


# ----------------------------------------------------------------------------------------------------
# Public entry points


def _mlir_files(dump: Path) -> list[Path]:
    files = sorted(dump.glob("configured_module_*.mlir"))
    if not files:  # older dumps: the per-executable sources, not the benchmark wrappers
        files = [p for p in sorted(dump.glob("module_*.mlir")) if not p.name.endswith("_benchmark.mlir")]
    return files


def analyze_dump(
    dump_dir: Path, kv_shapes: set[tuple[int, ...]] | None = None, weight_shapes: set[tuple[int, int]] | None = None
) -> DispatchReport:
    dump = Path(dump_dir)
    if not dump.is_dir():
        raise FileNotFoundError(f"no executable dump at {dump}")
    uk_calls = _ukernel_calls(sorted(dump.glob("*.codegen.ll")))
    optimized = sorted(dump.glob("*.optimized.ll"))
    tiles_by_func = _tiles_by_function(optimized)
    contractions: list[ContractionRow] = []
    packs: list[PackRow] = []
    for path in _mlir_files(dump):
        text = path.read_text(encoding="utf-8", errors="replace")
        aliases = dict(_MAP_ALIAS_RE.findall(text)) if "= affine_map<" in text else {}
        exports, raw_c, raw_p = _scan_mlir(text, aliases)
        per_func_mmt4d: Counter = Counter()
        for rc in raw_c:
            name = rc.func if rc.func in exports or not exports else exports[0]
            entry = entry_of(name)
            is_mmt4d = rc.op in _MMT4D_OPS
            tile = None
            ukernel = False
            if is_mmt4d:
                calls = uk_calls.get(name, [])
                ukernel = bool(calls)
                nth = per_func_mmt4d[name]
                per_func_mmt4d[name] += 1
                if calls:
                    tile = calls[nth] if nth < len(calls) else calls[0]
                if tile is None and len(rc.ins) >= 2 and rc.ins[0].dims and rc.ins[1].dims:
                    lhs, rhs = rc.ins[0].dims, rc.ins[1].dims
                    if len(lhs) >= 4 and len(rhs) >= 4:
                        tile = "x".join("?" if d == DYN else str(d) for d in (lhs[-2], rhs[-2], lhs[-1]))
            shaped_ins = [t for t in rc.ins if t.dims is not None] or rc.ins
            out = rc.outs[0] if rc.outs else _Type((), "?")
            kernels = tiles_by_func.get(name, set()) if ukernel else set()
            contractions.append(
                ContractionRow(
                    entry=entry,
                    dispatch=name,
                    op=rc.op,
                    operands=tuple(t.dims or () for t in shaped_ins),
                    result=out.dims or (),
                    types="*".join(t.elt for t in shaped_ins) + "->" + out.elt,
                    mmt4d=is_mmt4d,
                    ukernel=ukernel,
                    tile=tile,
                    macs=rc.macs,
                    library=_library_of(kernels),
                    kernel=", ".join(sorted(kernels)) or None,
                )
            )
        for rp in raw_p:
            name = rp.func if rp.func in exports or not exports else exports[0]
            entry = entry_of(name)
            plain = rp.src if rp.op == "linalg.pack" else rp.dst
            eb = _elt_bytes(rp.src.elt)
            nbytes = math.prod(rp.src.dims) * eb if rp.src.static and eb is not None else None
            packs.append(
                PackRow(
                    entry=entry,
                    dispatch=name,
                    op=rp.op,
                    source_shape=rp.src.shape,
                    dest_shape=rp.dst.shape,
                    elt=rp.src.elt,
                    bytes=nbytes,
                    operand=_classify(entry, plain.dims or (), kv_shapes, weight_shapes),
                )
            )
    return DispatchReport(
        contractions=tuple(contractions),
        packs=tuple(packs),
        rvv=_rvv_counts(sorted(dump.glob("*.s"))),
        ukernel_tiles=_inlined_tiles(optimized),
    )


def weight_like(row: ContractionRow) -> bool:
    """A contraction with a static weight-shaped operand (no batch, or batch 1; both logical dims > 1).

    Either operand counts: with a dynamic M IREE may swap them and put the weight on the LHS.
    Attention (batch = heads, or dynamic) and rank-1 products (rope's 8x1 * 1x1) are not weight-like."""
    if len(row.operands) < 2:
        return False
    batched = row.op in ("linalg.batch_mmt4d", "linalg.batch_matmul", "linalg.batch_matvec")
    for dims in row.operands[:2]:
        d = list(dims)
        if DYN in d:
            continue
        if batched:
            if not d or d[0] != 1:
                continue
            d = d[1:]
        elif row.op == "linalg.generic" and len(d) == 3 and d[0] == 1:
            d = d[1:]
        if row.mmt4d and len(d) == 4:  # X1 x K1 x X0 x K0
            rows, k = d[0] * d[2], d[1] * d[3]
        elif not row.mmt4d and len(d) == 2:
            rows, k = d
        else:
            continue
        if rows > 1 and k > 1:
            return True
    return False


def summarize(report: DispatchReport) -> dict:
    """Per entry: weight-like contractions on mmt4d+ukernel vs not, tiles, pack/unpack bytes by operand.

    Byte totals are over distinct executables (IREE deduplicates identical dispatches, e.g. across
    layers), so `decode_step_pack_bytes` is what one decode step's distinct pack dispatches read once
    each, not multiplied by how often the step invokes them; packs with a dynamic dim are counted in
    `unknown_bytes` instead (and, when one dim is dynamic, in `bytes_per_dynamic_unit`)."""
    entries: dict[str, dict] = {}

    def slot(entry: str) -> dict:
        return entries.setdefault(
            entry,
            {
                "contractions": 0,
                "weight_like": {"mmt4d_ukernel": 0, "not_mmt4d_ukernel": 0, "not_by_op": {}},
                "tiles": {},
                "macs_static": 0,
                "packs": {"count": 0, "bytes": {}, "unknown_bytes": {}, "bytes_per_dynamic_unit": {}},
            },
        )

    for r in report.contractions:
        s = slot(r.entry)
        s["contractions"] += 1
        if r.macs:
            s["macs_static"] += r.macs
        if weight_like(r):
            wl = s["weight_like"]
            if r.mmt4d and r.ukernel:
                wl["mmt4d_ukernel"] += 1
            else:
                wl["not_mmt4d_ukernel"] += 1
                key = r.op + (" (codegen)" if r.mmt4d else "")
                wl["not_by_op"][key] = wl["not_by_op"].get(key, 0) + 1
        if r.tile:
            kind = f"{r.tile} ({'ukernel' if r.ukernel else 'codegen'})"
            s["tiles"][kind] = s["tiles"].get(kind, 0) + 1
        if r.mmt4d and r.ukernel:  # which microkernel library the mmt4d dispatches run
            libs = s.setdefault("ukernel_libraries", {})
            libs[r.library or "unknown"] = libs.get(r.library or "unknown", 0) + 1
    for p in report.packs:
        s = slot(p.entry)
        pk = s["packs"]
        pk["count"] += 1
        if p.bytes is None:
            pk["unknown_bytes"][p.operand] = pk["unknown_bytes"].get(p.operand, 0) + 1
            dims = parse_dims(p.source_shape)
            eb = _elt_bytes(p.elt)
            if dims.count(DYN) == 1 and eb is not None:  # e.g. a KV cache: bytes per cached position
                per = math.prod(d for d in dims if d != DYN) * eb
                pk["bytes_per_dynamic_unit"][p.operand] = pk["bytes_per_dynamic_unit"].get(p.operand, 0) + per
        else:
            pk["bytes"][p.operand] = pk["bytes"].get(p.operand, 0) + p.bytes
    decode = entries.get("decode", {}).get("packs", {"bytes": {}, "unknown_bytes": {}, "bytes_per_dynamic_unit": {}})
    families: Counter = Counter()
    for mnem, n in report.rvv.items():
        families[mnem.split(".")[0]] += n
    return {
        "entries": dict(sorted(entries.items())),
        "decode_step_pack_bytes": dict(decode["bytes"]),
        "decode_step_packs_dynamic": dict(decode["unknown_bytes"]),
        # of those with one dynamic dim (the KV length): bytes per unit of it, e.g. per cached token
        "decode_step_pack_bytes_per_dynamic_unit": dict(decode["bytes_per_dynamic_unit"]),
        "ukernel_tiles": dict(report.ukernel_tiles),
        "rvv": {
            "total": sum(report.rvv.values()),
            **{
                k: families[k]
                for k in (
                    "vsetvli",
                    "vsetivli",
                    "vle32",
                    "vse32",
                    "vfmacc",
                    "vfmadd",
                    "vfmul",
                    "vfredosum",
                    "vfredusum",
                )
                if families.get(k)
            },
        },
    }
