"""``clipadapt train`` and ``clipadapt eval``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from clipadapt.cli.common import (
    AddressOpt,
    ArrayParallelismOpt,
    CpusPerRunOpt,
    DatasetOpt,
    DeviceOpt,
    ExecutorOpt,
    GpusPerRunOpt,
    MemOpt,
    ModelOpt,
    PartitionOpt,
    SetOpt,
    SlurmClusterOpt,
    SlurmSettingOpt,
    TimeOpt,
    ece_cell,
    executor_options,
    notice,
    number_list,
    out,
    print_failed,
    result_table,
    setup_logging,
    user_errors,
)
from clipadapt.config import given
from clipadapt.errors import ClipAdaptError, ConfigError, RunInterrupted


def training_results_table(record: dict) -> Table:
    m, p, c = record["metrics"], record["params"], record["cost"]
    row = [record["method"], f"{m['acc1']:.4f}", f"{m['acc5']:.4f}", f"{m['mean_per_class_acc']:.4f}", ece_cell(m),
           f"{p['trainable']:,}", f"{p['trainable_pct']:.3f}", f"{c['train_time_s']:.1f} s", record.get("best_epoch")]
    return result_table(["method", "acc1", "acc5", "mean per-class", "ECE", "trainable params", "% of model",
                         "train time", "best epoch"], [row],
                        title=f"{record['model']} on {record['dataset']} ({record['split']}, n={m['n']})")


def control_line(control: dict) -> str:
    """metrics.json's ``control`` in one line: what the run kept of its zero-shot accuracy on the control."""
    where = f"{control['dataset']} ({control['split']}, n={control['images']})"
    if control.get("before") is None:
        return f"control {where}: not measured ({control.get('reason')})"
    kept = "-" if control["kept"] is None else f"{control['kept']:.3f}"
    return (f"control accuracy kept: {kept} on {where}: zero-shot {control['before']:.4f} before training, "
            f"{control['after']:.4f} after ({control['towers']} towers)")


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
    init_from: Annotated[Path | None, typer.Option(help="a finished run to start from (two-stage training: its "
                                                        "head and every weight whose name and shape match)")] = None,
    device: DeviceOpt = None,
    strict: Annotated[bool | None, typer.Option("--strict/--skip-bad-images",
                                                help="abort on unreadable images")] = None,
    sweep: Annotated[list[str] | None, typer.Option(help="sweep a field over values, e.g. vpt.layer=0,6,11; "
                                                    "repeat for a grid")] = None,
    seeds: Annotated[str | None, typer.Option(help="comma-separated seeds (with or without --sweep)")] = None,
    skip_existing: Annotated[bool, typer.Option(help="sweeps: keep finished cells, resume interrupted ones")] = False,
    executor: ExecutorOpt = "local",
    address: AddressOpt = None,
    cpus_per_run: CpusPerRunOpt = None,
    gpus_per_run: GpusPerRunOpt = 0.0,
    partition: PartitionOpt = None,
    time: TimeOpt = None,
    mem: MemOpt = None,
    array_parallelism: ArrayParallelismOpt = None,
    slurm_setting: SlurmSettingOpt = None,
    slurm_cluster: SlurmClusterOpt = "slurm",
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
):
    """Train an adaptation method; selected on validation, evaluated once on test (--sweep: a grid of runs)."""
    setup_logging(verbose)
    from clipadapt.api import train
    from clipadapt.classification.testtime_run import refuse_training
    from clipadapt.methods import METHODS

    refuse_training(method)
    METHODS.get(method)
    settings = given({"model.device": device, "data.root": data_root, "data.strict": strict})
    placement = executor_options(executor, address, cpus_per_run, gpus_per_run, partition, time, mem,
                                 array_parallelism, slurm_setting, slurm_cluster)
    if sweep or seeds is not None:
        if resume or seed is not None:
            raise ClipAdaptError("a sweep takes --seeds and --skip-existing, not --seed or --resume")
        _sweep(method, model, dataset, config, list(set_ or []), settings, shots, epochs, init_from,
               list(sweep or []), seeds, out_dir, skip_existing, overwrite, placement)
        return
    if placement != executor_options("local", None, None, 0.0, None, None, None, None, None, "slurm"):
        raise ConfigError("--executor and its options (--address, --cpus-per-run, --gpus-per-run, --partition, "
                          "--time, --mem, ...) place the runs of a sweep: add --sweep FIELD=V1,V2 or --seeds S1,S2 "
                          "(one run trains in this process)")
    try:
        run = train(method, model, dataset, shots, seed, out_dir, init_from, epochs=epochs, resume=resume,
                    overwrite=overwrite, config=config, overrides=set_ or [], **settings)
    except RunInterrupted as interrupted:
        notice(f"interrupted; continue with: clipadapt train {method} --out {interrupted.run_dir} --resume")
        raise typer.Exit(130) from None
    if not run.main_process:
        return
    out.print(training_results_table(run.record))
    control = run.record.get("control")
    if control:
        out.print(control_line(control), highlight=False)
    skipped = run.record["skipped_images"]["count"]
    if skipped:
        notice(f"{skipped} unreadable image(s) skipped; see {run.dir / 'skipped_images.txt'}")
    out.print(f"run directory: {run.dir}", highlight=False)


