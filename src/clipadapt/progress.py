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


class _TrainingBar:
    """Two bars, epochs and steps, with the live training loss and accuracy; silent when disabled."""

    def __init__(self, progress: Progress | None, epochs: int, steps_per_epoch: int) -> None:
        self.progress, self.epochs, self.steps_per_epoch = progress, epochs, steps_per_epoch
        if progress is not None:
            self.epoch_task = progress.add_task("epochs", total=epochs, info="")
            self.step_task = progress.add_task("steps", total=steps_per_epoch, info="")

    @property
    def visible(self) -> bool:
        return self.progress is not None

    def start(self, epoch: int) -> None:
        if self.progress is not None:
            self.progress.update(self.epoch_task, completed=epoch)

    def step(self, loss: float, accuracy: float) -> None:
        if self.progress is not None:
            self.progress.update(self.step_task, advance=1, info=f"loss {loss:.4f}  acc {accuracy:.3f}")

    def end_epoch(self, epoch: int, row: dict) -> None:
        if self.progress is not None:
            self.progress.update(self.epoch_task, completed=epoch + 1,
                                 info=f"val loss {row['val_loss']:.4f}  val acc {row['val_acc']:.3f}")
            self.progress.reset(self.step_task, total=self.steps_per_epoch, info="")


@contextmanager
def training_progress(epochs: int, steps_per_epoch: int, enabled: bool = True) -> Iterator[_TrainingBar]:
    if not (enabled and progress_enabled()):
        yield _TrainingBar(None, epochs, steps_per_epoch)
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn(), TextColumn("{task.fields[info]}")]
    with Progress(*columns, console=console, transient=True) as progress:
        yield _TrainingBar(progress, epochs, steps_per_epoch)
