"""Read run directories back: what finished, what was interrupted, and the numbers to compare.

Nothing here recomputes a result: every number comes from a run's own metrics.json, history.csv and
robustness.json.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from clipadapt.engine.records import CONFIG_FILE, METRICS_FILE, ORACLE_LABEL, oracle_source

ROBUSTNESS_FILE = "robustness.json"
SKIP_DIRS = {"checkpoints", "weights", "report_files"}


@dataclass
class RunInfo:
    path: Path
    config: dict[str, Any]
    record: dict[str, Any] | None = None  # None: interrupted (no metrics.json yet)

    @property
    def complete(self) -> bool:
        return self.record is not None

    @property
    def method(self) -> str:
        """The record's method (``zeroshot``, ``ensemble``, a registered method), else the config's (an ensemble's
        config has no ``method`` key, but an ensemble is written whole, never without its record)."""
        return (self.record or {}).get("method") or self.config.get("method") or "zeroshot"

    @property
    def model(self) -> str:
        """The model whose outputs the run reports (metrics.json's ``model``: a baseline's image classifier)."""
        return (self.record or {}).get("model") or self.model_spec

    @property
    def model_spec(self) -> str:
        """The run's ``model.spec`` setting: the CLIP model its comparison ran on (a baseline loads but never uses
        it), which keeps a baseline's rows beside the other runs of its comparison."""
        return (self.config.get("model") or {}).get("spec") or (self.record or {}).get("model") or "?"

    @property
    def dataset(self) -> str:
        return (self.record or {}).get("dataset") or self.config.get("data", {}).get("dataset", "?")

    @property
    def seed(self) -> int:
        return int((self.record or {}).get("seed", self.config.get("run", {}).get("seed", 0)))

    @property
    def label(self) -> str:
        """The report row a run belongs to: its run.label (a sweep cell), else the method (with the template set
        for zero-shot); an oracle's label says so."""
        named = (self.config.get("run") or {}).get("label")
        if named:
            label = str(named)
        elif self.method == "zeroshot" and self.record:
            label = f"zeroshot ({self.record.get('best_template_set')})"
        else:
            label = self.method
        if (self.record or {}).get("protocol"):  # a test-time run: never read as a few-shot row
            label = f"{label} ({self.record['protocol']}, stream seed {self.record['stream']['seed']})"
        return f"{label} {ORACLE_LABEL}" if self.oracle else label

    @cached_property
    def oracle(self) -> bool:
        """Chosen on the test split it reports (``zeroshot.select_on=test``), or built on such a run (an ensemble
        written before ensembles refused them): an upper bound, not a result."""
        return self.complete and oracle_source(self.path, self.record) is not None

    def history(self) -> list[dict[str, float]]:
        path = self.path / "history.csv"
        if not path.is_file():
            return []
        with path.open() as f:
            return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]

    def robustness(self) -> dict[str, Any]:
        path = self.path / ROBUSTNESS_FILE
        return json.loads(path.read_text()) if path.is_file() else {}


def find_runs(paths: list[str | Path]) -> list[RunInfo]:
    """Every run directory at or below ``paths`` (a directory with a config.yaml), complete or not."""
    found: dict[Path, RunInfo] = {}
    for root in map(Path, paths):
        if not root.exists():
            from clipadapt.errors import ClipAdaptError

            raise ClipAdaptError(f"'{root}' does not exist")
        candidates = [root] if (root / CONFIG_FILE).is_file() else sorted(p.parent for p in root.rglob(CONFIG_FILE))
        for directory in candidates:
            parts = directory.relative_to(root).parts if directory != root else ()
            if any(p.startswith(".") or p in SKIP_DIRS for p in parts):
                continue
            config = yaml.safe_load((directory / CONFIG_FILE).read_text()) or {}
            metrics = directory / METRICS_FILE
            record = json.loads(metrics.read_text()) if metrics.is_file() else None
            found[directory.resolve()] = RunInfo(directory, config, record)
    return list(found.values())


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


@dataclass
class Row:
    """One line of the comparison table: a (model, method) over its seeds."""

    dataset: str
    model: str  # what its runs report (RunInfo.model)
    method: str
    label: str
    runs: list[RunInfo] = field(default_factory=list)

    @property
    def model_spec(self) -> str:
        """The CLIP model of its comparison (``RunInfo.model_spec``), which differs from ``model`` for a baseline."""
        return self.runs[0].model_spec if self.runs else self.model

    def values(self, *keys: str) -> list[float]:
        out = []
        for run in self.runs:
            node: Any = run.record
            for key in keys:
                node = node.get(key) if isinstance(node, dict) else None
            if isinstance(node, int | float):
                out.append(float(node))
        return out

    def stat(self, *keys: str) -> tuple[float, float]:
        return mean_std(self.values(*keys))

    @property
    def seeds(self) -> list[int]:
        return sorted(run.seed for run in self.runs)


def table_rows(runs: list[RunInfo], oracles: bool = False) -> list[Row]:
    """Complete runs grouped by (dataset, CLIP model, label, reported model); zero-shot first, then by mean acc1, in
    each CLIP model's group (a baseline's rows stay with the runs of its comparison and name their classifier).
    Oracle runs (selected on test) are never rows of a results table: ``oracles=True`` returns them alone, for a
    table of their own."""
    rows: dict[tuple[str, str, str, str], Row] = {}
    for run in runs:
        if not run.complete or run.oracle != oracles:
            continue
        label = run.method if run.method == "zeroshot" and not run.oracle else run.label
        key = (run.dataset, run.model_spec, label, run.model)
        rows.setdefault(key, Row(run.dataset, run.model, run.method, run.label)).runs.append(run)
    return sorted(rows.values(), key=lambda r: (r.dataset, r.model_spec, r.method != "zeroshot",
                                                -(r.stat("metrics", "acc1")[0])))
