"""One place for what the CLI prints: JSON documents on stdout, tables and progress on stderr/stdout."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from rich.console import Console
from rich.table import Table

# tables piped to a file or a CI log should not wrap at 80 columns
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False)


def print_json(doc) -> None:
    # plain print: no rich markup, no wrapping; exactly one document on stdout
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")


def print_table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence]) -> None:
    table = Table(title=title, title_justify="left", header_style="bold")
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*["" if v is None else str(v) for v in row])
    out.print(table)


class StageHook:
    """What a long command reports: `hook(name)` when a stage starts, `hook.progress(phase, done, total)`
    inside a stage that counts steps (the runtime build's ninja steps; done/total None while unknown)."""

    def __init__(self, stages: Sequence[str], quiet: bool, status=None):
        self.stages, self.quiet, self.status = stages, quiet, status
        self.count = 0
        self.stage = "starting"
        self._last = None

    def __call__(self, name: str) -> None:
        self.count += 1
        self.stage = name
        if self.status is not None:
            self.status.update(f"[{self.count}/{len(self.stages)}] {name}")
        elif not self.quiet:
            err.print(f"[dim]{name}...[/dim]")

    def progress(self, phase: str, done: int | None = None, total: int | None = None) -> None:
        steps = f" {done}/{total}" if done is not None and total else ""
        if self.status is not None:
            self.status.update(f"[{self.count}/{len(self.stages)}] {self.stage}: {phase}{steps}")
            return
        # a log, not a terminal: each phase once, then every tenth of the steps
        tenth = (10 * done // total) if done is not None and total else None
        if not self.quiet and (phase, tenth) != self._last:
            self._last = (phase, tenth)
            err.print(f"[dim]{phase}{steps}...[/dim]")


@contextmanager
def stage_progress(stages: Sequence[str], quiet: bool) -> Iterator[StageHook]:
    """A spinner on stderr naming the running stage (plain lines when stderr is not a terminal)."""
    if quiet or not err.is_terminal:
        yield StageHook(stages, quiet)
        return
    with err.status("starting") as status:
        yield StageHook(stages, quiet, status)


@contextmanager
def step_progress(quiet: bool) -> Iterator:
    """A progress bar on stderr for one long job with counted steps; yields progress(phase, done, total)."""
    if quiet or not err.is_terminal:
        hook = StageHook((), quiet)
        yield hook.progress
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task("starting", total=None)

        def progress(phase: str, done: int | None = None, total: int | None = None) -> None:
            bar.update(task, description=phase, completed=done or 0, total=total)

        yield progress


def human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.2f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


def human_count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(n)
