"""Run-directory records: metrics.json and the other per-run files, for every task.

Field names here are a public schema: add, never rename.
"""

from __future__ import annotations

import csv
import io
import json
import platform
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import transformers

from clipadapt.errors import ConfigError
from clipadapt.io import atomic_write_json, atomic_write_text
from clipadapt.version import __version__

METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"
PER_CLASS_FILE = "per_class.csv"
RELIABILITY_FILE = "reliability.csv"  # ECE's bins: count, accuracy, mean confidence
SKIPPED_FILE = "skipped_images.txt"
ORACLE_LABEL = "oracle (selected on test)"  # a number chosen on the split it reports: shown, never compared


def is_oracle(record: Mapping[str, Any] | None) -> bool:
    """Whether a run's metrics.json says it chose on the split it reports (``selection.on: test``): an oracle, an
    upper bound that is shown with ``ORACLE_LABEL`` and never built on. Zero-shot runs also say it with ``oracle``
    and ``selected_on``; any of the three is enough."""
    if not record:
        return False
    selection = record.get("selection")
    return (bool(record.get("oracle")) or record.get("selected_on") == "test"
            or (isinstance(selection, Mapping) and selection.get("on") == "test"))


def read_record(run_dir: str | Path) -> dict[str, Any] | None:
    """A run directory's metrics.json, or None while it has none (an unfinished run)."""
    path = Path(run_dir) / METRICS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def oracle_source(run_dir: str | Path, record: Mapping[str, Any] | None = None) -> Path | None:
    """The run that makes ``run_dir`` an oracle: itself (``is_oracle``), or a member it was built from (an ensemble's
    ``members``, written before ensembles refused oracles), else None."""
    record = read_record(run_dir) if record is None else record
    if is_oracle(record):
        return Path(run_dir)
    for member in (record or {}).get("members") or []:
        found = oracle_source(member["run"]) if isinstance(member, Mapping) and member.get("run") else None
        if found is not None:
            return found
    return None


def refuse_oracle_runs(run_dirs: Iterable[str | Path], workflow: str, instead: str | None = None) -> None:
    """One line naming the first oracle among ``run_dirs`` (``oracle_source``) and what to do ``instead`` (default:
    re-run it choosing on validation), before ``workflow`` (a phrase: "an ensemble", "WiSE-FT") reads or writes
    anything."""
    for run_dir in run_dirs:
        source = oracle_source(run_dir)
        if source is None:
            continue
        record = read_record(source) or {}
        instead = instead or ("re-run it with --set zeroshot.select_on=val (or none)"
                              if record.get("method") == "zeroshot" else "re-run it choosing on validation")
        what = f"'{run_dir}' is" if source == Path(run_dir) else f"'{run_dir}' is built on '{source}',"
        raise ConfigError(f"{what} an {ORACLE_LABEL}: it chose on the split it reports, so {workflow} cannot use "
                          f"it; {instead}")


def environment(device: torch.device | str) -> dict[str, str]:
    return {
        "clipadapt": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": str(device),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }


def build_metrics_record(
    *,
    method: str,
    model: str,
    dataset: str,
    split: str,
    metrics: dict[str, Any],
    params: dict[str, Any],
    cost: dict[str, Any],
    seed: int,
    config: dict[str, Any],
    device: torch.device | str,
    **extra: Any,
) -> dict[str, Any]:
    record = {
        "method": method, "model": model, "dataset": dataset, "split": split, "metrics": metrics,
        "params": params, "cost": cost, "seed": seed, "config": config, "env": environment(device),
    }
    record.update(extra)
    return record


def write_metrics(run_dir: str | Path, record: dict[str, Any]) -> Path:
    path = Path(run_dir) / METRICS_FILE
    atomic_write_json(path, record)
    return path


def write_csv(path: str | Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buffer.getvalue())


def write_skipped(run_dir: str | Path, skipped: list[tuple[str, str, str]]) -> Path | None:
    """``(split, item, reason)`` lines; nothing is written when no image was skipped."""
    if not skipped:
        return None
    path = Path(run_dir) / SKIPPED_FILE
    atomic_write_text(path, "".join(f"{split}\t{item}\t{reason}\n" for split, item, reason in skipped))
    return path
