"""The results ``advise`` learns from: the shipped table of published per-dataset few-shot accuracies
(``published.csv``, one row per dataset x method x shots x backbone x source, docs/advise-sources.md says where each
number was read), and optionally a lab's own ``clipadapt benchmark`` outputs (``--history DIR``).

Accuracies are fractions here, as in benchmark.csv; published.csv stores percent exactly as printed (column
``acc``) and is divided by 100 on loading.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from clipadapt.errors import ClipAdaptError

PUBLISHED_COLUMNS = ("dataset", "method", "shots", "acc", "backbone", "source", "where")
PUBLISHED = Path(str(resources.files(__package__).joinpath("published.csv")))
ZEROSHOT = "zeroshot"

# Class counts of the CoOp benchmark's 11 datasets, as in the dataset-statistics table of Zhou et al. 2022 ("Learning
# to Prompt for Vision-Language Models", arXiv:2109.01134); Caltech101's 100 are after CoOp drops BACKGROUND_Google
# and Faces_easy (data/coop.py). Published rows of other datasets get classes=None (the predictor skips them).
NUM_CLASSES = {"imagenet": 1000, "caltech101": 100, "oxford_pets": 37, "stanford_cars": 196, "flowers102": 102,
               "food101": 101, "fgvc_aircraft": 100, "sun397": 397, "dtd": 47, "eurosat": 10, "ucf101": 101}

# What a history folder must hold: the columns of experiments.benchmark_report.COLUMNS this module reads (not
# imported from there: that module loads torch through engine.records, and reading a table needs no torch).
BENCHMARK_CSV = "benchmark.csv"
HISTORY_COLUMNS = ("protocol", "dataset", "method", "shots", "seed", "acc1", "run", "error")
RUN_METRICS = "metrics.json"
WHAT_A_BENCHMARK_HOLDS = "a `clipadapt benchmark --out DIR` folder holds benchmark.csv, benchmark.md and runs/"


@dataclass(frozen=True)
class Result:
    """One accuracy (a fraction) of one method on one dataset at ``shots`` images per class (0: zero-shot)."""

    dataset: str
    method: str
    shots: int
    accuracy: float
    backbone: str
    source: str
    where: str
    classes: int | None = None  # number of classes; None when neither the run nor NUM_CLASSES says

    @property
    def group(self) -> tuple[str, str, str]:
        """Rows comparable with each other: one source's numbers for one backbone on one dataset."""
        return self.dataset, self.backbone, self.source


def load_published(path: str | Path | None = None) -> list[Result]:
    """The rows of published.csv (the shipped one by default), checked: the exact header, integer shots >= 0,
    a percentage in [0, 100], no field empty, no row twice."""
    path = Path(path) if path is not None else PUBLISHED
    if not path.is_file():
        raise ClipAdaptError(f"published table '{path}' not found; the package ships it as {PUBLISHED.name} "
                             "beside clipadapt/experiments/advise/table.py")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != PUBLISHED_COLUMNS:
            raise ClipAdaptError(f"'{path}' has the header {','.join(reader.fieldnames or [])!r}; expected "
                                 f"{','.join(PUBLISHED_COLUMNS)!r}")
        rows = [_published_row(path, reader.line_num, row) for row in reader]
    seen: set[tuple] = set()
    for r in rows:
        key = (r.dataset, r.method, r.shots, r.backbone, r.source)
        if key in seen:
            raise ClipAdaptError(f"'{path}' has {r.method} at {r.shots} shots on {r.dataset} ({r.backbone}, "
                                 f"{r.source}) twice; keep one row per dataset, method, shots, backbone and source")
        seen.add(key)
    return rows


