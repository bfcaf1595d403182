"""Executed instructions per multiply-add of the mmt4d microkernels, ours (--ukernels project) vs IREE's
(--ukernels upstream), on Llama-shaped problems, at VLEN 128 / 256 / 512.

Method: static analysis of the code IREE actually generates. For each (library, VLEN) one small module
with linalg.mmt4d ops of the tiles rvdeploy uses (decode 1xN0x1 with K = 2048 and 8192, prefill M0xN0x1 with
K = 2048 and the library's M0 from tiles.toml, each with 4 column tiles) is compiled by iree-compile with the library linked as in a real build;
in the dumped `.s` each dispatch function's hot loop (the innermost loop holding the vector multiply-adds)
is found, and

    per MAC (steady state) = instructions in the loop / (vector FMAs in the loop x VL)

with VL = min(N0, VLMAX at the loop's vsetvli LMUL). The per-shape figures add, once per tile, every other
instruction of the dispatch function (an upper bound on per-tile overhead, since not all paths run):
    per MAC at K = (loop instructions x iterations + other instructions) / (K x M0 x N0).
No instruction is counted at run time (qemu-user here has no TCG plugins).

    python3 benchmarks/ukernel_cost.py [--vlen 256 ...] [--elt f32|i8] [--json]

--elt i8: the s8 x s8 -> s32 tiles of int8 models (int8 operands, int32 accumulators).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iree.compiler.tools.binaries import find_tool  # noqa: E402

from rvdeploy import ukernels  # noqa: E402
from rvdeploy.layout import Tile, tile_for  # noqa: E402
from rvdeploy.pipeline import compile_flags  # noqa: E402
from rvdeploy.targets import get_target  # noqa: E402

N1 = 4  # column tiles per problem
SHAPES = [("decode", 1, 2048), ("decode", 1, 8192), ("prefill", None, 2048)]  # None: the tile's prefill M0
_FMA = re.compile(r"^(vf?w?macc|vf?w?madd|vfmacc|vfmadd|vwmacc)")
_INSN = re.compile(r"^\s+([a-z][a-z0-9.]*)\b(.*)$")
_LABEL = re.compile(r"^(\S+):\s*(#.*)?$")
_VSET = re.compile(r"vset[i]?vli\s+[^,]+,\s*[^,]+,\s*e(\d+),\s*m(f?\d)")


def _shapes(tile: Tile) -> list[tuple[str, int, int]]:
    return [(phase, m0 or tile.m0, k) for phase, m0, k in SHAPES]


def _module(tile: Tile, elt: str = "f32") -> str:
    acc = "i32" if elt == "i8" else elt
    n0 = tile.n0
    funcs = []
    for phase, m0, k in _shapes(tile):
        lhs = f"tensor<1x{k}x{m0}x1x{elt}>"
        rhs = f"tensor<{N1}x{k}x{n0}x1x{elt}>"
        out = f"tensor<1x{N1}x{m0}x{n0}x{acc}>"
        funcs.append(f"""func.func @{phase}_k{k}(%a: {lhs}, %b: {rhs}, %c: {out}) -> {out} {{
  %r = linalg.mmt4d ins(%a, %b : {lhs}, {rhs}) outs(%c : {out}) -> {out}
  return %r : {out}
}}""")
    return "\n".join(funcs) + "\n"


def _functions(asm: str) -> dict[str, list[str]]:
    """dispatch function name -> its lines (labels and instructions), from `name:` to .Lfunc_end."""
    funcs: dict[str, list[str]] = {}
    cur = None
    for line in asm.splitlines():
        m = _LABEL.match(line)
        if m and "_dispatch_" in m.group(1) and not m.group(1).startswith((".", "iree_hal")):
            cur = m.group(1)
            funcs[cur] = []
            continue
        if cur is None:
            continue
        if line.startswith(".Lfunc_end"):
            cur = None
            continue
        if _LABEL.match(line) or (_INSN.match(line) and not line.strip().startswith(".")):
            funcs[cur].append(line)
    return funcs


def _analyze(lines: list[str], vlen: int, n0: int) -> dict | None:
    labels = {(_LABEL.match(ln).group(1)): i for i, ln in enumerate(lines) if _LABEL.match(ln)}
    insns = [i for i, ln in enumerate(lines) if not _LABEL.match(ln)]
    loops = []
    for i in insns:
        mnem, rest = _INSN.match(lines[i]).groups()
        if not (mnem.startswith("b") or mnem == "j"):
            continue
        target = rest.split(",")[-1].strip()
        if target in labels and labels[target] < i:
            loops.append((labels[target], i))
    best = None
    for start, end in loops:
        body = [lines[j] for j in range(start, end + 1) if not _LABEL.match(lines[j])]
        mnems = [_INSN.match(b).group(1) for b in body]
        fmas = sum(1 for m in mnems if _FMA.match(m))
        if not fmas:
            continue
        if any(s > start and e < end for s, e in loops):  # not innermost
            continue
        vset = None
        for j in range(end, -1, -1):
            if m := _VSET.search(lines[j]):
                vset = m
                break
        if vset is None:
            continue
        lmul = int(vset.group(2)) if not vset.group(2).startswith("f") else 1
        vl = min(n0, vlen * lmul // int(vset.group(1)))
        cand = {
            "loop_insns": len(body),
            "fmas": fmas,
            "lmul": lmul,
            "vl": vl,
            "macs_per_iter": fmas * vl,
            "other_insns": len(insns) - len(body),
        }
        if best is None or cand["macs_per_iter"] > best["macs_per_iter"]:
            best = cand
    return best


def measure(vlen: int, library: str, elt: str = "f32") -> list[dict]:
    target = get_target(f"rv64gcv-vlen{vlen}")
    tile = tile_for(target, elt, library)
    choice = ukernels.choose(target, library)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "m.mlir"
        src.write_text(_module(tile, elt))
        dump = Path(tmp) / "dump"
        flags = [f for f in compile_flags(target, "mmt4d") if f != "--iree-input-type=onnx"] + choice.compile_flags()
        proc = subprocess.run(
            [
                find_tool("iree-compile"),
                str(src),
                *flags,
                f"--iree-hal-dump-executable-files-to={dump}",
                "-o",
                str(Path(tmp) / "m.vmfb"),
            ],
            capture_output=True,
            text=True,
        )
        if proc.returncode:
            raise SystemExit(f"iree-compile failed: {proc.stderr[-800:]}")
        asm = "\n".join(p.read_text() for p in dump.glob("*.s"))
    funcs = _functions(asm)
    rows = []
    for phase, m0, k in _shapes(tile):
        name = next((f for f in funcs if f.startswith(f"{phase}_k{k}_dispatch")), None)
        a = _analyze(funcs[name], vlen, tile.n0) if name else None
        if a is None:
            rows.append(
                {
                    "vlen": vlen,
                    "library": library,
                    "phase": phase,
                    "tile": f"{m0}x{tile.n0}x1",
                    "k": k,
                    "error": "no vector FMA loop found",
                }
            )
            continue
        chunks = -(-tile.n0 // a["vl"]) if a["vl"] else 1
        iters = k * m0 * tile.n0 / a["macs_per_iter"]
        steady = a["loop_insns"] / a["macs_per_iter"]
        with_overhead = (a["loop_insns"] * iters + a["other_insns"]) / (k * m0 * tile.n0)
        rows.append(
            {
                "vlen": vlen,
                "library": library,
                "phase": phase,
                "tile": f"{m0}x{tile.n0}x1",
                "k": k,
                "loop_insns": a["loop_insns"],
                "fmas_per_iter": a["fmas"],
                "lmul": a["lmul"],
                "macs_per_iter": a["macs_per_iter"],
                "column_chunks": chunks,
                "insns_per_mac_loop": round(steady, 5),
                "insns_per_mac": round(with_overhead, 5),
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vlen", type=int, action="append", choices=[128, 256, 512])
    ap.add_argument("--elt", choices=["f32", "i8"], default="f32")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    for vlen in args.vlen or [128, 256, 512]:
        for lib in ("upstream", "project"):
            rows += measure(vlen, lib, args.elt)
    up = {(r["vlen"], r["phase"], r["k"]): r for r in rows if r["library"] == "upstream" and "error" not in r}
    for r in rows:
        u = up.get((r["vlen"], r["phase"], r["k"]))
        if "error" not in r and u:
            r["ratio_vs_upstream"] = round(r["insns_per_mac"] / u["insns_per_mac"], 3)
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    head = (
        f"{'VLEN':>4} {'library':8} {'phase':7} {'tile':9} {'K':>5} {'loop':>4} {'FMAs':>4} {'LMUL':>4} "
        f"{'MAC/it':>6} {'ins/MAC loop':>12} {'ins/MAC':>8} {'vs upstream':>11}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        if "error" in r:
            print(f"{r['vlen']:>4} {r['library']:8} {r['phase']:7} {r['tile']:9} {r['k']:>5}  {r['error']}")
            continue
        print(
            f"{r['vlen']:>4} {r['library']:8} {r['phase']:7} {r['tile']:9} {r['k']:>5} {r['loop_insns']:>4} "
            f"{r['fmas_per_iter']:>4} {r['lmul']:>4} {r['macs_per_iter']:>6} {r['insns_per_mac_loop']:>12.4f} "
            f"{r['insns_per_mac']:>8.4f} {r.get('ratio_vs_upstream', ''):>11}"
        )


if __name__ == "__main__":
    main()
