"""Run-directory records: metrics.json and the other per-run files, for every task.

Field names here are a public schema: add, never rename.
"""

from __future__ import annotations

import csv
import io
import platform
from pathlib import Path
from typing import Any

import torch
import transformers

from clipadapt.io import atomic_write_json, atomic_write_text
from clipadapt.version import __version__

METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"
PER_CLASS_FILE = "per_class.csv"
SKIPPED_FILE = "skipped_images.txt"
ORACLE_LABEL = "oracle (selected on test)"  # a number chosen on the split it reports: shown, never compared


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
