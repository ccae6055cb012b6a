"""Sweeps: ``clipadapt train vpt --sweep vpt.layer=0,6,11 --sweep vpt.tokens=1,4,8 --seeds 0,1,2``.

Every cell of the grid (and every seed) is a normal training run directory under the sweep's folder, named by its
values (``layer=0_tokens=4-seed1``) and labelled for reports (``vpt layer=0 tokens=4``). The cell chosen is the one
with the best mean validation accuracy (``selection.val_acc`` of its runs) among the cells whose runs record one; the
test accuracy of every cell is shown beside it, as in a paper's ablation table, but never used to choose. Runs of a
method that chooses nothing on validation (lp++, clip-lora, ``train.keep=last``) record no validation score: a grid
of them chooses no cell, and a mixed grid leaves them out of the choice and says so. ``sweep.csv`` has one line per
cell, ``sweep.md`` the tables (rows: the first swept field, columns: the second, one table per value of any further
fields). The cells go through an executor (``executor``: this process one after another, or Ray tasks); the tables
are read from the run directories, so they are the same whichever executor ran the cells.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from clipadapt.classification.experiment import TrainExperiment, load_experiment
from clipadapt.classification.training import run_training
from clipadapt.config import format_overrides, to_dict
from clipadapt.engine.records import METRICS_FILE
from clipadapt.engine.rundir import grid_start
from clipadapt.errors import ClipAdaptError, ConfigError
from clipadapt.executors import ExecutorConfig, open_executor, run_with_status
from clipadapt.executors.locks import exclusive_out
from clipadapt.io import atomic_write_text
from clipadapt.paths import slug
from clipadapt.reports.collect import mean_std

RESERVED = {"run.out", "run.seed", "run.resume", "run.overwrite", "run.label", "method", "data.seed"}


@dataclass
class SweepConfig:
    method: str
    axes: dict[str, list[str]]  # field -> values as written (YAML scalars), in the order given
    seeds: list[int] = field(default_factory=lambda: [0])
    overrides: list[str] = field(default_factory=list)  # for every cell, before its own values
    config_file: str | None = None
    out: str | None = None
    skip_existing: bool = False
    overwrite: bool = False
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)

    def __post_init__(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must be distinct and at least one, got {self.seeds}")
        for key in self.axes:
            if key in RESERVED:
                raise ConfigError(f"--sweep {key}: not a sweepable field (use --seeds for seeds, --out for the "
                                  f"folder)")


def split_values(text: str) -> list[str]:
    """``"0,6,11"`` -> ``["0", "6", "11"]``; commas inside brackets stay (``[q_proj,v_proj],[fc1]``)."""
    values, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += char
    values.append(current.strip())
    return [v for v in values if v]


def parse_sweep(items: list[str]) -> dict[str, list[str]]:
    """``["vpt.layer=0,6,11", "vpt.position=prepend,append"]`` -> ``{"vpt.layer": ["0", "6", "11"], ...}``."""
    axes: dict[str, list[str]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--sweep '{item}' must look like section.key=value1,value2")
        values = split_values(raw)
        if not values:
            raise ConfigError(f"--sweep {key}= has no values; give a comma-separated list, e.g. {key}=1,4,8")
        if len(set(values)) != len(values):
            raise ConfigError(f"--sweep {key} lists a value twice: {raw}")
        if key in axes:
            raise ConfigError(f"--sweep {key} is given twice; list all its values once")
        axes[key] = values
    return axes


@dataclass
class SweepCell:
    values: dict[str, str]  # field -> value
    seed: int
    run_dir: Path
    label: str

    @property
    def overrides(self) -> list[str]:
        return [f"{key}={value}" for key, value in self.values.items()]


def short_names(keys: list[str]) -> dict[str, str]:
    """``vpt.layer`` -> ``layer`` unless two swept fields end the same (then the full dotted name)."""
    ends = [key.rsplit(".", 1)[-1] for key in keys]
    return {key: end if ends.count(end) == 1 else key for key, end in zip(keys, ends, strict=True)}


def plan_sweep(config: SweepConfig, out: Path) -> list[SweepCell]:
    keys = list(config.axes)
    short = short_names(keys)
    cells = []
    for combination in itertools.product(*(config.axes[k] for k in keys)):
        values = dict(zip(keys, combination, strict=True))
        name = "_".join(f"{short[k]}={slug(v)}" for k, v in values.items()) or config.method
        label = " ".join([config.method] + [f"{short[k]}={v}" for k, v in values.items()])
        for seed in config.seeds:
            cells.append(SweepCell(values, seed, out / f"{name}-seed{seed}", label))
    return cells


@dataclass
class SweepRun:
    """One cell's run as it travels to an executor: the method, config file and ``--set`` items it is built from."""

    method: str
    config_file: str | None
    items: list[str]
    run_dir: str = ""
    resume: bool = False  # keep a complete run, continue an interrupted one (--skip-existing, a retried cell)

    def experiment(self, resume: bool | None = None) -> TrainExperiment:
        """The run's experiment: resumed from its checkpoint, or started afresh over whatever is there."""
        resume = self.resume if resume is None else resume
        return load_experiment(self.method, self.config_file,
                               self.items + ["run.resume=true" if resume else "run.overwrite=true"])

    def resumed(self) -> SweepRun:
        """This cell for another attempt after its worker died: it continues the run's last checkpoint."""
        return replace(self, resume=True)


