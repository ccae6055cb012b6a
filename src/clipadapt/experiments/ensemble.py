"""Ensembles of finished runs: class probabilities averaged, uniformly or with weights searched on validation.

Members must share the dataset, its class list and the model (so one preprocessing feeds them all). The ensemble is
written as a run directory: ``config.yaml`` names the members and their weights, and ``load_predictor`` rebuilds it
from them, so ``report``, ``predict`` and ``robustness`` treat it as any run. Logits of the ensemble are the log of
the averaged probabilities (its softmax is the average). An oracle member (chosen on the test split it reports) is
refused. ``selection`` records what was chosen on validation: the weights (``member_weights``) with ``--weights
val``, nothing (``on: none``) with uniform weights.
"""

from __future__ import annotations

import itertools
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipadapt.classification.artifacts import write_evaluation_artifacts
from clipadapt.classification.evaluation import require_classification_runs
from clipadapt.classification.predictors import EnsembleConfig, EnsembleExperiment, load_predictor
from clipadapt.config import from_dict, to_dict
from clipadapt.data import DataConfig
from clipadapt.engine.cost import peak_memory_mb, reset_peak_memory
from clipadapt.engine.metrics import classification_metrics
from clipadapt.engine.records import (
    CONFIG_FILE,
    build_metrics_record,
    refuse_oracle_runs,
    write_csv,
    write_metrics,
)
from clipadapt.engine.rundir import RunConfig, check_run_dir, read_run_config, save_config_dict
from clipadapt.engine.selection import Selections, describe_validation
from clipadapt.errors import ClipAdaptError, ConfigError
from clipadapt.io import atomic_write_json, staged_directory
from clipadapt.models.config import ModelConfig

log = logging.getLogger(__name__)
WEIGHT_MODES = ("uniform", "val")
ENSEMBLE_FILE = "ensemble.json"


def simplex_grid(members: int, steps: int) -> list[tuple[float, ...]]:
    """Every weight vector with entries k / steps summing to 1."""
    points = []
    for cut in itertools.combinations(range(steps + members - 1), members - 1):
        parts = np.diff([-1, *cut, steps + members - 1]) - 1
        points.append(tuple(float(p) / steps for p in parts))
    return points


def search_weights(probabilities: list[np.ndarray], labels: np.ndarray,
                   selections: Selections | None = None) -> tuple[list[float], list[dict]]:
    """Weights on a simplex grid (tenths up to 4 members, fifths up to 10) scored on val: accuracy, then loss, then
    nearness to uniform; the choice is logged in ``selections`` (as ``member_weights``) when given."""
    n = len(probabilities)
    steps = 10 if n <= 4 else 5
    if n > 10:
        raise ConfigError(f"--weights val searches a grid over at most 10 members, got {n}; use --weights uniform")
    rows = []
    for weights in simplex_grid(n, steps):
        mixed = mix(probabilities, weights)
        accuracy = float((mixed.argmax(-1) == labels).mean())
        loss = float(-np.log(np.clip(mixed[np.arange(len(labels)), labels], 1e-12, 1)).mean())
        rows.append({"weights": list(weights), "val_acc": accuracy, "val_loss": loss})
    uniform = 1.0 / n
    best = (selections or Selections()).choose(
        "member_weights", rows, lambda r: (r["val_acc"], -r["val_loss"],
                                           -sum(abs(w - uniform) for w in r["weights"])),  # ties: nearest uniform
        split="val", images=len(labels), value=lambda r: list(r["weights"]),
        scores=lambda r: {"val_acc": r["val_acc"], "val_loss": r["val_loss"]})
    return best["weights"], rows


def _members(run_dirs: list[Path], device: str | None):
    from clipadapt.data.base import same_classes
    from clipadapt.engine.records import METRICS_FILE

    if not run_dirs:
        raise ConfigError("an ensemble needs at least one run directory")
    predictors = []
    for run_dir in run_dirs:
        if not (run_dir / METRICS_FILE).is_file():
            raise ClipAdaptError(f"'{run_dir}' is not a finished run (no {METRICS_FILE})")
        predictors.append(load_predictor(run_dir, device))
    first = predictors[0]
    first_config = read_run_config(run_dirs[0])
    for run_dir, predictor in zip(run_dirs[1:], predictors[1:], strict=True):
        config = read_run_config(run_dir)
        for key, what in (("dataset", "dataset"), ("shots", "shots"), ("seed", "data seed"),
                          ("sampler", "sampler")):
            if config["data"].get(key) != first_config["data"].get(key):
                raise ConfigError(f"'{run_dir}' was trained on {what} {config['data'].get(key)!r}, '{run_dirs[0]}' "
                                  f"on {first_config['data'].get(key)!r}: ensemble members must share the data")
        same_classes(f"'{run_dirs[0]}'", first.classnames, f"'{run_dir}'", predictor.classnames)
        if config["model"]["spec"] != first_config["model"]["spec"] or predictor.preprocess.config != \
                first.preprocess.config:
            raise ConfigError(f"'{run_dir}' uses model {config['model']['spec']}, '{run_dirs[0]}' "
                              f"{first_config['model']['spec']}: ensemble members must share the model")
    return predictors, first_config


