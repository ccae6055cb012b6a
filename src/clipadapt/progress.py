"""Progress that the library can show without knowing about the CLI.

On a terminal: rich bars. When stderr is not a terminal (CI logs, ``make demo > log``): plain lines, but only for
work that has already taken a few seconds, then every 10% or 20 seconds, whichever comes first, so a four-minute
pretraining shows it is alive and a 0.1-second encoding prints nothing. ``CLIPADAPT_PROGRESS=0`` silences both,
``CLIPADAPT_PROGRESS=lines`` forces lines.
"""

from __future__ import annotations

import os
import sys
import time
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
QUIET_SECONDS = 5.0  # lines start once a task has run this long
LINE_SECONDS = 20.0  # then at least this often
LINE_PERCENT = 10  # and at every step of this many percent


_SILENCED = [0]  # progress_disabled() blocks in force


@contextmanager
def progress_disabled() -> Iterator[None]:
    """No progress display inside the block (``progress=False`` of the Python API)."""
    _SILENCED[0] += 1
    try:
        yield
    finally:
        _SILENCED[0] -= 1


def progress_mode() -> str:
    """``off``, ``bars`` (a terminal or a notebook) or ``lines`` (a log file or pipe)."""
    if _SILENCED[0]:
        return "off"
    setting = os.environ.get("CLIPADAPT_PROGRESS", "1").strip().lower()
    if setting in ("0", "off", "false"):
        return "off"
    if setting == "lines":
        return "lines"
    return "bars" if sys.stderr.isatty() or console.is_jupyter else "lines"  # rich renders bars in notebooks


def progress_enabled() -> bool:
    return progress_mode() != "off"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class ProgressLines:
    """Plain progress lines, throttled: nothing for short work, then every LINE_PERCENT % or LINE_SECONDS s."""

    def __init__(self, description: str, total: int | None, unit: str, clock=time.monotonic,
                 write=None) -> None:
        self.description, self.total, self.unit = description, total, unit
        self.clock = clock
        self.write = write or (lambda line: print(line, file=sys.stderr, flush=True))
        self.started = self.last_line = clock()
        self.done = 0
        self.last_percent = 0
        self.printed = False

    def due(self) -> bool:
        now = self.clock()
        if now - self.started < QUIET_SECONDS:
            return False
        if not self.printed or now - self.last_line >= LINE_SECONDS:
            return True
        return bool(self.total) and self.percent() >= self.last_percent + LINE_PERCENT

    def percent(self) -> int:
        return int(100 * self.done / self.total) if self.total else 0

    def line(self, extra: str = "") -> None:
        now = self.clock()
        elapsed = now - self.started
        text = f"{self.description}: {self.done}"
        if self.total:
            text += f"/{self.total} {self.unit} ({self.percent()}%)"
            if 0 < self.done < self.total:
                text += f", {_duration(elapsed)} elapsed, ~{_duration(elapsed * (self.total / self.done - 1))} left"
            else:
                text += f", {_duration(elapsed)}"
        else:
            text += f" {self.unit}, {_duration(elapsed)}"
        self.write(text + (f"  {extra}" if extra else ""))
        self.last_line, self.last_percent, self.printed = now, self.percent() // LINE_PERCENT * LINE_PERCENT, True

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.due():
            self.line()

    def finish(self) -> None:
        if self.printed and self.last_percent < 100:
            self.line("done")


@contextmanager
def progress_bar(description: str, total: int | None, unit: str = "img") -> Iterator:
    """Yield ``advance(n)``; a bar on a terminal, throttled lines in a log, nothing when progress is off."""
    mode = progress_mode()
    if mode == "off":
        yield lambda n=1: None
        return
    if mode == "lines":
        lines = ProgressLines(description, total, unit)
        yield lines.advance
        lines.finish()
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn(unit), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)