def sweep_run(config: SweepConfig, cell: SweepCell, resume: bool) -> SweepRun:
    run_flags = format_overrides({"run.out": str(cell.run_dir), "run.seed": cell.seed, "data.seed": cell.seed,
                                  "run.label": cell.label})
    return SweepRun(config.method, config.config_file, config.overrides + cell.overrides + run_flags,
                    str(cell.run_dir), resume)


def cell_experiment(config: SweepConfig, cell: SweepCell, resume: bool) -> TrainExperiment:
    return sweep_run(config, cell, resume).experiment()


def train_cell(run: SweepRun) -> None:
    """Train (or resume) one cell's run into its run directory; an executor's cell. A run another attempt of the
    cell completed is kept (engine.rundir.grid_start)."""
    start = grid_start(run.run_dir, run.resume)
    if start != "kept":
        run_training(run.experiment(resume=start == "resume"))


@dataclass
class SweepResult:
    out: Path
    cells: list[SweepCell]
    rows: list[dict[str, Any]]  # one per grid cell (seeds aggregated)
    chosen: dict[str, Any] | None
    markdown: Path
    csv: Path
    failed: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def note(self) -> str:
        """What was chosen, in one line (``choice_note``)."""
        return choice_note(self.rows)


def check_cells(config: SweepConfig, cells: list[SweepCell]) -> None:
    """Build every cell's config, then check every distinct one against its model, before anything trains."""
    from clipadapt.data import load_dataset
    from clipadapt.methods import METHODS
    from clipadapt.models import load_model

    experiments = {json.dumps(cell.values): cell_experiment(config, cell, resume=False) for cell in cells}
    entry = METHODS.get(config.method)
    bundles: dict[str, Any] = {}
    datasets: dict[str, Any] = {}
    for experiment in experiments.values():  # each model and dataset is loaded once, however many cells use it
        model, data = experiment.model, experiment.data
        key = json.dumps([model.spec, model.revision])
        if key not in bundles:
            bundles[key] = load_model(model.spec, device="cpu", revision=model.revision,
                                      trust_remote_code=model.trust_remote_code)
        data_key = json.dumps(to_dict(data), sort_keys=True, default=str)
        if data_key not in datasets:
            datasets[data_key] = load_dataset(data)
        entry.method_class.check(experiment.method_config(), bundles[key], datasets[data_key].classnames)


def run_sweep(config: SweepConfig, on_run: Callable[[SweepCell, str], None] | None = None) -> SweepResult:
    """Run (or keep, or resume) every cell and seed, then write sweep.csv and sweep.md in the sweep folder."""
    base = load_experiment(config.method, config.config_file, config.overrides)
    out = Path(config.out) if config.out else _default_out(base)
    cells = plan_sweep(config, out)
    existing = [c.run_dir for c in cells if c.run_dir.exists()]
    if existing and not (config.skip_existing or config.overwrite):
        raise ClipAdaptError(f"{len(existing)} run directories of this sweep already exist under '{out}' (e.g. "
                             f"{existing[0]}); pass --skip-existing to keep finished cells and resume interrupted "
                             f"ones, or --overwrite")
    check_cells(config, cells)
    with exclusive_out(out, "sweep") as token:  # from here to the tables, this driver holds the sweep folder
        notify = on_run or (lambda cell, status: None)
        todo: dict[str, tuple[SweepCell, SweepRun, str]] = {}  # key -> cell, its run, status when submitted
        for cell in cells:
            if (cell.run_dir / METRICS_FILE).is_file() and config.skip_existing:
                notify(cell, "kept")
                continue
            resume = config.skip_existing and cell.run_dir.is_dir()
            todo[str(cell.run_dir)] = cell, sweep_run(config, cell, resume), "resuming" if resume else "running"
        failed = []
        if todo:
            with open_executor(config.executor, out, token) as executor:
                outcomes = run_with_status(executor, train_cell, todo, notify)
            failed = [(todo[key][0].run_dir, outcome.error or "") for key, outcome in outcomes.items()
                      if outcome.failed]
        rows = summarize(cells)
        chosen = choose_cell(rows)
        markdown, table = out / "sweep.md", out / "sweep.csv"
        atomic_write_text(table, sweep_csv(list(config.axes), rows))
        atomic_write_text(markdown, sweep_markdown(config, rows))
    return SweepResult(out, cells, rows, chosen, markdown, table, failed)


