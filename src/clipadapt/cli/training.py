"""``clipadapt train`` and ``clipadapt eval``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from clipadapt.cli.common import (
    DatasetOpt,
    DeviceOpt,
    ModelOpt,
    SetOpt,
    apply_flags,
    err,
    out,
    result_table,
    setup_logging,
    user_errors,
)


def training_results_table(record: dict) -> Table:
    m, p, c = record["metrics"], record["params"], record["cost"]
    row = [record["method"], f"{m['acc1']:.4f}", f"{m['acc5']:.4f}", f"{m['mean_per_class_acc']:.4f}",
           f"{p['trainable']:,}", f"{p['trainable_pct']:.3f}", f"{c['train_time_s']:.1f} s", record.get("best_epoch")]
    return result_table(["method", "acc1", "acc5", "mean per-class", "trainable params", "% of model", "train time",
                         "best epoch"], [row],
                        title=f"{record['model']} on {record['dataset']} ({record['split']}, n={m['n']})")


@user_errors
def train_command(
    method: Annotated[str, typer.Argument(help="adaptation method (see `clipadapt methods`)")],
    model: ModelOpt = None,
    dataset: DatasetOpt = None,
    config: Annotated[Path | None, typer.Option(help="YAML config (e.g. a run's config.yaml)")] = None,
    set_: SetOpt = None,
    shots: Annotated[int | None, typer.Option(help="K training images per class")] = None,
    seed: Annotated[int | None, typer.Option(help="seed of sampling, initialisation and shuffling")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="run directory")] = None,
    resume: Annotated[bool, typer.Option(help="continue the interrupted run in --out")] = False,
    overwrite: Annotated[bool, typer.Option(help="replace an existing run directory")] = False,
    epochs: Annotated[int | None, typer.Option(help="maximum epochs (train.epochs)")] = None,
    data_root: Annotated[str | None, typer.Option(help="local copy of a hub dataset")] = None,
    device: DeviceOpt = None,
    strict: Annotated[bool | None, typer.Option("--strict/--skip-bad-images",
                                                help="abort on unreadable images")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
):
    """Train an adaptation method; selected on validation, evaluated once on test."""
    setup_logging(verbose)
    from clipadapt.methods import METHODS
    from clipadapt.reports.results import CONFIG_FILE
    from clipadapt.training import load_experiment, run_training

    METHODS.get(method)
    if resume and config is None and out_dir is not None and (out_dir / CONFIG_FILE).is_file():
        config = out_dir / CONFIG_FILE  # resume with the run's own config; flags may not change it
    flags = {
        "model.spec": model, "model.device": device, "data.dataset": dataset, "data.root": data_root,
        "data.shots": shots, "data.strict": strict, "data.seed": seed, "run.seed": seed,
        "run.out": str(out_dir) if out_dir else None, "run.overwrite": overwrite or None,
        "run.resume": resume or None, "train.epochs": epochs,
    }
    experiment = apply_flags(load_experiment(method, config, list(set_ or [])), flags)
    try:
        result = run_training(experiment)
    except KeyboardInterrupt:
        from clipadapt.runs import default_run_dir

        run_dir = experiment.run.out or default_run_dir(experiment.model.spec, experiment.data.dataset, method)
        err.print(f"[yellow]interrupted; continue with: clipadapt train {method} --out {run_dir} --resume",
                  highlight=False)
        raise typer.Exit(130) from None
    if not result.main_process:
        return
    out.print(training_results_table(result.record))
    skipped = result.record["skipped_images"]["count"]
    if skipped:
        err.print(f"[yellow]{skipped} unreadable image(s) skipped; see {result.run_dir / 'skipped_images.txt'}")
    out.print(f"run directory: {result.run_dir}", highlight=False)


@user_errors
def eval_command(
    run_dir: Annotated[Path, typer.Argument(help="a finished run directory")],
    split: Annotated[str, typer.Option(help="split to evaluate: test or val")] = "test",
    device: DeviceOpt = None,
):
    """Re-evaluate a saved run's weights on a split (writes eval_<split>.json into the run)."""
    setup_logging()
    from clipadapt.training import evaluate_run

    result = evaluate_run(run_dir, split, device)
    m = result["metrics"]
    row = [run_dir, result["method"], split, m["n"], f"{m['acc1']:.4f}", f"{m['acc5']:.4f}",
           f"{m['mean_per_class_acc']:.4f}", f"{result['loss']:.4f}"]
    out.print(result_table(["run", "method", "split", "n", "acc1", "acc5", "mean per-class", "loss"], [row], names=2))
