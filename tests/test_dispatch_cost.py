"""Per-dispatch cost (rvdeploy.dispatch_cost, benchmarks/dispatch_cost.py): the plugin's per-block records sum
to its whole counts, blocks are located in the module's executable by their code, and on the demo's riscv64
bundle the dispatches plus the runtime add up to bench --cost's figures, with the mmt4d dispatches found."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import DEMO, ROOT, system_part_missing

from rvdeploy import dispatch_cost, qemu_cost
from rvdeploy.bench.cost import measure_cost
from rvdeploy.bench.measure import measuring_args
from rvdeploy.boards.qemu import QemuBoard
from rvdeploy.dispatch_cost import KEYS, RUNTIME, Block, Executable
from rvdeploy.errors import RvdeployError
from rvdeploy.generation import RUNNER

CPU = "rv64,v=true,vlen=256,elen=64,vext_spec=v1.0"


@pytest.fixture
def plugin_qemu():
    try:
        return qemu_cost.plugin_qemu()
    except RvdeployError as exc:
        system_part_missing(str(exc))


def test_block_records_sum_to_the_whole_counts(plugin_qemu):
    """tbfile= mode: the loop's block runs once per iteration, and the records add up to the inline counts."""
    exe = qemu_cost.build_countloop()
    with tempfile.TemporaryDirectory() as tmp:
        out, tb = Path(tmp) / "counts.txt", Path(tmp) / "blocks.txt"
        env = {**os.environ, "QEMU_CPU": CPU, "QEMU_PLUGIN": f"{qemu_cost.plugin_library()},outfile={out},tbfile={tb}"}
        subprocess.run([str(plugin_qemu), str(exe), "1234", "m4"], env=env, check=True)
        whole = qemu_cost.parse_counts(out.read_text())
        insns, blocks = dispatch_cost.parse_blocks(tb.read_text())
    assert insns == whole["instructions"] == sum(b.insns * b.execs for b in blocks)
    assert sum(b.vector * b.execs for b in blocks) == whole["vector_instructions"]
    assert sum(b.lmul8 for b in blocks) / 8 == whole["vector_lmul_weighted"]
    loop = [b for b in blocks if b.vector == 1 and b.execs >= 1233]  # vadd.vv; addi; bnez (after its first pass)
    assert loop and loop[0].insns == 3 and loop[0].lmul8 == 4 * 8 * loop[0].execs


def _exe() -> Executable:
    text = bytes((i * 37 + (i >> 8)) & 0xFF for i in range(8192))
    return Executable(
        0x1A2C,
        text,
        ((0x1A2C, 0x2A2C, "f$async_dispatch_0_mmt4d_1x2_f32"), (0x2A2C, 0x3A2C, "f$async_dispatch_1_softmax_4xD_f32")),
        (),
    )


def _block(exe: Executable, base: int, addr: int, execs: int = 1, code: bytes | None = None) -> Block:
    off = addr - exe.text_addr
    return Block(base + addr, 4, 1, execs, 8 * execs, exe.text[off : off + 16] if code is None else code)


def test_blocks_are_located_by_their_code():
    exe, base = _exe(), 0x7F00_1234_5000
    elsewhere = Block(0x10000, 7, 0, 3, 0, bytes(16))  # runtime code: no match in the executable
    blocks = [_block(exe, base, a, execs=a % 5 + 1) for a in range(0x1A2C, 0x3A2C, 0x100)] + [elsewhere]
    assert dispatch_cost.locate(exe, blocks) == base
    by_dispatch, runtime = dispatch_cost.attribute([exe], blocks, [(0x10000, 0x10100, "iree_vm_dispatch")])
    assert by_dispatch[RUNTIME]["instructions"] == 21 and runtime == {"iree_vm_dispatch": by_dispatch[RUNTIME]}
    first = sum(4 * b.execs for b in blocks if base + 0x1A2C <= b.vaddr < base + 0x2A2C)
    assert by_dispatch["f$async_dispatch_0_mmt4d_1x2_f32"]["instructions"] == first > 0
    assert sum(r["instructions"] for r in by_dispatch.values()) == sum(b.insns * b.execs for b in blocks)
    assert dispatch_cost.locate(exe, [elsewhere]) is None
    altered = _block(exe, base, 0x2000, code=bytes(16))  # inside the executable, other bytes
    with pytest.raises(RvdeployError, match="is not the module's"):
        dispatch_cost.locate(exe, blocks + [altered])


