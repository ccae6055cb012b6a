"""Finished classification runs read back: their method with its trained weights (``load_run``), re-evaluated on
any split (``clipadapt eval``), or inspected (``clipadapt coop-words``)."""

from __future__ import annotations

from pathlib import Path

from clipadapt.classification.experiment import WEIGHTS_DIR, build_method, experiment_class, training_data
from clipadapt.config import from_dict
from clipadapt.data import load_dataset
from clipadapt.engine.rundir import read_run_config
from clipadapt.engine.trainer import Trainer, make_accelerator
from clipadapt.errors import ClipAdaptError
from clipadapt.io import atomic_write_json
from clipadapt.methods import METHODS
from clipadapt.methods.coop import ContextWord, nearest_words
from clipadapt.models import load_model, resolve_device


def load_run(run_dir: str | Path, device: str | None = None):
    """``(experiment, dataset, method)`` of a finished run, with its trained weights loaded."""
    run_dir = Path(run_dir)
    raw = read_run_config(run_dir)
    method_name = raw.get("method")
    if method_name is None:
        raise ClipAdaptError(f"'{run_dir}' is not a training run (its config names no method)")
    experiment = from_dict(experiment_class(method_name), raw)
    if device is not None:
        experiment.model.device = device
    if not (run_dir / WEIGHTS_DIR).is_dir():
        raise ClipAdaptError(f"run '{run_dir}' has no trained weights (interrupted? resume it with --resume)")
    dataset = load_dataset(experiment.data)
    bundle = load_model(experiment.model.spec, device=resolve_device(experiment.model.device),
                        revision=experiment.model.revision, trust_remote_code=experiment.model.trust_remote_code)
    method = build_method(METHODS.get(method_name), bundle, dataset, experiment.method_config())
    method.load_weights(run_dir / WEIGHTS_DIR)
    return experiment, dataset, method.to(bundle.device)


def evaluate_run(run_dir: str | Path, split: str = "test", device: str | None = None) -> dict:
    """Re-evaluate a saved run on a split; writes ``eval_<split>.json`` into the run directory."""
    run_dir = Path(run_dir)
    experiment, dataset, method = load_run(run_dir, device)
    dataset.split(split)
    accelerator = make_accelerator(method.bundle.device, experiment.train.precision)
    data = training_data(experiment, dataset, method, method.bundle.device)
    evaluation = Trainer(experiment.train, data, accelerator).evaluate(method, split)
    result = {"run": str(run_dir), "method": experiment.method, "model": experiment.model.spec,
              "dataset": dataset.name, "split": split, "metrics": evaluation.metrics,
              "loss": round(evaluation.loss, 6), "eval_images_per_s": round(evaluation.images_per_s, 2)}
    atomic_write_json(run_dir / f"eval_{split}.json", result)
    return result


def coop_words(run_dir: str | Path, top: int = 3, device: str | None = None) -> list[ContextWord]:
    """``clipadapt coop-words RUN_DIR``: nearest words of a finished CoOp run's context vectors."""
    experiment, _, method = load_run(run_dir, device)
    if experiment.method != "coop":
        raise ClipAdaptError(f"'{run_dir}' is a {experiment.method} run, not a coop run")
    return nearest_words(method, top)
