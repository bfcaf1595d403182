"""bench --plot: the report's tokens/s as a bar chart (matplotlib: the `bench` extra)."""

from __future__ import annotations

from pathlib import Path

from ..atomic import file_into_place
from ..bench.report import BenchReport
from ..bundle import outputs
from ..errors import RvdeployError


def plot_path(path: Path | str, force: bool = False) -> Path:
    """Where --plot writes, checked before anything is measured: a .png file name (matplotlib would add the
    suffix to any other name and write elsewhere), not a directory, an existing plot only with --force."""
    if Path(path).suffix.lower() != ".png":
        raise RvdeployError(f"--plot {path}: give a file name ending in .png")
    return outputs.file(path, force, outputs.PLOT, flag="--plot")


def plot(report: BenchReport, path: Path, force: bool = False) -> Path:
    """A bar chart of tokens/s per test and pipeline, with stddev error bars (matplotlib: the `bench` extra),
    written beside PATH and renamed into place."""
    path = plot_path(path, force)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RvdeployError("--plot needs matplotlib", hint='pip install "rvdeploy[bench]"') from None
    if not report.results:
        raise RvdeployError("--plot needs measurements (not --estimate or --cost alone)")
    tests = list(dict.fromkeys(r.test for r in report.results))
    pipes = list(dict.fromkeys(r.pipeline for r in report.results))
    by = {(r.pipeline, r.test): r for r in report.results}
    fig, axes = plt.subplots(1, len(tests), figsize=(4.2 * len(tests), 3.8), squeeze=False)
    colors = ["#2a7ab9", "#b0b0b0", "#e08a2c", "#5aa85a", "#9467bd", "#c44e52"]
    for ax, test in zip(axes[0], tests):
        vals = [by[(p, test)].tokens_per_s if (p, test) in by else 0 for p in pipes]
        errs = [by[(p, test)].stddev if (p, test) in by else 0 for p in pipes]
        bars = ax.bar(pipes, vals, yerr=errs, capsize=6, color=[colors[i % len(colors)] for i in range(len(pipes))])
        ax.tick_params(axis="x", labelrotation=20 if len(pipes) > 2 else 0, labelsize=8)
        for bar, v, e in zip(bars, vals, errs):  # the value above its error bar
            ax.annotate(
                f"{v:,.0f}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height() + e),
                ha="center",
                va="bottom",
                fontsize=9,
                xytext=(0, 3),
                textcoords="offset points",
            )
        vs = ", ".join(f"x{r:.2f} vs {other}" for other, r in report.ratios.get(test, {}).items())
        ax.set_title(test + (f"  ({vs})" if vs else ""), fontsize=10)
        ax.set_ylabel("tokens/s")
        ax.margins(y=0.15)
    label = report.bundles[0]
    fig.suptitle(f"{label['model']} on {report.board}, {report.threads} thread(s), {report.reps} reps")
    fig.tight_layout()
    try:
        with file_into_place(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
    return path