def _default_out(experiment: TrainExperiment) -> Path:
    from clipadapt.engine.rundir import default_run_dir

    return Path(f"{default_run_dir(experiment.model.spec, experiment.data.dataset, experiment.method)}-sweep")


def summarize(cells: list[SweepCell]) -> list[dict[str, Any]]:
    """One row per grid cell: validation accuracy (of the selected weights) and test accuracy over its seeds.
    ``scored``: every finished run of the cell records a validation score (``selection.val_acc``); only those cells
    can be chosen."""
    rows: dict[str, dict[str, Any]] = {}
    for cell in cells:
        row = rows.setdefault(cell.label, {"values": cell.values, "label": cell.label, "runs": [], "val": [],
                                           "test": [], "trainable": None, "train_time_s": []})
        metrics = cell.run_dir / METRICS_FILE
        if not metrics.is_file():
            continue
        record = json.loads(metrics.read_text())
        row["runs"].append(str(cell.run_dir))
        val = (record.get("selection") or {}).get("val_acc")
        if isinstance(val, int | float) and math.isfinite(val):
            row["val"].append(float(val))
        row["test"].append(float(record["metrics"]["acc1"]))
        row["trainable"] = record["params"]["trainable"]
        row["train_time_s"].append(float(record["cost"]["train_time_s"]))
    for row in rows.values():
        row["scored"] = bool(row["runs"]) and len(row["val"]) == len(row["runs"])
        row["val_acc"], row["val_std"] = mean_std(row["val"]) if row["scored"] else (math.nan, math.nan)
        row["test_acc"], row["test_std"] = mean_std(row["test"])
        row["train_time_s"] = mean_std(row["train_time_s"])[0]
    return list(rows.values())


