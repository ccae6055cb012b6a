"""Training runs: ``clipadapt train METHOD`` as a library call.

A run directory holds ``config.yaml`` from the start (with ``checkpoints/`` while training) and gets its results
at the end: ``weights/``, ``history.csv``, ``curves.png``, ``confusion.png``, ``per_class.csv``, ``reliability.png``
and ``.csv`` (calibration), ``predictions.png`` and, last, ``metrics.json``. A directory without metrics.json is an
interrupted run that ``--resume`` continues.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from clipadapt.classification.artifacts import write_evaluation_artifacts
from clipadapt.classification.experiment import (
    WEIGHTS_DIR,
    TrainExperiment,
    build_method,
    training_data,
    views_record,
)
from clipadapt.classification.forgetting import load_control
from clipadapt.classification.two_stage import initialise_from_run
from clipadapt.config import to_dict
from clipadapt.data import load_dataset
from clipadapt.data.fewshot import write_fewshot_file
from clipadapt.data.registry import resolved_data
from clipadapt.engine.checkpoint import remove_checkpoints
from clipadapt.engine.cost import peak_memory_mb, reset_peak_memory
from clipadapt.engine.features import FeatureCache
from clipadapt.engine.inputs import TrainingData
from clipadapt.engine.records import build_metrics_record, write_csv, write_metrics, write_skipped
from clipadapt.engine.rundir import RunOutput, check_train_run_dir, default_run_dir, resumable, start_run_dir
from clipadapt.engine.selection import Selections, chosen_epoch, describe_validation
from clipadapt.engine.trainer import Evaluation, FitResult, Trainer, make_accelerator
from clipadapt.io import staged_directory
from clipadapt.methods import METHODS, Method
from clipadapt.models import load_model, resolve_device

log = logging.getLogger(__name__)
HISTORY_FILE = "history.csv"


def run_training(experiment: TrainExperiment, callbacks: dict[str, list] | None = None) -> RunOutput:
    """Train one method, select it on validation, evaluate the test split once and write the run directory."""
    from accelerate.utils import set_seed

    # the sampler resolved (CoOp's data: coop) and the method's reference validation shots: recorded as used
    cfg = dataclasses.replace(experiment, data=resolved_data(
        experiment.data, METHODS.get(experiment.method).method_class.validation_shots))
    run_dir = Path(cfg.run.out) if cfg.run.out else default_run_dir(cfg.model.spec, cfg.data.dataset, cfg.method)
    resolved = to_dict(cfg)
    resolved["run"]["out"] = str(run_dir)
    accelerator = make_accelerator(resolve_device(cfg.model.device), cfg.train.precision, cfg.train.log_with, run_dir)
    check_train_run_dir(run_dir, resolved, cfg.run.resume, cfg.run.overwrite, type(cfg))

    plan = planned_choices(cfg)
    # a run that chooses nothing carves no validation out of its training images (an official val split stays, for
    # the curve); one that chooses needs one
    dataset = load_dataset(cfg.data if plan else dataclasses.replace(cfg.data, val_fraction=0.0))
    for split in ("train", cfg.data.split, *(("val",) if plan else ())):
        dataset.split(split)  # a clear error before any heavy work
    dataset.check_held_out(cfg.data.split)
    control = load_control(cfg.eval, cfg.data, cfg.method)  # a bad control fails here, before anything is written
    device = accelerator.device
    reset_peak_memory(device)
    bundle = load_model(cfg.model.spec, device=device, revision=cfg.model.revision,
                        trust_remote_code=cfg.model.trust_remote_code)
    if control is not None:  # the frozen model, before the method attaches anything to it
        control.measure_before(bundle, FeatureCache() if cfg.run.feature_cache else None, accelerator.autocast())
    set_seed(cfg.run.seed)
    method = build_method(cfg, bundle, dataset)
    initialised = None
    if cfg.run.init_from:  # a resumed run then restores its own checkpoint over it
        initialised = initialise_from_run(method, cfg.run.init_from, dataset, cfg.model.spec)
    data = training_data(cfg, dataset, method, device, accelerator)

    with resumable(run_dir):  # from here on, an interruption says how to resume
        start_run_dir(accelerator, run_dir, resolved, cfg.run.resume)

        trainer = Trainer(cfg.train, data, accelerator, run_dir=run_dir, resume=cfg.run.resume)
        if not plan:  # a val split it has draws the curve only
            trainer.selections.validation = describe_validation(dataset.splits.get("val"), chooses=False)
        for event, functions in (callbacks or {}).items():
            for function in functions:
                trainer.add_callback(event, function)
        fit = method.fit(trainer)
        evaluation = trainer.evaluate(method, cfg.data.split)  # the only time the test split is read
        record = run_record(cfg, resolved, method, dataset, fit, evaluation, device, accelerator.num_processes,
                            trainer.selections)
        if initialised is not None:
            record["init_from"] = initialised
        if control is not None:  # read after every choice was made: the control never chooses
            record["control"] = control.record(method, accelerator.autocast())
        if accelerator.is_main_process:
            write_run_results(run_dir, method, dataset, fit, evaluation, record, data, cfg.run.samples, cfg.run.seed)
            remove_checkpoints(run_dir)
        accelerator.wait_for_everyone()
    log.info("wrote %s", run_dir)
    return RunOutput(run_dir, record, evaluation, main_process=accelerator.is_main_process)


def planned_choices(cfg: TrainExperiment) -> tuple[str, ...]:
    """What the run's method and settings choose on validation (() is val-free)."""
    return METHODS.get(cfg.method).method_class.planned_choices(cfg.method_config(), cfg.train)


