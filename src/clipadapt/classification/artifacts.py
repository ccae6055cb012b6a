"""What every classification evaluation leaves in its run directory: per_class.csv, confusion.png,
reliability.csv/png (calibration) and predictions.png (zero-shot, trained and ensemble runs alike)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from clipadapt.engine.calibration import confidences_and_correct, ece_from_bins, reliability_bins
from clipadapt.engine.metrics import confusion, per_class_rows
from clipadapt.engine.records import PER_CLASS_FILE, RELIABILITY_FILE, write_csv


def write_evaluation_artifacts(run_dir: Path, dataset, split: str, positions: np.ndarray, labels: np.ndarray,
                               logits: torch.Tensor, title: str, samples: int, seed: int) -> None:
    """per_class.csv, confusion.png, reliability.csv/png and predictions.png of one evaluation (zero-shot and
    trained runs alike)."""
    from clipadapt.reports import plots  # matplotlib only where a figure is drawn

    write_csv(run_dir / PER_CLASS_FILE, per_class_rows(logits, labels, dataset.classnames))
    plots.plot_confusion(confusion(logits, labels, dataset.num_classes), dataset.classnames,
                         run_dir / "confusion.png", title=f"{title} on {dataset.name} {split}")
    bins = reliability_bins(*confidences_and_correct(logits, labels))
    write_csv(run_dir / RELIABILITY_FILE, bins)  # the numbers of the diagram and of metrics.json's ece
    plots.plot_reliability(bins, ece_from_bins(bins), run_dir / "reliability.png",
                           title=f"{title} on {dataset.name} {split}")
    write_prediction_grid(run_dir / "predictions.png", dataset, split, positions, labels, logits, samples, seed,
                          title=title)


def write_prediction_grid(path: Path, dataset, split_name: str, positions: np.ndarray, labels: np.ndarray,
                          logits: torch.Tensor, samples: int, seed: int, title: str = "") -> None:
    if samples == 0 or len(positions) == 0:
        return
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(positions), size=min(samples, len(positions)), replace=False))
    split = dataset.split(split_name)
    probs = logits[torch.as_tensor(chosen)].softmax(dim=-1)
    k = min(5, dataset.num_classes)
    top = probs.topk(k, dim=-1)
    images = [split.load(int(positions[i])) for i in chosen]
    from clipadapt.reports import plots

    plots.plot_prediction_grid(
        images, [dataset.classnames[int(labels[i])] for i in chosen],
        [[dataset.classnames[j] for j in row] for row in top.indices.tolist()],
        top.values.tolist(), path, title=title,
    )