def choose_cell(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The cell with the best mean validation accuracy among those that record one (the first of equals), marked
    ``chosen``; None when no cell records a validation score (nothing is chosen)."""
    chosen = max((r for r in rows if r["scored"]), key=lambda r: r["val_acc"], default=None)
    for row in rows:
        row["chosen"] = row is chosen
    return chosen


def unscored(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Finished cells whose runs record no validation score: never chosen."""
    return [r for r in rows if r["runs"] and not r["scored"]]


NOTHING_CHOSEN = "no cell chosen: these runs record no validation score"


def choice_note(rows: list[dict[str, Any]]) -> str:
    """One line: the chosen cell, the cells left out of the choice, or that nothing was chosen."""
    chosen = next((r for r in rows if r["chosen"]), None)
    left_out = unscored(rows)
    if chosen is None:
        return NOTHING_CHOSEN if left_out else "no cell chosen: no cell has a finished run"
    note = f"chosen on validation: {chosen['label']}"
    if left_out:
        note += (f", among the cells that record a validation score; left out (no validation score): "
                 f"{', '.join(r['label'] for r in left_out)}")
    return note


def sweep_csv(keys: list[str], rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(keys + ["seeds", "val_acc", "val_acc_std", "test_acc1", "test_acc1_std", "trainable",
                            "train_time_s", "chosen_on_val", "runs"])
    nothing_chosen = not any(row["chosen"] for row in rows)
    for row in rows:
        writer.writerow([row["values"][k] for k in keys] + [
            len(row["runs"]), _fmt(row["val_acc"]), _fmt(row["val_std"]), _fmt(row["test_acc"]),
            _fmt(row["test_std"]), row["trainable"] if row["trainable"] is not None else "",
            _fmt(row["train_time_s"], 2), _chosen_on_val(row, nothing_chosen), ";".join(row["runs"])])
    return buffer.getvalue()


def _chosen_on_val(row: dict[str, Any], nothing_chosen: bool) -> str:
    """sweep.csv's ``chosen_on_val``: yes for the chosen cell, why a finished cell without a score was not."""
    if row["chosen"]:
        return "yes"
    if not row["runs"] or row["scored"]:
        return ""
    return NOTHING_CHOSEN if nothing_chosen else "left out: no validation score"


def _fmt(value: float, digits: int = 4) -> str:
    return "" if value != value else f"{value:.{digits}f}"


def _cell(row: dict[str, Any] | None, key: str, seeds: int) -> str:
    if row is None or not row["runs"]:
        return "-"
    if key == "val" and not row["scored"]:
        return "no score"
    text = f"{row[f'{key}_acc']:.3f}" + (f" ± {row[f'{key}_std']:.3f}" if seeds > 1 else "")
    return f"**{text}**" if row["chosen"] else text


def ablation_tables(keys: list[str], rows: list[dict[str, Any]], key: str, seeds: int) -> list[tuple[str, str]]:
    """``(title, markdown table)`` pairs: rows = first field, columns = second, one table per other values."""
    by_values = {tuple(r["values"][k] for k in keys): r for r in rows}
    axes = [list(dict.fromkeys(r["values"][k] for r in rows)) for k in keys]
    if not keys:
        return [("", f"| {key} |\n|---:|\n| {_cell(rows[0], key, seeds)} |")]
    row_values = axes[0]
    col_values = axes[1] if len(keys) > 1 else [None]
    tables = []
    for rest in itertools.product(*axes[2:]):
        header = [keys[0]] + ([f"{keys[1]}={v}" for v in col_values] if len(keys) > 1 else [key])
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * len(col_values)]
        for value in row_values:
            cells = [_cell(by_values.get((value, *((c,) if c is not None else ()), *rest)), key, seeds)
                     for c in col_values]
            lines.append("| " + " | ".join([value] + cells) + " |")
        title = ", ".join(f"{k}={v}" for k, v in zip(keys[2:], rest, strict=True))
        tables.append((title, "\n".join(lines)))
    return tables


def sweep_markdown(config: SweepConfig, rows: list[dict[str, Any]]) -> str:
    keys, seeds = list(config.axes), len(config.seeds)
    chosen = next((r for r in rows if r["chosen"]), None)
    left_out = unscored(rows)
    fields = "; ".join(f"`{k}` = " + ", ".join(v) for k, v in config.axes.items()) or "none"
    lines = [f"# Sweep: {config.method}", "",
             f"Fields: {fields}; "
             f"seeds {', '.join(map(str, config.seeds))}. Accuracy is top-1"
             + (", mean ± std over seeds" if seeds > 1 else "") + "."
             + (" The cell in **bold** has the best validation accuracy and is the one chosen;" if chosen else "")
             + " Test accuracy is shown for every cell but never used to choose.", ""]
    if chosen is not None:
        among = (f" among the {sum(r['scored'] for r in rows)} cells that record a validation score"
                 if left_out else "")
        lines += [f"Chosen on validation{among}: **{chosen['label']}** (val {chosen['val_acc']:.4f}, test "
                  f"{chosen['test_acc']:.4f}; {chosen['trainable']:,} trainable parameters).", ""]
        if left_out:
            lines += [f"Left out of the choice (their runs record no validation score): "
                      f"{', '.join(r['label'] for r in left_out)}.", ""]
    elif left_out:
        lines += [f"No cell chosen: these runs record no validation score ({config.method} chooses nothing on "
                  "validation with these settings, e.g. train.keep=last), so nothing is in bold.", ""]
    sections = [("test", "Test accuracy")]
    if any(r["scored"] for r in rows) or not left_out:
        sections.insert(0, ("val", "Validation accuracy (selects the cell)"))
    for key, title in sections:
        lines += [f"## {title}", ""]
        for subtitle, table in ablation_tables(keys, rows, key, seeds):
            if subtitle:
                lines += [f"*{subtitle}*", ""]
            lines += [table, ""]
    missing = [r["label"] for r in rows if not r["runs"]]
    if missing:
        lines += [f"Cells without a finished run (failed or interrupted): {', '.join(missing)}.", ""]
    lines += ["Every cell is a run directory; `clipadapt report` on this folder compares them, and "
              "`--skip-existing` continues the sweep.", ""]
    return "\n".join(lines)
