"""What every command shares: the consoles, logging, the one-line error handler, option types, tables.

The CLI only parses arguments, builds configs and calls the library; nothing in this package does real work.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table
from rich.text import Text

from clipadapt.errors import ClipAdaptError

# Printed text is never read as rich markup: paths, labels and messages keep their brackets
# ("pip install 'clipadapt[tensorboard]'"); styled labels go through ``notice``.
out = Console(markup=False)
err = Console(stderr=True, markup=False)

ModelOpt = Annotated[str | None, typer.Option("--model", "-m", help="model spec (see `clipadapt models`)")]
DatasetOpt = Annotated[str | None, typer.Option("--dataset", "-d", help="dataset spec (see `clipadapt datasets`)")]
DeviceOpt = Annotated[str | None, typer.Option(help="auto, cpu, cuda, mps")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="override: section.key=value, e.g. lora.r=4, "
                                                  "train.epochs=5")]
ExecutorOpt = Annotated[str, typer.Option(help="where the runs go: local (this process, one after another) or ray")]
AddressOpt = Annotated[str | None, typer.Option(help="a running Ray cluster, HOST:PORT (default: a local instance)")]
CpusPerRunOpt = Annotated[float | None, typer.Option(help="CPUs (and torch threads) per run")]
GpusPerRunOpt = Annotated[float, typer.Option(help="GPUs per run (ray)")]


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=err, show_time=False, show_path=False)], force=True)
    logging.getLogger("clipadapt").setLevel(logging.INFO if verbose else logging.WARNING)
    for noisy in ("matplotlib", "PIL", "urllib3", "httpx", "filelock", "datasets", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR)  # hub retries end in our own one-line error
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def user_errors(func):
    """Turn a ClipAdaptError into one line on stderr and exit code 2 (no traceback)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except ClipAdaptError as e:
            notice("error:", str(e), "bold red")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            notice("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def notice(label: str, text: str = "", style: str = "yellow") -> None:
    """One line on stderr: ``label`` in ``style``, then ``text`` exactly as it is (never wrapped mid-line)."""
    err.print(Text.assemble((label, style), f" {text}" if text else ""), highlight=False, soft_wrap=True)


def print_failed(failed) -> None:
    """The runs of a comparison, sweep or demo that failed, one ``failed: PATH: REASON`` line each."""
    for path, reason in failed:
        notice("failed:", f"{path}: {reason}", "red")


def split_classes(classes: str | None) -> list[str] | None:
    if classes is None:
        return None
    names = [c.strip() for c in classes.split(",")]
    if not any(names):
        raise ClipAdaptError("--classes is empty: give comma-separated class names, e.g. red,green,blue")
    return names


def number_list(text: str, what: str, kind: type = int) -> list:
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        noun = "integers" if kind is int else "numbers"
        raise ClipAdaptError(f"{what} must be comma-separated {noun}, got '{text}'") from None


def result_table(headers: Sequence[str], rows: Sequence[Sequence[object]], title: str | None = None,
                 names: int = 1, text: Sequence[int] = ()) -> Table:
    """A table whose first ``names`` columns (method, run, model names) are never cut or wrapped.

    On a narrow terminal rich shrinks the other columns and wraps their headers and cells instead, so
    ``linear-probe`` never becomes ``linear-pr…``. Columns listed in ``text`` are left-aligned, the rest (numbers)
    right-aligned.
    """
    table = Table(title=title)
    for i, header in enumerate(headers):
        if i < names:
            widest = max((len(str(row[i])) for row in rows), default=0)
            table.add_column(header, no_wrap=True, min_width=widest)
        else:
            table.add_column(header, justify="left" if i in text else "right", overflow="fold")
    for row in rows:
        table.add_row(*[str(cell) for cell in row])
    return table
