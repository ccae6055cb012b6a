"""``clipadapt compare`` and ``clipadapt report``."""

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
    ExecutorOpt,
    GpusPerRunOpt,
    MemOpt,
    PartitionOpt,
    SlurmClusterOpt,
    SlurmSettingOpt,
    TimeOpt,
    executor_options,
    notice,
    number_list,
    out,
    print_failed,
    result_table,
    setup_logging,
    user_errors,
)


@user_errors
def compare_command(
    model: Annotated[list[str] | None, typer.Option("--model", "-m", help="model spec; repeat to compare "
                                                    "models")] = None,
    dataset: DatasetOpt = None,
    config: Annotated[Path | None, typer.Option(help="YAML compare file (configs/cifar100-compare.yaml); the "
                                                "flags win over it")] = None,
    methods: Annotated[str | None, typer.Option(help="all, or comma-separated methods (see `clipadapt methods`) "
                                                "(default: all)")] = None,
    seeds: Annotated[str | None, typer.Option(help="comma-separated seeds; acc is reported as mean ± std "
                                              "(default: 0)")] = None,
    shots: Annotated[int | None, typer.Option(help="K training images per class")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override for the runs it applies to: "
                                                   "train.epochs=5, lora.r=4, data.root=...")] = None,
    templates: Annotated[list[str] | None, typer.Option("--templates", "-t", help="zero-shot template sets "
                                                        "(default: the dataset's, simple and clip)")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="where the runs and the report go "
                                                 "(default: runs/compare)")] = None,
    skip_existing: Annotated[bool, typer.Option(help="keep finished runs, resume interrupted ones")] = False,
    overwrite: Annotated[bool, typer.Option(help="retrain runs that already exist")] = False,
    no_zeroshot: Annotated[bool, typer.Option("--no-zeroshot", help="skip the zero-shot runs")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, mps")] = "auto",
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
    """Zero-shot and every chosen method on one dataset, each a run directory, then one report."""
    setup_logging(verbose)
    from clipadapt.api import compare

    def show(run, status: str) -> None:
        notice(run.method, f"seed {run.seed} on {run.model}: {status}", "bold")

    result = compare(model or None, dataset, methods, number_list(seeds, "--seeds") if seeds is not None else None,
                     shots, out_dir, config=config, templates=list(templates or []),
                     zeroshot=False if no_zeroshot else None, skip_existing=skip_existing, overwrite=overwrite,
                     device=device, overrides=set_ or [], on_run=show, **executor_options(
                         executor, address, cpus_per_run, gpus_per_run, partition, time, mem, array_parallelism,
                         slurm_setting, slurm_cluster))
    if result.report is not None:
        out.print(report_table(result.report))
        out.print(f"report: {result.report.html}  ({result.report.markdown})", highlight=False)
    if result.failed:
        print_failed(result.failed)
        raise typer.Exit(1)


def report_table(report) -> Table:
    """The report's table, narrowed for a terminal (report.md/html have every column)."""
    from clipadapt.classification.report import CONTROL_COLUMN, summary_table

    summary = summary_table(report.rows)
    several_models = len({row.model for row in report.rows}) > 1
    keep = ["model"] * several_models + ["method", "seeds", "acc1", "acc5", "ECE", "trainable params", "% of model",
                                         "train time (s)"] + [CONTROL_COLUMN] * (CONTROL_COLUMN in summary.headers)
    index = [summary.headers.index(name) for name in keep]
    headers = [{"trainable params": "trainable", "train time (s)": "train s", CONTROL_COLUMN: "control kept"}.get(
        name, name) for name in keep]
    return result_table(headers, [[row[i] for i in index] for row in summary.rows],
                        title="comparison (test split; mean ± std over seeds)", names=1 + several_models)


@user_errors
def report_command(
    run_dirs: Annotated[list[Path], typer.Argument(help="run directories or folders that contain them")],
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="where report.md/html go "
                                                 "(default: the single folder given)")] = None,
    group: Annotated[bool, typer.Option(help="allow several datasets, one section each")] = False,
):
    """Rebuild or merge reports from run directories (never recomputes a result)."""
    setup_logging()
    from clipadapt.api import report as build_report

    report = build_report(list(run_dirs), out_dir, group=group)
    out.print(report_table(report))
    for run in report.incomplete:
        notice("incomplete (no metrics.json):", str(run.path))
    out.print(f"report: {report.html}  ({report.markdown})", highlight=False)