def test_kinds_from_names_and_dispatches_json():
    kind = dispatch_cost.kind_of
    assert kind("decode$async_dispatch_22_softmax_4xDxf32_generic", {}) == "softmax"
    assert kind("decode$async_dispatch_21_batch_matmul_4x1xDx16_f32", {}) == "attention"
    assert kind("decode$async_dispatch_5_batch_matmul_1x8x1x1_f32", {}) == "batch_matmul"
    assert kind("prefill$async_dispatch_14_pack_f32", {}) == "pack"
    assert kind("prefill$async_dispatch_46_unpack_elementwise_Dx192_f32_pack", {}) == "unpack_elementwise"
    assert (
        kind("x$async_dispatch_9_matmul_like_Dx64_f32", {"x$async_dispatch_9_matmul_like_Dx64_f32": {"mmt4d": True}})
        == "mmt4d"
    )
    assert kind(RUNTIME, {}) == RUNTIME


def test_host_bundle_is_refused(built):
    with pytest.raises(RvdeployError, match="counted on riscv64 bundles"):
        dispatch_cost.measure(built(str(DEMO)), QemuBoard(), 8, 4)


@pytest.mark.slow
def test_demo_dispatches_add_up_to_bench_cost(built, riscv_runtime, plugin_qemu):
    bundle = built(str(DEMO), "rv64gcv-vlen256")
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "dispatch_cost.py"),
            str(bundle.path),
            "-p",
            "8",
            "-n",
            "4",
            "--depth",
            "8",
            "40",
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    phases = got["phases"]
    contractions = json.loads((bundle.path / "dispatches.json").read_text())["contractions"]
    vocab = bundle.manifest.model.graph.vocab_size
    assert set(phases) == {"prefill", "decode@8", "decode@40"}
    for name, phase in phases.items():
        entry = "prefill" if name == "prefill" else "decode"
        for k in KEYS:  # the dispatches plus the runtime are the whole count, and so is the runtime's split
            assert sum(r[k] for r in phase["rows"]) == pytest.approx(phase["total"][k], rel=1e-9, abs=1e-6)
        runtime = next(r for r in phase["rows"] if r["dispatch"] == RUNTIME)
        assert sum(r["instructions"] for r in phase["runtime_functions"]) == pytest.approx(runtime["instructions"])
        assert 0 < runtime["share"] < 1
        # only this phase's entry point runs: (P, 1 new) and (1, 1 new) differ in prefill, N decode steps after
        assert all(
            r["dispatch"].startswith(entry + "$") for r in phase["rows"] if r["kind"] not in (RUNTIME, "builtin")
        ), [r["dispatch"] for r in phase["rows"]]
        # every mmt4d dispatch of this entry point (dispatches.json) is found, runs RVV code mostly at LMUL > 1;
        # but prefill's lm_head (N = vocab) runs for the last position only: the same work at P tokens as at 1
        rows = {r["dispatch"]: r for r in phase["rows"]}
        mmt4d = {
            c["dispatch"]: _weight_n(c["shapes"])
            for c in contractions
            if c["mmt4d"] and c["entry"] == entry and c["dispatch"] not in got["folded"]
        }  # a folded one is counted under its identical twin
        lm_head = [d for d, n in mmt4d.items() if n == vocab]
        assert len(lm_head) == 1, mmt4d
        if entry == "prefill":
            assert lm_head[0] not in rows, rows.get(lm_head[0])  # no cost per prompt token
            del mmt4d[lm_head[0]]
        assert mmt4d and all(rows[d]["kind"] == "mmt4d" and rows[d]["instructions"] > 0 for d in mmt4d), mmt4d
        assert all(rows[d]["vector_lmul_weighted"] >= 2 * rows[d]["vector_instructions"] for d in mmt4d)
    # the weight contractions do not depend on the context; attention grows with it
    d8, d40 = ({r["dispatch"]: r for r in phases[k]["rows"]} for k in ("decode@8", "decode@40"))
    for d, r in d8.items():
        if r["kind"] == "mmt4d":
            assert d40[d]["instructions"] == pytest.approx(r["instructions"], rel=1e-6)
    attention = {
        depth: sum(r["instructions"] for r in rows.values() if r["kind"] == "attention")
        for depth, rows in ((8, d8), (40, d40))
    }
    growth = phases["decode@40"]["total"]["instructions"] - phases["decode@8"]["total"]["instructions"]
    assert attention[40] > attention[8] and growth > 0
    # what grows is the attention block (products, mask, softmax), not the weights or the runtime
    block = {
        depth: sum(r["instructions"] for r in rows.values() if r["kind"] in ("attention", "softmax", "elementwise"))
        for depth, rows in ((8, d8), (40, d40))
    }
    assert block[40] - block[8] > 0.5 * growth
    # the totals are bench --cost's figures: other runs of the same prompts, which repeat exactly
    cost = measure_cost(bundle, QemuBoard(), 8, 4)
    for ours, theirs in (
        (phases["prefill"]["total"], cost["per_prompt_token"]),
        (phases["decode@8"]["total"], cost["per_generated_token"]),
    ):
        for k in KEYS:
            assert ours[k] == pytest.approx(theirs[k], rel=1e-12), k


