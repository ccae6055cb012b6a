"""Training runs: ``clipadapt train METHOD`` and ``clipadapt eval RUN_DIR`` as library calls.

A run directory holds ``config.yaml`` from the start (with ``checkpoints/`` while training) and gets its results
at the end: ``weights/``, ``history.csv``, ``curves.png``, ``confusion.png``, ``per_class.csv``, ``predictions.png``
and, last, ``metrics.json``. A directory without metrics.json is an interrupted run that ``--resume`` continues.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from clipadapt.config import from_dict, option, to_dict
from clipadapt.data import DataConfig, load_dataset
from clipadapt.data.prompts import TemplateSet, resolve_template_sets
from clipadapt.engine.checkpoint import remove_checkpoints
from clipadapt.engine.cost import peak_memory_mb, reset_peak_memory
from clipadapt.engine.features import FeatureCache
from clipadapt.engine.inputs import TrainingData
from clipadapt.engine.trainer import Evaluation, FitResult, TrainConfig, Trainer, make_accelerator
from clipadapt.errors import ClipAdaptError, ConfigError
from clipadapt.io import atomic_write_json, staged_directory
from clipadapt.methods import METHODS, Method, MethodEntry
from clipadapt.models import load_model, resolve_device
from clipadapt.models.config import ModelConfig
from clipadapt.reports.results import (
    CONFIG_FILE,
    METRICS_FILE,
    build_metrics_record,
    write_csv,
    write_metrics,
    write_skipped,
)
from clipadapt.runs import (
    RunConfig,
    RunOutput,
    check_run_dir,
    default_run_dir,
    start_run_dir,
    write_evaluation_artifacts,
)

log = logging.getLogger(__name__)
WEIGHTS_DIR = "weights"
HISTORY_FILE = "history.csv"
RESUMABLE_KEYS = {("run", "resume"), ("run", "overwrite"), ("run", "out")}  # may differ when resuming


@dataclass
class TrainRunConfig(RunConfig):
    resume: bool = option(False, help="continue an interrupted run in the same directory")
    init_from: str | None = option(None, help="a finished run to start from: its head and every trainable weight "
                                              "whose name and shape match (two-stage training)")


@dataclass
class TrainExperiment:
    """Common sections; ``experiment_class(method)`` adds the method's own section (``lora:``, ``full_ft:``)."""

    method: str = option("linear-probe", help="adaptation method (see `clipadapt methods`)")
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: TrainRunConfig = field(default_factory=TrainRunConfig)

    def method_config(self):
        return getattr(self, METHODS.get(self.method).section)


def method_experiment_class(base: type, method: str, section: str, config_class: type) -> type:
    """A dataclass with ``base``'s common sections plus ``<section>: <config_class>`` (the method's own)."""
    return dataclasses.make_dataclass(
        f"{config_class.__name__}{base.__name__}",
        [("method", str, option(method, help="adaptation method")),
         (section, config_class, field(default_factory=config_class))],
        bases=(base,),
    )


def load_method_experiment(cls: type, method: str, config_file: str | Path | None, overrides: list[str] | None,
                           what: str = "method"):
    """Defaults, then a YAML file (e.g. a run's config.yaml), then ``section.key=value`` overrides."""
    from clipadapt.config import load_config

    experiment = load_config(cls, config_file, overrides)
    if experiment.method != method:
        raise ConfigError(f"config file is for {what} '{experiment.method}', not '{method}'")
    return experiment


def experiment_class(method: str) -> type[TrainExperiment]:
    """A dataclass with the common sections plus ``<method>: <MethodConfig>``."""
    entry = METHODS.get(method)
    return method_experiment_class(TrainExperiment, method, entry.section, entry.config_class)


def load_experiment(method: str, config_file: str | Path | None = None,
                    overrides: list[str] | None = None) -> TrainExperiment:
    """Defaults, then a YAML file (e.g. a run's config.yaml), then ``section.key=value`` overrides."""
    return load_method_experiment(experiment_class(method), method, config_file, overrides)


def head_templates(dataset) -> TemplateSet:
    """The dataset's recommended template sets as one ensemble (for zero-shot-initialised heads)."""
    templates: list = []
    for template_set in resolve_template_sets(dataset.templates):
        templates += [t for t in template_set.templates if t not in templates]
    return TemplateSet("head", templates)


def build_method(entry: MethodEntry, bundle, dataset, method_config) -> Method:
    return entry.method_class(bundle, dataset.classnames, method_config, head_templates(dataset))


def _differences(old: Any, new: Any, prefix: tuple = ()) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += _differences(old.get(key), new.get(key), prefix + (key,))
        return out
    if prefix in RESUMABLE_KEYS or old == new:
        return []
    return [f"{'.'.join(map(str, prefix))}: {old!r} -> {new!r}"]


def check_train_run_dir(run_dir: Path, resolved: dict, resume: bool, overwrite: bool) -> None:
    if resume:
        saved = run_dir / CONFIG_FILE
        if not saved.is_file():
            raise ClipAdaptError(f"cannot resume: '{run_dir}' is not a run directory (no {CONFIG_FILE})")
        if (run_dir / METRICS_FILE).is_file():
            raise ClipAdaptError(f"run '{run_dir}' is already complete; nothing to resume (--overwrite retrains it)")
        changed = _differences(yaml.safe_load(saved.read_text()), resolved)
        if changed:
            raise ClipAdaptError(f"cannot resume '{run_dir}' with a different config: {'; '.join(changed[:6])}")
    else:
        check_run_dir(run_dir, overwrite, resumable=True)