def run_record(cfg, resolved, method: Method, dataset, fit: FitResult, evaluation: Evaluation, device,
               processes: int, selections: Selections) -> dict:
    """metrics.json of a classification run (also of a WiSE-FT run, whose "fit" is its alpha search); its
    ``selection`` is what ``selections`` recorded while the run chose (engine/selection.py)."""
    record = build_metrics_record(
        method=cfg.method, model=method.reported_model or cfg.model.spec, dataset=dataset.name, split=evaluation.split,
        metrics=evaluation.metrics, params=method.num_parameters(),
        cost={"train_time_s": round(fit.train_time_s, 3), "peak_mem_mb": round(peak_memory_mb(device), 1),
              "train_images_per_s": round(fit.train_images_per_s, 2),
              "eval_images_per_s": round(evaluation.images_per_s, 2)},
        seed=cfg.run.seed, config=resolved, device=device, best_epoch=fit.best_epoch,
        selection=selections.record(**fit.details),
        num_classes=dataset.num_classes,
        shots=dataset.info.get("shots"), test_loss=round(evaluation.loss, 6), processes=processes,
        features=views_record(cfg, method),
    )
    record["effective"] = method.effective_settings()  # what the recipe resolved for this model (MaPLe's depth)
    if fit.resumed_at:  # an interrupted run: the epochs it had completed each time it was resumed
        record["resumed_at_epochs"] = fit.resumed_at
    return record


def write_run_results(run_dir: Path, method: Method, dataset, fit: FitResult, evaluation: Evaluation,
                      record: dict, data: TrainingData, samples: int, seed: int) -> None:
    """Weights, history, curves, evaluation figures and metrics.json of a finished run."""
    from clipadapt.reports import plots  # matplotlib only where a figure is drawn

    with staged_directory(run_dir / WEIGHTS_DIR, overwrite=True) as stage:
        method.save_weights(stage)
    write_csv(run_dir / HISTORY_FILE, fit.history)
    plots.plot_training_curves(fit.history, run_dir / "curves.png", title=f"{method.name} on {dataset.name}",
                               selected=chosen_epoch(record, fit.best_epoch))
    write_evaluation_artifacts(run_dir, dataset, evaluation.split, evaluation.positions, evaluation.labels,
                               evaluation.logits, method.name, samples, seed)
    if method.pictures and len(evaluation.positions):  # what the method learned, on the first evaluated image
        image = dataset.split(evaluation.split).load(int(evaluation.positions[0]))
        method.write_pictures(run_dir, method.preprocess(image))
        record["pictures"] = {name: caption for name, caption in method.pictures.items() if (run_dir / name).is_file()}
    skipped = data.skipped_rows()
    record["skipped_images"] = {"count": len(skipped), "file": "skipped_images.txt" if skipped else None}
    write_skipped(run_dir, skipped)
    write_fewshot_file(run_dir, dataset)  # the exact K-shot images, when the run sampled them
    write_metrics(run_dir, record)  # last: its presence marks the run complete
