"""WiSE-FT (Wortsman et al., 2022): a finished run's weights interpolated with the zero-shot weights.

``theta(alpha) = (1 - alpha) * theta_zero_shot + alpha * theta_trained`` for every trainable weight (full-ft and
bitfit weight by weight, linear-head its head; LoRA scales its update: ``B`` from zero, ``A`` as trained). The
zero-shot end is the method as built, untrained, with its head initialised from zero-shot: runs whose head did not
start there (head=linear, LP-FT) are refused. alpha is chosen on the validation split; every alpha is then evaluated
on the test split and on a shifted dataset with the same classes (the WiSE-FT plot), and the chosen one is written
as a normal run directory (``report``, ``predict``, ``robustness`` read it) with ``wise.json`` and ``wise.png``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import torch

from clipadapt.config import to_dict
from clipadapt.data import load_dataset
from clipadapt.data.base import same_classes
from clipadapt.engine.records import CONFIG_FILE, refuse_oracle_runs, write_csv
from clipadapt.engine.rundir import save_config_dict
from clipadapt.engine.trainer import FitResult, Trainer, make_accelerator
from clipadapt.errors import ConfigError
from clipadapt.io import atomic_write_json, staged_directory
from clipadapt.models import load_model
from clipadapt.progress import progress_bar

log = logging.getLogger(__name__)
WISE_FILE = "wise.json"


def check_alphas(alphas: list[float]) -> list[float]:
    if not alphas:
        raise ConfigError("no alphas given; e.g. --alphas 0,0.25,0.5,0.75,1")
    bad = [a for a in alphas if not 0.0 <= a <= 1.0]
    if bad:
        raise ConfigError(f"alpha {bad[0]:g} is outside [0, 1]; valid: numbers from 0 (zero-shot) to 1 (the run)")
    return sorted(set(alphas))


def _zero_shot_state(experiment, dataset, method) -> dict[str, torch.Tensor]:
    """The trainable state of the method as built, untrained: a fresh model, so the run's weights stay intact."""
    from clipadapt.classification.experiment import build_method

    bundle = load_model(experiment.model.spec, device=method.bundle.device, revision=experiment.model.revision,
                        trust_remote_code=experiment.model.trust_remote_code)
    fresh = build_method(experiment, bundle, dataset)
    state = {k: v.to(method.bundle.device) for k, v in fresh.trainable_state().items()}
    del fresh, bundle
    return state


