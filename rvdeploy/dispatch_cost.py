"""Where the executed instructions go: qemu_cost's per-token counts of a riscv64 bundle's runner, attributed to
each dispatch (executable export) of its module, the rest being "runtime" (the runner, IREE's VM and HAL,
libc: everything outside the dispatches' code).

Method: the counting plugin (qemu_plugin/insncount.c) with tbfile= also writes one record per executed
translated block: its address, instructions, vector instructions, executions, LMUL-weighted vector count and
first code bytes. The module's executable is the riscv64 ELF embedded in model.vmfb, the very bytes the runtime
loads; its debug info (DWARF, which iree-compile keeps by default) names the address range of every dispatch
function. IREE's embedded-ELF loader maps it at a page-aligned base, so a block inside it has the low 12 bits
of its ELF address: the base is the one that most blocks' bytes agree on, and every block attributed to the
executable must then match its code byte for byte. Per token by difference, as qemu_cost does (start-up
cancels): prefill = ((P, 1 new) - (1, 1 new)) / (P - 1), decode at depth D = ((D, N+1 new) - (D, 1 new)) / N.
"""

from __future__ import annotations

import bisect
import functools
import json
import re
import shutil
import struct
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from . import children
from .bench.measure import measuring_args
from .bundle import Bundle
from .errors import RvdeployError
from .generation import RUNNER
from .qemu_cost import KEYS, parse_counts, plugin_env, plugin_qemu
from .runtimes import BUILD_HINT

RUNTIME = "runtime"
MODULE = "model.vmfb"
EM_RISCV = 243
MATCH_BYTES = 8  # code bytes a block needs to vote for the executable's base (8: at least two instructions)


# ---- the executable: embedded ELF, its code and the dispatch functions' address ranges ------------------
@dataclass(frozen=True)
class Executable:
    text_addr: int  # ELF virtual address of the executable code
    text: bytes
    functions: tuple[tuple[int, int, str], ...]  # (low, high, name), sorted, ELF addresses
    folded: tuple[str, ...]  # dispatches whose code the linker folded into an identical one (no range of their own)


def embedded_elfs(module: bytes) -> list[bytes]:
    """The riscv64 ELF images inside a vmfb (IREE stores each executable's library as a byte buffer)."""
    out, i = [], module.find(b"\x7fELF")
    while i >= 0:
        hdr = module[i : i + 64]
        if len(hdr) == 64 and hdr[4] == 2 and hdr[5] == 1 and struct.unpack_from("<H", hdr, 18)[0] == EM_RISCV:
            (shoff,) = struct.unpack_from("<Q", hdr, 0x28)
            shentsize, shnum = struct.unpack_from("<HH", hdr, 0x3A)
            out.append(module[i : i + shoff + shentsize * shnum])  # lld writes the section headers last
        i = module.find(b"\x7fELF", i + 4)
    return out


def _sections(elf: bytes) -> dict[str, tuple[int, int, int, int]]:
    """name -> (flags, addr, offset, size)"""
    (shoff,) = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    heads = [struct.unpack_from("<IIQQQQ", elf, shoff + k * shentsize) for k in range(shnum)]
    strtab = heads[shstrndx][4]
    names = {}
    for name, _type, flags, addr, offset, size in heads:
        end = elf.index(b"\0", strtab + name)
        names[elf[strtab + name : end].decode()] = (flags, addr, offset, size)
    return names


def _dwarfdump() -> str:
    tool = shutil.which("llvm-dwarfdump-19") or shutil.which("llvm-dwarfdump")
    if tool is None:
        raise RvdeployError(
            "llvm-dwarfdump not found (it names the dispatch functions' code ranges)", hint="apt-get install llvm-19"
        )
    return tool


_SUBPROGRAM = re.compile(
    r"DW_TAG_subprogram\s+DW_AT_low_pc\s+\((0x[0-9a-f]+)\)\s+DW_AT_high_pc\s+\((0x[0-9a-f]+)\)"
    r'(?:(?!DW_TAG_).)*?DW_AT_name\s+\("([^"]+)"\)',
    re.S,
)


