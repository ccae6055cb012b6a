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
from rich.cells import cell_len
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table
from rich.text import Text

from clipadapt.errors import ClipAdaptError, DiskFull
from clipadapt.io import free_bytes, no_space_errno

# Printed text is never read as rich markup: paths, labels and messages keep their brackets
# ("pip install 'clipadapt[tensorboard]'"); styled labels go through ``notice``.
out = Console(markup=False)
err = Console(stderr=True, markup=False)

ModelOpt = Annotated[str | None, typer.Option("--model", "-m", help="model spec (see `clipadapt models`)")]
DatasetOpt = Annotated[str | None, typer.Option("--dataset", "-d", help="dataset spec (see `clipadapt datasets`)")]
DeviceOpt = Annotated[str | None, typer.Option(help="auto, cpu, cuda, mps")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="override: section.key=value, e.g. lora.r=4, "
                                                  "train.epochs=5")]
ExecutorOpt = Annotated[str, typer.Option(help="where the runs go: local (this process, one after another), ray "
                                               "or slurm (a job array through submitit)")]
AddressOpt = Annotated[str | None, typer.Option(help="a running Ray cluster, HOST:PORT (default: a local instance)")]
CpusPerRunOpt = Annotated[float | None, typer.Option(help="CPUs (and torch threads) per run")]
GpusPerRunOpt = Annotated[float, typer.Option(help="GPUs per run (ray: fractions share one; slurm: whole GPUs)")]
PartitionOpt = Annotated[str | None, typer.Option(help="slurm: the partition (default: the cluster's)")]
TimeOpt = Annotated[str | None, typer.Option(help="slurm: each job's limit (MM, HH:MM:SS, D-HH:MM); a cell past "
                                                  "it is requeued and resumes")]
MemOpt = Annotated[str | None, typer.Option(help="slurm, ray: memory per run, e.g. 32G")]
ArrayParallelismOpt = Annotated[int | None, typer.Option(help="slurm: jobs of the array running at once")]
SlurmSettingOpt = Annotated[list[str] | None, typer.Option(help="slurm: another submitit Slurm parameter, "
                                                               "KEY=VALUE (account, qos, constraint, ...); repeat")]
SlurmClusterOpt = Annotated[str, typer.Option(help="slurm: slurm (sbatch), or local / debug: submitit's stand-ins "
                                                   "on this machine, to try a grid first")]


def executor_options(executor: str, address: str | None, cpus_per_run: float | None, gpus_per_run: float,
                     partition: str | None, time: str | None, mem: str | None, array_parallelism: int | None,
                     slurm_setting: list[str] | None, slurm_cluster: str) -> dict:
    """The placement options every grid command shares, as the Python API's keyword arguments."""
    return {"executor": executor, "address": address, "cpus_per_run": cpus_per_run, "gpus_per_run": gpus_per_run,
            "partition": partition, "time": time, "mem": mem, "array_parallelism": array_parallelism,
            "slurm_settings": list(slurm_setting or []), "slurm_cluster": slurm_cluster}


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=err, show_time=False, show_path=False)], force=True)
    logging.getLogger("clipadapt").setLevel(logging.INFO if verbose else logging.WARNING)
    for noisy in ("matplotlib", "PIL", "urllib3", "httpx", "filelock", "datasets", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR)  # hub retries end in our own one-line error
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def user_errors(func):
    """Turn a ClipAdaptError into one line on stderr and exit code 2 (no traceback); so too a full disk or quota met
    outside clipadapt's own writers (a log file, tensorboard's events): the same line as their ``DiskFull``."""

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
        except Exception as e:
            number = no_space_errno(e)
            if number is None:
                raise
            notice("error:", str(disk_full(e, number)), "bold red")
            raise typer.Exit(2) from None

    return wrapper


def disk_full(error: Exception, number: int) -> DiskFull:
    """The ``DiskFull`` of a raw out-of-space error, naming the file when the error (or its cause) does."""
    path = None
    cause: BaseException | None = error
    while cause is not None and path is None:
        path = getattr(cause, "filename", None)
        cause = cause.__cause__ or cause.__context__
    return DiskFull(path, free_bytes(path) if path is not None else None, number)


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


def ece_cell(metrics: dict) -> str:
    """A metrics dict's ECE for a table, ``-`` for a run written before ECE was recorded."""
    ece = metrics.get("ece")
    return "-" if ece is None or ece != ece else f"{ece:.4f}"