def run_wise(run_dir: str | Path, alphas: list[float], out: str | Path, shift_dataset: str | None = None,
             overwrite: bool = False, device: str | None = None, shift_root: str | None = None) -> dict[str, Any]:
    """Evaluate the interpolations, choose alpha on val, write the chosen one as a run directory at ``out``.

    The shift dataset is read with the run's data settings (columns, image checks) but all of its test split
    (no shots) and, for a hub dataset, from ``shift_root`` when given (a local copy)."""
    from clipadapt.classification.evaluation import load_run, require_classification_runs
    from clipadapt.classification.experiment import training_data
    from clipadapt.classification.training import run_record, write_run_results
    from clipadapt.engine.rundir import check_run_dir

    alphas = check_alphas(alphas)
    run_dir, out = Path(run_dir), Path(out)
    require_classification_runs([run_dir], "WiSE-FT")
    refuse_oracle_runs([run_dir], "WiSE-FT")
    check_run_dir(out, overwrite, resumable=False)
    experiment, dataset, method = load_run(run_dir, device)
    refusal = method.zero_shot_start_refusal()
    if refusal:
        raise ConfigError(f"cannot interpolate '{run_dir}' with zero-shot: {refusal}; WiSE-FT works on runs of "
                          "full-ft, bitfit, lora and linear-head with head=zeroshot")
    shift = None
    if shift_root and not shift_dataset:
        raise ConfigError("--shift-root is the local copy of --shift-dataset; give --shift-dataset too")
    if shift_dataset:
        shift = load_dataset(dataclasses.replace(experiment.data, dataset=shift_dataset, root=shift_root, shots=None))
        same_classes(f"the run's dataset {dataset.name}", dataset.classnames, f"shift dataset {shift.name}",
                     shift.classnames)
        shift.split("test")

    started = time.perf_counter()
    end = method.trainable_state()
    start = _zero_shot_state(experiment, dataset, method)
    device_ = method.bundle.device
    accelerator = make_accelerator(device_, experiment.train.precision)
    trainer = Trainer(experiment.train, training_data(experiment, dataset, method, device_), accelerator)
    shift_trainer = (Trainer(experiment.train, training_data(experiment, shift, method, device_), accelerator)
                     if shift is not None else None)
    rows, evaluations = [], {}
    with progress_bar("WiSE-FT: alphas", total=len(alphas), unit="alphas") as advance:
        for alpha in alphas:
            method.load_trainable_state(method.interpolate(start, end, alpha), source=f"alpha {alpha:g}")
            val = trainer.evaluate(method, "val")
            test = trainer.evaluate(method, experiment.data.split)
            row = {"alpha": alpha, "val_acc": val.metrics["acc1"], "val_loss": val.loss,
                   "test_acc": test.metrics["acc1"]}
            if shift_trainer is not None:
                row["shift_acc"] = shift_trainer.evaluate(method, "test").metrics["acc1"]
            rows.append(row)
            evaluations[alpha] = test
            advance()
    chosen = trainer.choose("alpha", rows, lambda r: (r["val_acc"], -r["val_loss"], -abs(r["alpha"] - 0.5)),
                            value=lambda r: r["alpha"],
                            scores=lambda r: {"val_acc": r["val_acc"], "val_loss": r["val_loss"]})
    method.load_trainable_state(method.interpolate(start, end, chosen["alpha"]), source="chosen alpha")
    seconds = time.perf_counter() - started

    source_label = experiment.run.label or experiment.method
    wise_experiment = dataclasses.replace(experiment, run=dataclasses.replace(
        experiment.run, out=str(out), label=f"{source_label} WiSE {chosen['alpha']:g}", resume=False,
        overwrite=False))
    resolved = to_dict(wise_experiment)
    summary = {"source": str(run_dir), "method": experiment.method, "alphas": alphas, "chosen_alpha": chosen["alpha"],
               "selection": "val_acc, then val_loss", "shift_dataset": shift.name if shift else None,
               "rows": rows, "seconds": round(seconds, 3)}
    fit = FitResult(history=[{"step": i, **r} for i, r in enumerate(rows)], best_epoch=rows.index(chosen),
                    train_time_s=seconds, train_images=0,
                    details={k: chosen[k] for k in ("alpha", "val_acc", "val_loss")})  # one alpha: nothing chosen
    evaluation = evaluations[chosen["alpha"]]
    record = run_record(wise_experiment, resolved, method, dataset, fit, evaluation, device_, 1, trainer.selections)
    record["wise"] = {k: summary[k] for k in ("source", "chosen_alpha", "alphas", "shift_dataset")}
    data = trainer.data
    with staged_directory(out, overwrite=overwrite) as stage:
        save_config_dict(resolved, stage / CONFIG_FILE)
        atomic_write_json(stage / WISE_FILE, summary)
        write_csv(stage / "wise.csv", rows)
        plot_wise(rows, stage / "wise.png", f"WiSE-FT of {source_label} on {dataset.name}", chosen["alpha"],
                  shift.name if shift else None)
        write_run_results(stage, method, dataset, fit, evaluation, record, data, experiment.run.samples,
                       experiment.run.seed)
    log.info("wrote %s", out)
    return {"run_dir": out, "record": record, **summary}


def plot_wise(rows: list[dict], path: Path, title: str, chosen: float, shift_name: str | None) -> None:
    """The WiSE-FT plot: accuracy on the shift against accuracy in distribution, one point per alpha (without a
    shift: test and validation accuracy against alpha)."""
    from clipadapt.reports.plots import save_figure, subplots

    fig, ax = subplots(figsize=(5.5, 4.2))
    if shift_name:
        x, y = [r["test_acc"] for r in rows], [r["shift_acc"] for r in rows]
        ax.plot(x, y, "o-", color="tab:blue")
        for r, xi, yi in zip(rows, x, y, strict=True):
            ax.annotate(f"{r['alpha']:g}", (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8,
                        fontweight="bold" if r["alpha"] == chosen else "normal")
        ax.set_xlabel("test accuracy (in distribution)")
        ax.set_ylabel(f"accuracy on {shift_name}")
    else:
        alphas = [r["alpha"] for r in rows]
        ax.plot(alphas, [r["test_acc"] for r in rows], "o-", label="test")
        ax.plot(alphas, [r["val_acc"] for r in rows], "o--", label="val")
        ax.axvline(chosen, color="grey", linestyle=":", label=f"chosen {chosen:g}")
        ax.set_xlabel("alpha (0: zero-shot, 1: the run)")
        ax.set_ylabel("accuracy")
        ax.legend()
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    save_figure(fig, path)