def read_executable(elf: bytes) -> Executable:
    sections = _sections(elf)
    if ".text" not in sections:
        raise RvdeployError("the module's executable has no .text section")
    _, text_addr, offset, size = sections[".text"]
    with tempfile.NamedTemporaryFile(suffix=".so") as f:
        f.write(elf)
        f.flush()
        proc = children.run([_dwarfdump(), "--debug-info", f.name], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RvdeployError(f"llvm-dwarfdump failed on the module's executable: {proc.stderr.strip()[:200]}")
    functions, folded = [], []
    for m in _SUBPROGRAM.finditer(proc.stdout):
        low, high, name = int(m.group(1), 16), int(m.group(2), 16), m.group(3)
        if low == 0:  # the linker's identical-code folding left this one no code: its twin's range counts it
            folded.append(name)
        else:
            functions.append((low, high, name))
    if not functions:
        raise RvdeployError(
            "the module's executable has no debug info naming its dispatches",
            hint="build without --iree-llvmcpu-debug-symbols=false",
        )
    return Executable(text_addr, elf[offset : offset + size], tuple(sorted(functions)), tuple(folded))


def bundle_executables(bundle: Bundle) -> list[Executable]:
    bundle.file(MODULE)
    entry = bundle.manifest.entry(MODULE)
    with bundle.reader(entry) as f:  # the bytes the board runs (size and sha256 checked)
        elfs = embedded_elfs(f.read())
    if not elfs:
        raise RvdeployError(f"{bundle.path}: no riscv64 executable in the module")
    return [read_executable(e) for e in elfs]


# ---- the plugin's per-block records ---------------------------------------------------------------------
@dataclass(frozen=True)
class Block:
    vaddr: int
    insns: int  # per execution
    vector: int  # per execution
    execs: int
    lmul8: int  # LMUL-weighted vector instructions over all executions, in eighths
    code: bytes  # its first instructions' bytes


def parse_blocks(text: str) -> tuple[int, list[Block]]:
    """The last process's block (the launcher execs the runner last): its whole count and its blocks."""
    start = text.rfind("process insns=")
    if start < 0:
        raise RvdeployError("the instruction-counting plugin wrote no block records")
    lines = text[start:].splitlines()
    whole = int(lines[0].split("=")[1])
    blocks = []
    for line in lines[1:]:
        vaddr, n, nv, execs, lmul8, *code = line.split()
        blocks.append(
            Block(int(vaddr, 16), int(n), int(nv), int(execs), int(lmul8), bytes.fromhex(code[0]) if code else b"")
        )
    return whole, blocks


@functools.cache
def _code_index(exe: Executable) -> dict[tuple[int, bytes], list[int]]:
    """(address within its page, code bytes there) -> ELF addresses, at every instruction alignment (2: RVC)."""
    index: dict[tuple[int, bytes], list[int]] = defaultdict(list)
    for off in range(0, len(exe.text) - MATCH_BYTES + 1, 2):
        addr = exe.text_addr + off
        index[(addr & 0xFFF, exe.text[off : off + MATCH_BYTES])].append(addr)
    return index


def locate(exe: Executable, blocks: list[Block]) -> int | None:
    """Where the runtime loaded the executable (the offset added to its ELF addresses), or None when no block
    ran its code: the base most blocks' code bytes agree on, at page granularity."""
    index = _code_index(exe)
    votes: Counter = Counter()
    for b in blocks:
        if len(b.code) >= MATCH_BYTES:
            for addr in index.get((b.vaddr & 0xFFF, b.code[:MATCH_BYTES]), ()):
                votes[b.vaddr - addr] += 1
    if not votes:
        return None
    base, _ = votes.most_common(1)[0]
    end = exe.text_addr + len(exe.text)
    for b in blocks:  # every block inside the executable's code must be its code
        off = b.vaddr - base - exe.text_addr
        if 0 <= off < len(exe.text) and exe.text[off : off + len(b.code)] != b.code[: len(exe.text) - off]:
            raise RvdeployError(
                f"the code run at {b.vaddr:#x} is not the module's (executable at {base:#x}, "
                f"ELF address {b.vaddr - base:#x} of {exe.text_addr:#x}-{end:#x})"
            )
    return base


def _lookup(functions, addr: int) -> str | None:
    k = bisect.bisect_right(functions, (addr, float("inf"))) - 1
    return functions[k][2] if k >= 0 and functions[k][0] <= addr < functions[k][1] else None


def attribute(
    executables: list[Executable], blocks: list[Block], runner_functions: list[tuple[int, int, str]]
) -> tuple[dict, dict]:
    """Counts per dispatch function (RUNTIME: all code outside them) over one run, and RUNTIME's counts by the
    runner's function (its static executable's symbols; "(other)" outside them)."""
    by_dispatch: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(KEYS, 0))
    runtime: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(KEYS, 0))
    placed = [(exe, base) for exe in executables if (base := locate(exe, blocks)) is not None]
    for b in blocks:
        name = next((n for exe, base in placed if (n := _lookup(exe.functions, b.vaddr - base))), None)
        rows = [by_dispatch[name or RUNTIME]]
        if name is None:
            rows.append(runtime[_lookup(runner_functions, b.vaddr) or "(other)"])
        for row in rows:
            row["instructions"] += b.insns * b.execs
            row["vector_instructions"] += b.vector * b.execs
            row["vector_lmul_weighted"] += b.lmul8 / 8
    return dict(by_dispatch), dict(runtime)