@user_errors
def eval_command(
    run_dir: Annotated[Path, typer.Argument(help="a finished run directory")],
    split: Annotated[str, typer.Option(help="split to evaluate: test or val")] = "test",
    device: DeviceOpt = None,
):
    """Re-evaluate a saved run's weights on a split (writes eval_<split>.json into the run)."""
    setup_logging()
    from clipadapt.api import evaluate

    result = evaluate(run_dir, split, device)
    m = result["metrics"]
    row = [run_dir, result["method"], split, m["n"], f"{m['acc1']:.4f}", f"{m['acc5']:.4f}",
           f"{m['mean_per_class_acc']:.4f}", ece_cell(m), f"{result['loss']:.4f}"]
    out.print(result_table(["run", "method", "split", "n", "acc1", "acc5", "mean per-class", "ECE", "loss"], [row],
                           names=2))


def _sweep(method: str, model: str | None, dataset: str | None, config: Path | None, overrides: list[str],
           settings: dict, shots: int | None, epochs: int | None, init_from: Path | None, items: list[str],
           seeds: str | None, out_dir: Path | None, skip_existing: bool, overwrite: bool,
           executor_options: dict) -> None:
    from clipadapt.api import sweep
    from clipadapt.experiments.sweep import short_names

    result = sweep(method, items, model, dataset,
                   number_list(seeds or "0", "--seeds"), out_dir, shots=shots, epochs=epochs, init_from=init_from,
                   skip_existing=skip_existing, overwrite=overwrite, config=config, overrides=overrides,
                   **executor_options,
                   on_run=lambda cell, status: notice(cell.label, f"seed {cell.seed}: {status}", "bold"), **settings)
    keys = list(result.rows[0]["values"]) if result.rows else []
    names = short_names(keys)
    rows = [[*[row["values"][k] for k in keys], len(row["runs"]), _accuracy(row["val_acc"]),
             _accuracy(row["test_acc"]), "*" if row["chosen"] else ""] for row in result.rows]
    out.print(result_table([names[k] for k in keys] + ["seeds", "val acc1", "test acc1", "chosen"], rows,
                           title=f"sweep of {method} (mean over seeds; * chosen on validation)",
                           names=max(len(keys), 1)))
    out.print(result.note, highlight=False)
    out.print(f"sweep tables: {result.markdown}  ({result.csv})", highlight=False)
    print_failed(result.failed)
    if result.failed:
        raise typer.Exit(1)


def _accuracy(value: float) -> str:
    return "-" if value != value else f"{value:.4f}"


@user_errors
def coop_words_command(
    run_dir: Annotated[Path, typer.Argument(help="a finished coop run directory")],
    top: Annotated[int, typer.Option(help="nearest words per context vector")] = 3,
    device: DeviceOpt = None,
):
    """The vocabulary words nearest to each learned CoOp context vector (Euclidean, in embedding space)."""
    setup_logging()
    from clipadapt.api import coop_words

    words = coop_words(run_dir, top, device)
    per_class = any(w.classname for w in words)
    rows = [[w.position, *([w.classname] if per_class else []), *[f"{name} ({d:.3f})" for name, d in w.words]]
            for w in words]
    headers = ["context"] + (["class"] if per_class else []) + [f"word {i + 1} (distance)" for i in range(top)]
    out.print(result_table(headers, rows, title=f"nearest words: {run_dir}", names=1 + per_class,
                           text=range(1 + per_class, len(headers))))
