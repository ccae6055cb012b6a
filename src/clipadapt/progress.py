"""Progress bars (rich) that the library can show without knowing about the CLI."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


def progress_enabled() -> bool:
    return os.environ.get("CLIPADAPT_PROGRESS", "1") != "0" and sys.stderr.isatty()


@contextmanager
def progress_bar(description: str, total: int | None, unit: str = "img") -> Iterator:
    """Yield ``advance(n)``; draws a bar on a terminal, stays silent otherwise."""
    if not progress_enabled():
        yield lambda n=1: None
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn(unit), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)
