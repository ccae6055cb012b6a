"""Finished classification runs read back: their method with its trained weights (``load_run``), re-evaluated on
any split (``clipadapt eval``), or inspected (``clipadapt coop-words``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from clipadapt.classification.experiment import WEIGHTS_DIR, build_method, experiment_class, training_data
from clipadapt.config import apply_overrides, from_dict, override_section
from clipadapt.data import load_dataset
from clipadapt.engine.rundir import read_run_config
from clipadapt.engine.trainer import Trainer, make_accelerator
from clipadapt.errors import ClipAdaptError, ConfigError
from clipadapt.io import atomic_write_json
from clipadapt.methods.coop import ContextWord, nearest_words
from clipadapt.models import load_model, resolve_device


def require_classification_runs(run_dirs: Sequence[str | Path], workflow: str) -> None:
    """One line naming the first run of another task (a caption run) given to ``workflow``, before anything loads
    or is written."""
    for run_dir in run_dirs:
        task = read_run_config(run_dir).get("task") or "classification"
        if task != "classification":
            kind = "a caption run" if task == "captioning" else f"a {task} run"
            raise ConfigError(f"'{run_dir}' is {kind}; {workflow} needs classification runs (clipadapt train, "
                              f"compare or zeroshot)")


def load_run(run_dir: str | Path, device: str | None = None, data: Sequence[str] = ()):
    """``(experiment, dataset, method)`` of a finished run, with its trained weights loaded.

    ``data``: ``data.*`` overrides that point the run at other images or classes (``data.subsample=new``,
    ``data.dataset=world:colour``). The method is then built for the new classes and its trained weights loaded
    into it; a run whose trained state holds anything per class (a trained head, Tip-Adapter's cache) cannot be
    moved to other classes and says so, instead of scoring new classes with old class vectors.
    """
    run_dir = Path(run_dir)
    raw = read_run_config(run_dir)
    method_name = raw.get("method")
    if "stream" in raw:
        raise ClipAdaptError(f"'{run_dir}' is a test-time run ({raw['stream'].get('method')}): it adapted on its "
                             f"test stream and kept no weights to load; its metrics.json already scores that stream")
    if method_name is None:
        raise ClipAdaptError(f"'{run_dir}' is not a training run (its config names no method)")
    experiment = from_dict(experiment_class(method_name), raw)
    if device is not None:
        experiment.model.device = device
    if not (run_dir / WEIGHTS_DIR).is_dir():
        raise ClipAdaptError(f"run '{run_dir}' has no trained weights (interrupted? resume it with --resume)")
    own_classes = None
    if data:
        bad = [item for item in data if override_section(item) != "data"]
        if bad:
            raise ConfigError(f"'{bad[0]}': only data.* settings can change when a run is evaluated")
        own_classes = load_dataset(experiment.data).classnames
        experiment = apply_overrides(experiment, list(data))
    dataset = load_dataset(experiment.data)
    bundle = load_model(experiment.model.spec, device=resolve_device(experiment.model.device),
                        revision=experiment.model.revision, trust_remote_code=experiment.model.trust_remote_code)
    method = build_method(experiment, bundle, dataset)
    if own_classes is not None and list(own_classes) != list(dataset.classnames):
        per_class = method.per_class_state()
        if per_class:
            raise ClipAdaptError(
                f"{method_name} cannot be evaluated on other classes: its trained state is per class "
                f"({', '.join(per_class[:3])}); methods whose classifier comes from class names (coop, a frozen text "
                f"head) can (run '{run_dir}', trained on {len(own_classes)} classes, asked for the "
                f"{dataset.num_classes} of '{dataset.name}'{_half(experiment.data.subsample)})")
        method.trained_classes = list(own_classes)
    method.load_weights(run_dir / WEIGHTS_DIR)
    return experiment, dataset, method.to(bundle.device)


def _half(subsample: str) -> str:
    return "" if subsample == "all" else f", {subsample} half"


def evaluate_run(run_dir: str | Path, split: str = "test", device: str | None = None, data: Sequence[str] = (),
                 out: str | Path | None = None) -> dict:
    """Re-evaluate a saved run on a split (of other data or classes with ``data``, as in ``load_run``); writes
    ``out`` (default ``eval_<split>.json`` in the run directory)."""
    run_dir = Path(run_dir)
    experiment, dataset, method = load_run(run_dir, device, data)
    dataset.split(split)
    accelerator = make_accelerator(method.bundle.device, experiment.train.precision)
    inputs = training_data(experiment, dataset, method, method.bundle.device)
    evaluation = Trainer(experiment.train, inputs, accelerator).evaluate(method, split)
    result = {"run": str(run_dir), "method": experiment.method, "model": experiment.model.spec,
              "dataset": dataset.name, "split": split, "metrics": evaluation.metrics,
              "loss": round(evaluation.loss, 6), "eval_images_per_s": round(evaluation.images_per_s, 2)}
    if data:
        result["data"] = list(data)
        result["classes"] = dataset.num_classes
    atomic_write_json(Path(out) if out is not None else run_dir / f"eval_{split}.json", result)
    return result


def coop_words(run_dir: str | Path, top: int = 3, device: str | None = None) -> list[ContextWord]:
    """``clipadapt coop-words RUN_DIR``: nearest words of a finished CoOp run's context vectors."""
    experiment, _, method = load_run(run_dir, device)
    if experiment.method != "coop":
        raise ClipAdaptError(f"'{run_dir}' is a {experiment.method} run, not a coop run")
    return nearest_words(method, top)