class _TrainingBar:
    """Two bars, epochs and steps, with the live training loss and accuracy; or lines; or nothing.

    The engine calls ``advance()`` every step and reads the running loss (a device sync) only when
    ``wants_metrics`` says someone will see it.
    """

    def __init__(self, progress: Progress | None, epochs: int, steps_per_epoch: int,
                 lines: ProgressLines | None = None, total_steps: int | None = None) -> None:
        self.progress, self.epochs, self.steps_per_epoch, self.lines = progress, epochs, steps_per_epoch, lines
        self.total_steps = total_steps or epochs * steps_per_epoch  # an iteration budget ends part-way
        if progress is not None:
            self.epoch_task = progress.add_task("epochs", total=epochs, info="")
            self.step_task = progress.add_task("steps", total=self.epoch_steps(0), info="")

    def epoch_steps(self, epoch: int) -> int:
        """Steps of this epoch: a whole one, or what is left of the budget in the last."""
        return max(0, min(self.steps_per_epoch, self.total_steps - epoch * self.steps_per_epoch))

    @property
    def visible(self) -> bool:
        return self.progress is not None or self.lines is not None

    @property
    def wants_metrics(self) -> bool:
        return self.progress is not None or (self.lines is not None and self.lines.due())

    def start(self, epoch: int) -> None:
        if self.progress is not None:
            self.progress.update(self.epoch_task, completed=epoch)
            self.progress.reset(self.step_task, total=self.epoch_steps(epoch), info="")
        if self.lines is not None:
            self.lines.done = epoch * self.steps_per_epoch

    def advance(self) -> None:
        if self.progress is not None:
            self.progress.update(self.step_task, advance=1)
        if self.lines is not None:
            self.lines.done += 1

    def step(self, loss: float, accuracy: float) -> None:
        """The running training loss and accuracy of this epoch."""
        if self.progress is not None:
            self.progress.update(self.step_task, info=f"loss {loss:.4f}  acc {accuracy:.3f}")
        if self.lines is not None:
            self.lines.line(f"train loss {loss:.4f}  acc {accuracy:.3f}")

    def end_epoch(self, epoch: int, row: dict) -> None:
        info = (f"val loss {row['val_loss']:.4f}  val acc {row['val_acc']:.3f}" if "val_loss" in row else
                f"train loss {row['train_loss']:.4f}  train acc {row['train_acc']:.3f} (no validation)")
        if self.progress is not None:
            self.progress.update(self.epoch_task, completed=epoch + 1, info=info)
            self.progress.reset(self.step_task, total=self.epoch_steps(epoch + 1), info="")
        if self.lines is not None:
            self.lines.done = min((epoch + 1) * self.steps_per_epoch, self.total_steps)
            if self.lines.due() or (self.lines.printed and epoch + 1 == self.epochs):
                self.lines.line(f"epoch {epoch + 1}/{self.epochs}: {info}")


@contextmanager
def training_progress(epochs: int, steps_per_epoch: int, enabled: bool = True,
                      total_steps: int | None = None) -> Iterator[_TrainingBar]:
    mode = progress_mode() if enabled else "off"
    if mode == "off":
        yield _TrainingBar(None, epochs, steps_per_epoch, total_steps=total_steps)
        return
    if mode == "lines":
        total = total_steps or epochs * steps_per_epoch
        yield _TrainingBar(None, epochs, steps_per_epoch, ProgressLines("training", total, "steps"), total)
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn(), TextColumn("{task.fields[info]}")]
    with Progress(*columns, console=console, transient=True) as progress:
        yield _TrainingBar(progress, epochs, steps_per_epoch, total_steps=total_steps)


class GridProgress:
    """One line per finished cell of a grid (a benchmark's runs): how many are done, in flight and failed, and the
    time left at the pace so far. Cells run in other processes (or print their own bars), so this is lines, not a
    live bar; ``CLIPADAPT_PROGRESS=0`` silences it."""

    def __init__(self, total: int, clock=time.monotonic) -> None:
        self.total, self.clock = total, clock
        self.started = clock()

    def line(self, key: str, failed: bool, seconds: float, counts: dict[str, int]) -> str:
        finished = counts["done"] + counts["failed"]
        total = counts.get("total", self.total)  # the cells to run (--skip-existing keeps the others)
        elapsed = self.clock() - self.started
        left = f", ~{_duration(elapsed / finished * (total - finished))} left" if 0 < finished < total else ""
        retried = f", {counts['retried']} retried (worker lost)" if counts.get("retried") else ""
        return (f"[{finished}/{total}] {'FAILED' if failed else 'done'} {key} ({_duration(seconds)}) · "
                f"{counts['done']} done, {counts['running']} running, {counts.get('queued', 0)} queued, "
                f"{counts['failed']} failed{retried} · "
                f"{_duration(elapsed)} elapsed{left}")

    def __call__(self, outcome, counts: dict[str, int]) -> None:
        if progress_enabled():
            console.print(self.line(outcome.key, outcome.failed, outcome.seconds, counts), highlight=False,
                          markup=False, soft_wrap=True)