def _published_row(path: Path, line: int, row: dict) -> Result:
    if any(not (row.get(c) or "").strip() for c in PUBLISHED_COLUMNS):
        empty = [c for c in PUBLISHED_COLUMNS if not (row.get(c) or "").strip()]
        raise ClipAdaptError(f"'{path}' line {line}: empty {', '.join(empty)}; every column needs a value")
    try:
        shots, percent = int(row["shots"]), float(row["acc"])
    except ValueError:
        raise ClipAdaptError(f"'{path}' line {line}: shots {row['shots']!r} and acc {row['acc']!r} must be an "
                             "integer and a percentage") from None
    if shots < 0 or not 0 <= percent <= 100:
        raise ClipAdaptError(f"'{path}' line {line}: shots {shots} must be >= 0 and acc {percent} in [0, 100] "
                             "(percent as printed)")
    dataset = row["dataset"].strip()
    return Result(dataset, row["method"].strip(), shots, percent / 100, row["backbone"].strip(),
                  row["source"].strip(), row["where"].strip(), NUM_CLASSES.get(dataset))


def load_history(folder: str | Path) -> list[Result]:
    """A ``clipadapt benchmark`` output as rows: its few-shot protocol's cells with an accuracy, the mean over
    seeds per (dataset, method, shots); the backbone is the model its runs' metrics.json record (else the title of
    benchmark.md), the classes their ``num_classes`` (else NUM_CLASSES). Failed cells are left out."""
    folder = Path(folder)
    path = folder / BENCHMARK_CSV
    if not path.is_file():
        raise ClipAdaptError(f"history folder '{folder}' is not a benchmark output: it has no {BENCHMARK_CSV} "
                             f"({WHAT_A_BENCHMARK_HOLDS})")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in HISTORY_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ClipAdaptError(f"'{path}' is not a benchmark's {BENCHMARK_CSV}: it lacks the columns "
                                 f"{', '.join(missing)} ({WHAT_A_BENCHMARK_HOLDS})")
        rows = [r for r in reader if r["protocol"] == "few-shot" and not r["error"] and _number(r["acc1"])]
    if not rows:
        raise ClipAdaptError(f"'{path}' has no few-shot result (protocol few-shot with an acc1 and no error); "
                             "advise learns from `clipadapt benchmark --protocol few-shot` outputs")
    seeds: dict[tuple[str, str, int], list[float]] = {}
    for r in rows:
        if not r["shots"].isdigit():
            raise ClipAdaptError(f"'{path}': a few-shot row's shots '{r['shots']}' is not a whole number "
                                 f"({WHAT_A_BENCHMARK_HOLDS})")
        seeds.setdefault((r["dataset"], r["method"], int(r["shots"])), []).append(float(r["acc1"]))
    records = [_run_record(folder, r) for r in rows]
    model = next((rec["model"] for rec in records if rec and rec.get("model")), None) or _title_model(folder)
    classes: dict[str, int] = {}
    for r, rec in zip(rows, records, strict=True):
        if rec and isinstance(rec.get("num_classes"), int):
            classes.setdefault(r["dataset"], rec["num_classes"])
    source = f"history {folder}"
    return [Result(dataset, method, shots, sum(values) / len(values), model, source, str(path),
                   classes.get(dataset, NUM_CLASSES.get(dataset)))
            for (dataset, method, shots), values in seeds.items()]


def _number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _run_record(folder: Path, row: dict) -> dict | None:
    """The metrics.json of a row's run: at the path recorded, else at the same place under ``folder/runs`` (the
    folder was moved or copied; the run's key is ``<dataset>/zeroshot`` or ``<dataset>/<method>/<K>shot-seed<S>``)."""
    run = Path(row["run"])
    parts = 2 if row["method"] == ZEROSHOT else 3
    for candidate in (run, folder / "runs" / Path(*run.parts[-parts:])) if len(run.parts) >= parts else (run,):
        path = candidate / RUN_METRICS
        if path.is_file():
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            return record if isinstance(record, dict) else None
    return None


def _title_model(folder: Path) -> str:
    """The model named in benchmark.md's title (``# Benchmark of MODEL``), or "unknown"."""
    try:
        first = (folder / "benchmark.md").read_text().splitlines()[0]
    except (OSError, IndexError):
        return "unknown"
    prefix = "# Benchmark of "
    return first[len(prefix):].strip() if first.startswith(prefix) else "unknown"


def published_table(history: Sequence[str | Path] = (), path: str | Path | None = None) -> list[Result]:
    """The published rows followed by those of each history folder."""
    rows = load_published(path)
    for folder in history:
        rows += load_history(folder)
    return rows