def elf_functions(elf: bytes) -> list[tuple[int, int, str]]:
    """(low, high, name) of the sized FUNC symbols of an ELF64's .symtab (empty when stripped)."""
    sections = _sections(elf)
    if ".symtab" not in sections or ".strtab" not in sections:
        return []
    _, _, off, size = sections[".symtab"]
    strtab = sections[".strtab"][2]
    out = []
    for k in range(off, off + size, 24):
        name, info, _other, _shndx, value, sz = struct.unpack_from("<IBBHQQ", elf, k)
        if info & 0xF == 2 and sz:  # STT_FUNC
            out.append((value, value + sz, elf[strtab + name : elf.index(b"\0", strtab + name)].decode()))
    return sorted(out)


def runner_functions(bundle: Bundle) -> list[tuple[int, int, str]]:
    """The runner's functions at their run-time addresses (it is a static, position-dependent executable)."""
    elf = bundle.file(f"runtime/{RUNNER}").read_bytes()
    if elf[:4] != b"\x7fELF" or struct.unpack_from("<H", elf, 16)[0] != 2:  # ET_EXEC: no load offset
        return []
    return elf_functions(elf)


# ---- runs of the bundle's runner ------------------------------------------------------------------------
def count_run(
    bundle: Bundle, board, executables: list[Executable], runner: list[tuple[int, int, str]], prompt: int, new: int
) -> dict:
    """One run of the runner (greedy, no EOS stop, one thread) under the plugin qemu: the whole counts
    (as bench --cost has them) and the same split by dispatch."""
    with tempfile.TemporaryDirectory(prefix="rvdeploy-dispatch-cost-") as tmp:
        outfile, tbfile = Path(tmp) / "counts.txt", Path(tmp) / "blocks.txt"
        args = measuring_args(bundle.manifest, prompt, new)
        board.run_tool(bundle, RUNNER, args, qemu=str(plugin_qemu()), env=plugin_env(outfile, tbfile), counted=True)
        whole = parse_counts(outfile.read_text())
        whole_insns, blocks = parse_blocks(tbfile.read_text())
    by_dispatch, runtime = attribute(executables, blocks, runner)
    for key in KEYS:  # the same run counted twice (inline and per block): they agree exactly
        summed = sum(row[key] for row in by_dispatch.values())
        if summed != whole[key] or whole_insns != whole["instructions"]:
            raise RvdeployError(
                f"the per-block records sum to {summed} {key.replace('_', ' ')}, the run counted {whole[key]}"
            )
    return {"whole": whole, "by_dispatch": by_dispatch, "runtime": runtime}


def _rows_difference(big: dict, small: dict, per: int) -> dict:
    zero = dict.fromkeys(KEYS, 0)
    rows = {n: {k: (big.get(n, zero)[k] - small.get(n, zero)[k]) / per for k in KEYS} for n in set(big) | set(small)}
    return {n: r for n, r in rows.items() if any(r.values())}


def _difference(big: dict, small: dict, per: int) -> dict:
    """Per-token rows (dispatch -> counts), the runtime's by function, and totals of big - small over `per`."""
    total = {k: (big["whole"][k] - small["whole"][k]) / per for k in KEYS}
    return {
        "total": total,
        "rows": _rows_difference(big["by_dispatch"], small["by_dispatch"], per),
        "runtime_functions": _rows_difference(big["runtime"], small["runtime"], per),
    }


# ---- kinds ------------------------------------------------------------------------------------------------
_TYPE = r"(?:[iuf]\d+|bf16)"
_SHAPE_OR_TYPE = re.compile(rf"^(?:[0-9D]+x)*(?:[0-9D]+|{_TYPE})(?:x{_TYPE})*$")  # 4xD, f32, i64xf32, 4xDxf32


def kind_of(name: str, contractions: dict[str, dict]) -> str:
    """mmt4d / attention / softmax / elementwise / pack ...: from dispatches.json's row, else IREE's name
    (`ENTRY$async_dispatch_N_<op words>_<shapes>_<types>`). A batch_matmul over the dynamic length (D) is
    attention (scores or weighted sum): every weight contraction has static sizes."""
    if name == RUNTIME:
        return RUNTIME
    if name.startswith("__builtin_"):
        return "builtin"
    row = contractions.get(name)
    m = re.search(r"dispatch_\d+_?(.*)$", name)
    words = [w for w in (m.group(1).split("_") if m else [name]) if w]
    op = []
    for w in words:
        if _SHAPE_OR_TYPE.match(w):
            break
        op.append(w)
    kind = "_".join(op) or (name if not m else "dispatch")
    if row is not None and row.get("mmt4d"):
        return "mmt4d"
    if kind.endswith("matmul") and any("D" in w for w in words[len(op) :]):
        return "attention"
    return kind


