"""rvdeploy bench: prompt processing (ppP) and text generation (tgN) speed of a bundle on a board, next to the
baseline pipeline or llama.cpp (rvdeploy.peers); upper bounds from a target's published figures (estimate);
executed guest instructions under emulation (cost). Everything here returns values and prints nothing (the
table and the plot are the CLI's: rvdeploy/cli/bench.py, cli/_plot.py).

Timing comes from the bundle's own runner (rvdeploy-runner, what `run` uses) on the board, one process per
repetition, with llama-bench's meaning of the tests:
- ppP: the runner's prefill of a P-token prompt: P / its prefill seconds.
- tgN: the N decode steps that follow (N+1 new tokens: the first comes from the prefill's logits), each
  reading a KV cache of P tokens and more: N / their seconds.
Greedy, no end-of-sequence stop. Each repetition gives one tokens/s figure per test; the report is mean +-
sample standard deviation over them. What bench reports is what `run` delivers.

Where a change belongs:
- measure.py   the runner's measuring arguments, one bundle's ppP/tgN on an open board
- estimate.py  model facts from the manifest and config.json, the roofline upper bounds (--estimate)
- cost.py      executed instructions per token under the counting qemu, by difference (--cost)
- baseline.py  finding or building the baseline bundle of the same model (--compare baseline)
- report.py    BenchReport, its row labels and the ratios between pipelines
- run.py       `bench`: the whole run (checks, comparisons, which of the above, on which board)
This __init__ imports nothing, so that rvdeploy.peers can use measure and cost without importing run.
"""