@pytest.mark.slow
def test_a_counted_run_repeats_exactly(built, riscv_runtime, plugin_qemu):
    """bench --cost's per-token figures are differences of whole runs, so a run's counts must repeat: a few
    hundred instructions of noise per run is 0.1 % of a demo prompt token at -p 8 (the runner once formatted
    its timings with printf's %f and let IREE's threads race at start-up: see runner.c)."""
    bundle = built(str(DEMO), "rv64gcv-vlen256")
    args = measuring_args(bundle.manifest, 8, 3)
    counts = [QemuBoard().count_tool(bundle, RUNNER, args)[0] for _ in range(5)]
    assert all(c == counts[0] for c in counts), counts


def _weight_n(shapes: str) -> int:
    """N of an mmt4d row's packed weight (N1xK1xN0xK0, the second operand in dispatches.json's shapes)."""
    n1, _, n0, _ = shapes.split("*")[1].split("->")[0].strip().split("x")
    return int(n1) * int(n0)


@pytest.mark.slow
def test_decode_at_depth_without_the_prefill_counts_as_with_it(built, riscv_runtime, plugin_qemu):
    """benchmarks/decode_depth.py starts the runner as if D-1 tokens were cached (--cached_tokens): its decode
    steps at depth D cost what they cost after a real D-token prefill (what the 1B figures at depth 256 rest
    on), and the cost grows with D."""
    bundle = built(str(DEMO), "rv64gcv-vlen256")
    assert bundle.manifest.kv_cache  # the module keeps its cache: the flag's precondition
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "decode_depth.py"), str(bundle.path)]
        + ["--depth", "8", "40", "-n", "2", "--check", "--json"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["rows"]
    cached, real = rows["rvdeploy"], rows["rvdeploy, real prefill (check)"]
    for d in ("8", "40"):
        # other tokens, cache contents and the heap a D-token prefill leaves: the sampler's argmax branches and
        # glibc malloc's free lists differ (up to ~3K instructions a step seen, by where the bundle lies: 0.3 % of
        # the demo's step, whose dispatches are only ~25K of its ~970K, and 0.003 % of the 1B's)
        assert cached[d]["instructions"] == pytest.approx(real[d]["instructions"], abs=5e3)
        assert cached[d]["vector_instructions"] == pytest.approx(real[d]["vector_instructions"], rel=1e-6)
        assert cached[d]["vector_lmul_weighted"] == pytest.approx(real[d]["vector_lmul_weighted"], rel=1e-6)
    assert cached["40"]["instructions"] > cached["8"]["instructions"]
    # the flag is for modules that keep their cache, one prompt token at a time
    args = measuring_args(bundle.manifest, 3, 1) + ["--cached_tokens=8"]
    with pytest.raises(RvdeployError, match="one-token prompt"):
        QemuBoard().count_tool(bundle, RUNNER, args)