def run_training(experiment: TrainExperiment, callbacks: dict[str, list] | None = None) -> RunOutput:
    """Train one method, select it on validation, evaluate the test split once and write the run directory."""
    from accelerate.utils import set_seed

    cfg = experiment
    entry = METHODS.get(cfg.method)
    run_dir = Path(cfg.run.out) if cfg.run.out else default_run_dir(cfg.model.spec, cfg.data.dataset, cfg.method)
    resolved = to_dict(cfg)
    resolved["run"]["out"] = str(run_dir)
    accelerator = make_accelerator(resolve_device(cfg.model.device), cfg.train.precision, cfg.train.log_with, run_dir)
    check_train_run_dir(run_dir, resolved, cfg.run.resume, cfg.run.overwrite)

    dataset = load_dataset(cfg.data)
    for split in ("train", "val", cfg.data.split):
        dataset.split(split)  # a clear error before any heavy work
    if cfg.data.split in ("train", "val"):
        raise ConfigError(f"data.split '{cfg.data.split}' is used for training or model selection; "
                          f"evaluate on a held-out split (test)")
    device = accelerator.device
    reset_peak_memory(device)
    bundle = load_model(cfg.model.spec, device=device, revision=cfg.model.revision,
                        trust_remote_code=cfg.model.trust_remote_code)
    set_seed(cfg.run.seed)
    method = build_method(entry, bundle, dataset, cfg.method_config())
    initialised = None
    if cfg.run.init_from:  # a resumed run then restores its own checkpoint over it
        from clipadapt.two_stage import initialise_from_run

        initialised = initialise_from_run(method, cfg.run.init_from, dataset, cfg.model.spec)
    data = training_data(cfg, dataset, method, device, accelerator)

    start_run_dir(accelerator, run_dir, resolved, cfg.run.resume)

    trainer = Trainer(cfg.train, data, accelerator, run_dir=run_dir, resume=cfg.run.resume)
    for event, functions in (callbacks or {}).items():
        for function in functions:
            trainer.add_callback(event, function)
    fit = method.fit(trainer)
    evaluation = trainer.evaluate(method, cfg.data.split)  # the only time the test split is read
    record = run_record(cfg, resolved, method, dataset, fit, evaluation, device, accelerator.num_processes)
    if initialised is not None:
        record["init_from"] = initialised
    if accelerator.is_main_process:
        write_run_results(run_dir, method, dataset, fit, evaluation, record, data, cfg.run.samples, cfg.run.seed)
        remove_checkpoints(run_dir)
    accelerator.wait_for_everyone()
    log.info("wrote %s", run_dir)
    return RunOutput(run_dir, record, evaluation, main_process=accelerator.is_main_process)


def training_data(cfg: TrainExperiment, dataset, method: Method, device, accelerator=None) -> TrainingData:
    """A run's inputs as its config says: the method's own preprocessing and augmentation, the feature cache."""
    return TrainingData(
        dataset, method.bundle, batch_size=cfg.train.batch_size, eval_batch_size=cfg.train.eval_batch_size,
        num_workers=cfg.data.num_workers, strict=cfg.data.strict, augment=method.augment or cfg.train.augment,
        preprocess=method.preprocess, seed=cfg.run.seed, cache=FeatureCache() if cfg.run.feature_cache else None,
        device=device, main_process_first=accelerator.main_process_first if accelerator is not None else None)


def run_record(cfg, resolved, method: Method, dataset, fit: FitResult, evaluation: Evaluation, device,
               processes: int) -> dict:
    """metrics.json of a classification run (also of a WiSE-FT run, whose "fit" is its alpha search)."""
    return build_metrics_record(
        method=cfg.method, model=cfg.model.spec, dataset=dataset.name, split=evaluation.split,
        metrics=evaluation.metrics, params=method.num_parameters(),
        cost={"train_time_s": round(fit.train_time_s, 3), "peak_mem_mb": round(peak_memory_mb(device), 1),
              "train_images_per_s": round(fit.train_images_per_s, 2),
              "eval_images_per_s": round(evaluation.images_per_s, 2)},
        seed=cfg.run.seed, config=resolved, device=device, best_epoch=fit.best_epoch,
        selection={"on": "val", **fit.selection}, num_classes=dataset.num_classes,
        shots=dataset.info.get("shots"), test_loss=round(evaluation.loss, 6), processes=processes,
    )


def write_run_results(run_dir: Path, method: Method, dataset, fit: FitResult, evaluation: Evaluation,
                      record: dict, data: TrainingData, samples: int, seed: int) -> None:
    """Weights, history, curves, evaluation figures and metrics.json of a finished run."""
    from clipadapt.reports import plots  # matplotlib only where a figure is drawn

    with staged_directory(run_dir / WEIGHTS_DIR, overwrite=True) as stage:
        method.save_weights(stage)
    write_csv(run_dir / HISTORY_FILE, fit.history)
    plots.plot_training_curves(fit.history, run_dir / "curves.png", title=f"{method.name} on {dataset.name}")
    write_evaluation_artifacts(run_dir, dataset, evaluation.split, evaluation.positions, evaluation.labels,
                               evaluation.logits, method.name, samples, seed)
    skipped = data.skipped_rows()
    record["skipped_images"] = {"count": len(skipped), "file": "skipped_images.txt" if skipped else None}
    write_skipped(run_dir, skipped)
    write_metrics(run_dir, record)  # last: its presence marks the run complete


# -- re-evaluation ----------------------------------------------------------------------------------------------


def load_run(run_dir: str | Path, device: str | None = None):
    """``(experiment, dataset, method)`` of a finished run, with its trained weights loaded."""
    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        raise ClipAdaptError(f"'{run_dir}' is not a run directory (no {CONFIG_FILE})")
    raw = yaml.safe_load(config_path.read_text()) or {}
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