def _split_probabilities(predictors, split: str) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Each member's class probabilities on a split (images read once, every member on each batch)."""
    from clipadapt.engine.features import readable_batches

    data = predictors[0].dataset.split(split)
    probabilities: list[list[torch.Tensor]] = [[] for _ in predictors]
    labels, positions = [], []
    for pixels, batch in readable_batches(data, predictors[0].preprocess, 64, -1, False, [], f"ensemble: {split}"):
        for k, predictor in enumerate(predictors):
            probabilities[k].append(predictor.probabilities(pixels))
        labels.append(batch["labels"].numpy())
        positions.append(batch["positions"].numpy())
    return ([torch.cat(p).numpy() for p in probabilities], np.concatenate(labels), np.concatenate(positions))


def mix(probabilities: list[np.ndarray], weights) -> np.ndarray:
    """The weighted mean of the members' class probabilities, (images, classes)."""
    return np.tensordot(np.asarray(weights, dtype=np.float64), np.stack(probabilities).astype(np.float64), axes=1)


def ensemble_logits(probabilities: list[np.ndarray], weights: list[float]) -> torch.Tensor:
    return torch.from_numpy(np.log(np.clip(mix(probabilities, weights), 1e-30, None))).float()


def run_ensemble(run_dirs: list[str | Path], out: str | Path, mode: str = "uniform", overwrite: bool = False,
                 device: str | None = None, label: str | None = None) -> dict[str, Any]:
    if mode not in WEIGHT_MODES:
        raise ConfigError(f"unknown --weights '{mode}'; valid choices: {', '.join(WEIGHT_MODES)}")
    run_dirs, out = [Path(r) for r in run_dirs], Path(out)
    require_classification_runs(run_dirs, "an ensemble")
    refuse_oracle_runs(run_dirs, "an ensemble")
    check_run_dir(out, overwrite)
    started = time.perf_counter()
    predictors, first_config = _members(run_dirs, device)
    reset_peak_memory(predictors[0].device)  # the members loaded: the peak of scoring with all of them
    dataset = predictors[0].dataset
    uniform = [1.0 / len(predictors)] * len(predictors)
    search_rows: list[dict] = []
    val_probabilities, val_labels, _ = _split_probabilities(predictors, "val")
    val_members = [float((p.argmax(-1) == val_labels).mean()) for p in val_probabilities]
    selections = Selections()  # what was chosen on val: the weights with --weights val, nothing with uniform
    selections.validation = describe_validation(dataset.split("val"))
    weights = uniform
    if mode == "val" and len(predictors) > 1:
        weights, search_rows = search_weights(val_probabilities, val_labels, selections)
    val_metrics = classification_metrics(ensemble_logits(val_probabilities, weights), val_labels)
    split = first_config["data"].get("split", "test")
    test_probabilities, labels, positions = _split_probabilities(predictors, split)  # read once, at the end
    logits = ensemble_logits(test_probabilities, weights)
    metrics = classification_metrics(logits, labels)
    seconds = time.perf_counter() - started

    experiment = EnsembleExperiment(
        ensemble=EnsembleConfig(runs=[str(r) for r in run_dirs], weights=[round(w, 6) for w in weights], mode=mode),
        model=from_dict(ModelConfig, first_config["model"]), data=from_dict(DataConfig, first_config["data"]),
        run=RunConfig(out=str(out), seed=first_config["run"].get("seed", 0),
                      label=label or f"ensemble of {len(run_dirs)}"))
    resolved = to_dict(experiment)
    members = [{"run": str(r), "label": p.label, "weight": w, "val_acc": a,
                "test_acc": float((tp.argmax(-1) == labels).mean())}
               for r, p, w, a, tp in zip(run_dirs, predictors, weights, val_members, test_probabilities, strict=True)]
    record = build_metrics_record(
        method="ensemble", model=experiment.model.spec, dataset=dataset.name, split=split, metrics=metrics,
        params={"trainable": 0, "total": 0, "trainable_pct": 0.0, "members": len(run_dirs)},
        cost={"train_time_s": round(seconds, 3), "peak_mem_mb": round(peak_memory_mb(predictors[0].device), 1),
              "train_images_per_s": 0.0,
              "eval_images_per_s": round(len(labels) / seconds, 2) if seconds > 0 else 0.0},
        seed=experiment.run.seed, config=resolved, device=predictors[0].device, best_epoch=0,
        selection=selections.record(weights=mode, val_acc=val_metrics["acc1"]), num_classes=dataset.num_classes,
        members=members)
    with staged_directory(out, overwrite=overwrite) as stage:
        save_config_dict(resolved, stage / CONFIG_FILE)
        atomic_write_json(stage / ENSEMBLE_FILE, {"members": members, "mode": mode, "weights": weights,
                                                  "search": search_rows})
        if search_rows:
            write_csv(stage / "weight_search.csv", [{**{f"w{k}": w for k, w in enumerate(r["weights"])},
                                                      "val_acc": r["val_acc"], "val_loss": r["val_loss"]}
                                                     for r in search_rows])
        write_evaluation_artifacts(stage, dataset, split, positions, labels, logits, "ensemble",
                                   experiment.run.samples, experiment.run.seed)
        write_metrics(stage, record)
    log.info("wrote %s", out)
    return {"run_dir": out, "record": record, "members": members, "weights": weights}