def _contractions(bundle: Bundle) -> dict[str, dict]:
    path = bundle.path / "dispatches.json"
    if not path.is_file():
        return {}
    return {row["dispatch"]: row for row in json.loads(path.read_text()).get("contractions", [])}


# ---- the measurement ----------------------------------------------------------------------------------------
def _check(bundle: Bundle, board, prompt_tokens: int, gen_tokens: int, depths: list[int]) -> None:
    from .boards.qemu import QemuBoard

    m = bundle.manifest
    if m.target.arch != "riscv64":
        raise RvdeployError(f"{bundle.path} is a {m.target.name} bundle: dispatch costs are counted on riscv64 bundles")
    if m.runtime.kind != "bundled":
        raise RvdeployError(f"{bundle.path} has no riscv64 IREE runtime to run under qemu", hint=BUILD_HINT)
    if not isinstance(board, QemuBoard):
        raise RvdeployError("dispatch costs are counted under the plugin qemu on this machine: --board qemu")
    if prompt_tokens < 2:
        raise RvdeployError("-p must be 2 or more (per prompt token = difference of P and 1 token prompts)")
    if gen_tokens < 1:
        raise RvdeployError("-n must be 1 or more")
    limit = m.max_context
    for d in [prompt_tokens, *depths]:
        if d < 1 or (limit and d + gen_tokens + 1 > limit):
            raise RvdeployError(f"depth {d} + {gen_tokens + 1} new tokens does not fit the context ({limit})")


def measure(
    bundle: Bundle, board, prompt_tokens: int = 64, gen_tokens: int = 32, depths: list[int] | None = None, progress=None
) -> dict:
    """Per-token counts by dispatch: prefill at P and decode at each depth (default: P), as bench --cost
    measures them (same runs, same differences)."""
    depths = list(dict.fromkeys(depths or [prompt_tokens]))
    _check(bundle, board, prompt_tokens, gen_tokens, depths)
    executables = bundle_executables(bundle)
    runner = runner_functions(bundle)
    contractions = _contractions(bundle)
    runs: dict[tuple[int, int], dict] = {}

    def run(prompt: int, new: int) -> dict:
        if (prompt, new) not in runs:
            if progress:
                progress(f"run: {prompt}-token prompt, {new} new token(s)")
            runs[prompt, new] = count_run(bundle, board, executables, runner, prompt, new)
        return runs[prompt, new]

    phases = {
        "prefill": {"prompt_tokens": prompt_tokens, **_difference(run(prompt_tokens, 1), run(1, 1), prompt_tokens - 1)}
    }
    for d in depths:
        phases[f"decode@{d}"] = {
            "depth": d,
            "generated_tokens": gen_tokens,
            **_difference(run(d, gen_tokens + 1), run(d, 1), gen_tokens),
        }
    for phase in phases.values():
        total = phase["total"]["instructions"] or 1
        phase["rows"] = sorted(
            (
                {"dispatch": n, "kind": kind_of(n, contractions), **r, "share": r["instructions"] / total}
                for n, r in phase.pop("rows").items()
            ),
            key=lambda r: -r["instructions"],
        )
        phase["by_kind"] = _by_kind(phase["rows"], total)
        phase["runtime_functions"] = sorted(
            ({"function": n, **r, "share": r["instructions"] / total} for n, r in phase["runtime_functions"].items()),
            key=lambda r: -r["instructions"],
        )
    return {
        "bundle": str(bundle.path),
        "board": board.name,
        "phases": phases,
        "folded": sorted({n for exe in executables for n in exe.folded}),
        "runs": {f"prompt{p}_new{n}": r["whole"] for (p, n), r in runs.items()},
    }


def _by_kind(rows: list[dict], total: float) -> list[dict]:
    kinds: dict[str, dict] = defaultdict(lambda: dict.fromkeys(KEYS, 0.0))
    for r in rows:
        for k in KEYS:
            kinds[r["kind"]][k] += r[k]
    return sorted(
        ({"kind": k, **v, "share": v["instructions"] / total} for k, v in kinds.items()),
        key=lambda r: -r["instructions"],
    )
