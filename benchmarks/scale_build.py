#!/usr/bin/env python3
"""Build the Llama-3.2-1B-shape model for a RISC-V target and print what the build cost.

  python benchmarks/make_llama.py llama-3.2-1b /tmp/bench/models/llama-3.2-1b   # once
  python benchmarks/scale_build.py [--model DIR] [--target spacemit-k1] [--pipeline mmt4d|baseline] [-o OUT]

Runs `python -m rvdeploy build ... --force --json` as a subprocess and reports:
  * wall time of the build (and rvdeploy's own per-stage seconds from its JSON);
  * peak RSS, two ways:
      - tree sum: this script polls /proc every 0.2 s and sums VmRSS over the build process and all of
        its descendants (pages shared between processes, e.g. the same mmapped file, count once per
        process; a peak shorter than 0.2 s can be missed);
      - largest single process: `/usr/bin/time -v`'s "Maximum resident set size" (the maximum over the
        process and its waited-for children, each on its own: not a sum);
  * the bundle size (sum of all files under OUT);
  * the inspect summary (`python -m rvdeploy inspect OUT --json` -> "summary").
Targets (printed beside the figures, not asserted): <= 10 min wall, <= 8 GB peak RSS on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WALL_TARGET_S = 600
RSS_TARGET_GB = 8.0


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def tree_rss_bytes(root: int) -> int:
    kids, total, todo = _children(), 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(kids.get(pid, []))
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            pass
    return total


class TreePoller(threading.Thread):
    def __init__(self, pid: int, interval: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak, self.stop = pid, interval, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, tree_rss_bytes(self.pid))
            self.stop.wait(self.interval)


def run_measured(cmd: list[str]) -> dict:
    """Run cmd under /usr/bin/time -v (if present) while polling its process tree's RSS."""
    gnu_time = shutil.which("time", path="/usr/bin")
    with tempfile.NamedTemporaryFile(prefix="time-", suffix=".txt", delete=False) as f:
        time_file = f.name
    full = [gnu_time, "-v", "-o", time_file, *cmd] if gnu_time else cmd
    t0 = time.perf_counter()
    proc = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    poller = TreePoller(proc.pid)
    poller.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    poller.stop.set()
    poller.join()
    max_single = None
    if gnu_time:
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", Path(time_file).read_text())
        max_single = int(m.group(1)) * 1024 if m else None
    os.unlink(time_file)
    return {
        "rc": proc.returncode,
        "stdout": stdout,
        "stderr": stderr,
        "wall_s": wall,
        "tree_peak_bytes": poller.peak,
        "max_single_bytes": max_single,
    }


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    ap.add_argument(
        "--model",
        default="/tmp/bench/models/llama-3.2-1b",
        help="model directory or .onnx (default: %(default)s, from make_llama.py llama-3.2-1b)",
    )
    ap.add_argument("--target", default="spacemit-k1")
    ap.add_argument("--pipeline", default="mmt4d", choices=["mmt4d", "baseline"])
    ap.add_argument(
        "-o", "--output", type=Path, default=None, help="bundle directory (default: /tmp/bench/out/1b-TARGET-PIPELINE)"
    )
    args = ap.parse_args()
    out = args.output or Path(f"/tmp/bench/out/1b-{args.target}-{args.pipeline}")
    if not Path(args.model).exists():
        sys.exit(f"{args.model} not found: run benchmarks/make_llama.py llama-3.2-1b {args.model}")

    cmd = [
        sys.executable,
        "-m",
        "rvdeploy",
        "build",
        "--model",
        str(args.model),
        "--target",
        args.target,
        "--pipeline",
        args.pipeline,
        "-o",
        str(out),
        "--force",
        "--json",
    ]
    print("$ " + " ".join(cmd), file=sys.stderr)
    r = run_measured(cmd)
    gb = 1e9
    single = "n/a" if r["max_single_bytes"] is None else f"{r['max_single_bytes'] / gb:.2f} GB"
    print(
        f"build: exit {r['rc']}, {r['wall_s']:.1f} s wall, peak RSS tree sum "
        f"{r['tree_peak_bytes'] / gb:.2f} GB (/proc poll 0.2 s), largest single process {single} (/usr/bin/time -v)"
    )
    ok = r["rc"] == 0
    bundle, files, doc, summary = None, {}, {}, None
    if ok:
        doc = json.loads(r["stdout"])
        bundle = Path(doc["bundle"])
        files = {str(p.relative_to(bundle)): p.stat().st_size for p in sorted(bundle.rglob("*")) if p.is_file()}
        ins = subprocess.run(
            [sys.executable, "-m", "rvdeploy", "inspect", str(bundle), "--json"], capture_output=True, text=True
        )
        summary = (
            json.loads(ins.stdout)["summary"]
            if ins.returncode == 0
            else {"error": (ins.stderr.strip().splitlines() or ["?"])[-1]}
        )

    print()
    print(f"| {args.model} -> {args.target}, pipeline {args.pipeline} | value | target |")
    print("|---|---|---|")
    print(f"| build result | {'ok' if ok else 'FAILED (exit ' + str(r['rc']) + ')'} | |")
    print(
        f"| wall time | {r['wall_s'] / 60:.2f} min | <= {WALL_TARGET_S / 60:.0f} min "
        f"{'ok' if r['wall_s'] <= WALL_TARGET_S else 'OVER'} |"
    )
    tree = r["tree_peak_bytes"] / gb
    print(
        f"| peak RSS, process-tree sum (/proc, 0.2 s) | {tree:.2f} GB | <= {RSS_TARGET_GB:.0f} GB "
        f"{'ok' if tree <= RSS_TARGET_GB else 'OVER'} |"
    )
    if r["max_single_bytes"] is not None:
        print(f"| peak RSS, largest single process (/usr/bin/time -v) | {r['max_single_bytes'] / gb:.2f} GB | |")
    if ok:
        print(f"| bundle size | {dir_bytes(bundle) / gb:.3f} GB | |")
        for name, size in files.items():
            print(f"| &nbsp; {name} | {size / 1e6:.1f} MB | |")
        for stage, secs in doc.get("stage_seconds", {}).items():
            print(f"| &nbsp; stage {stage} | {secs:.1f} s | |")
        for w in doc.get("warnings", []):
            print(f"| build warning | {w} | |")
        print()
        print("inspect summary:")
        print(json.dumps(summary, indent=1, sort_keys=True))
    else:
        print()
        print("build failed; last stderr lines:")
        for line in r["stderr"].strip().splitlines()[-15:]:
            print("  " + line)
        sys.exit(1)


if __name__ == "__main__":
    main()