def result_table(headers: Sequence[str], rows: Sequence[Sequence[object]], title: str | None = None,
                 names: int = 1, text: Sequence[int] = ()) -> Table:
    """A table whose first ``names`` columns (method, run, model names) and whose numbers are never cut or split.

    Columns listed in ``text`` are left-aligned and may wrap; the rest are numbers (right-aligned, never wrapped:
    ``0.812 ± 0.010`` stays on one line). On a narrow or piped output (``COLUMNS=60``) the text columns and the
    headers wrap first; when the table still does not fit, it is printed as several tables one under the other,
    each repeating the name columns, as a wide data frame is. Only when the names and one number column cannot
    share a line does the widest name fold.
    """
    return ResultTable(headers, rows, title=title, names=names, text=text)


class ResultTable(Table):
    """``result_table``'s table: laid out for the console's width when printed (see there)."""

    TEXT_MIN_WIDTH = 10  # a wrapped text column keeps at least this many characters a line

    def __init__(self, headers: Sequence[str], rows: Sequence[Sequence[object]], title: str | None = None,
                 names: int = 1, text: Sequence[int] = ()) -> None:
        super().__init__(title=title)
        self.kinds = ["name" if i < names else "text" if i in text else "number" for i in range(len(headers))]
        self.cells = [[str(cell) for cell in row] for row in rows]
        for i, header in enumerate(headers):
            self.add_column(header, justify="right" if self.kinds[i] == "number" else "left",
                            no_wrap=self.kinds[i] != "text", overflow="fold")
        for row in self.cells:
            self.add_row(*row)

    def _limits(self, i: int) -> tuple[int, int]:
        """(narrowest, widest) width of column ``i``: a name or number column never narrower than its widest cell
        (nor, for a number, than a header word of up to ``TEXT_MIN_WIDTH``), a text column down to
        ``TEXT_MIN_WIDTH``; the widest puts the header on one line."""
        widest = max((cell_len(line) for row in self.cells for line in row[i].splitlines() or [""]), default=0)
        header = str(self.columns[i].header)
        if self.kinds[i] == "text":
            narrowest = min(widest, self.TEXT_MIN_WIDTH)
        elif self.kinds[i] == "number":
            words = [cell_len(word) for word in header.split()]
            narrowest = max(widest, min(max(words, default=0), self.TEXT_MIN_WIDTH))
        else:
            narrowest = widest
        return max(1, narrowest), max(1, narrowest, widest, cell_len(header))

    @staticmethod
    def _table_width(widths: Sequence[int]) -> int:
        return sum(widths) + 3 * len(widths) + 1  # one space of padding each side, a border between and around

    def _blocks(self, max_width: int) -> list[list[tuple[int, int]]]:
        """The columns of each table to print, ``(column, width)``: all in one where the narrowest widths fit."""
        limits = [self._limits(i) for i in range(len(self.columns))]
        fixed = [i for i, kind in enumerate(self.kinds) if kind == "name"]
        widest_other = max((limits[i][0] for i in range(len(self.columns)) if i not in fixed), default=0)
        excess = self._table_width([limits[i][0] for i in fixed] + [widest_other] * (len(fixed) < len(limits)))
        excess -= max_width
        while excess > 0 and fixed:  # the names cannot share a line with a number: the widest name folds
            column = max(fixed, key=lambda i: limits[i][0])
            if limits[column][0] <= self.TEXT_MIN_WIDTH:
                break
            limits[column] = (limits[column][0] - 1, limits[column][0] - 1)  # folded: as wide in every block
            excess -= 1
        blocks: list[list[int]] = []
        for i in (i for i in range(len(self.columns)) if i not in fixed):
            if not blocks or self._table_width([limits[c][0] for c in [*blocks[-1], i]]) > max_width:
                blocks.append([*fixed])  # a column always joins the names, even where the two do not fit
            blocks[-1].append(i)
        if not blocks:
            blocks = [fixed]
        return [self._widths(sorted(block), limits, max_width) for block in blocks]

    def _widths(self, block: list[int], limits: list[tuple[int, int]], max_width: int) -> list[tuple[int, int]]:
        """Widest widths, narrowed a character at a time (the column with the most to give first) until they fit."""
        widths = {i: limits[i][1] for i in block}
        excess = self._table_width(list(widths.values())) - max_width
        while excess > 0:
            column = max(block, key=lambda i: widths[i] - limits[i][0])
            if widths[column] <= limits[column][0]:
                break
            widths[column] -= 1
            excess -= 1
        return [(i, widths[i]) for i in block]

    def __rich_console__(self, console, options):
        blocks = self._blocks(options.max_width)
        for k, block in enumerate(blocks):
            table = Table(title=self.title if k == 0 else None)
            for i, width in block:
                column = self.columns[i]
                whole = self._limits(i)[0] <= width  # False: a name folded to fit (see ``_blocks``)
                table.add_column(Text(str(column.header), no_wrap=False, overflow="fold"), width=width,
                                 justify=column.justify, no_wrap=column.no_wrap and whole, overflow="fold")
            for row in self.cells:
                table.add_row(*[row[i] for i, _ in block])
            yield table
