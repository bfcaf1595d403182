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


@contextmanager
def stage_progress(stages: Sequence[str], quiet: bool) -> Iterator:
    """A spinner on stderr naming the running stage; yields the on_stage hook."""
    if quiet or not err.is_terminal:
        def hook(name: str) -> None:
            if not quiet:
                err.print(f"[dim]{name}...[/dim]")
        yield hook
        return
    with err.status("starting") as status:
        count = {"n": 0}

        def hook(name: str) -> None:
            count["n"] += 1
            status.update(f"[{count['n']}/{len(stages)}] {name}")
        yield hook
