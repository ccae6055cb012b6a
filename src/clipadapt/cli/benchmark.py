"""``clipadapt benchmark``: the field's few-shot benchmark, on this machine, a Ray cluster or Slurm."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from clipadapt.cli.common import (
    AddressOpt,
    ArrayParallelismOpt,
    CpusPerRunOpt,
    ExecutorOpt,
    GpusPerRunOpt,
    MemOpt,
    PartitionOpt,
    SetOpt,
    SlurmClusterOpt,
    SlurmSettingOpt,
    TimeOpt,
    executor_options,
    notice,
    number_list,
    out,
    setup_logging,
    user_errors,
)
from clipadapt.errors import ClipAdaptError


@user_errors
def benchmark_command(
    model: Annotated[str, typer.Option("--model", "-m", help="model spec (see `clipadapt models`)")],
    datasets: Annotated[str | None, typer.Option(help="comma-separated datasets (the first is the source of "
                                                      "cross-dataset and domain-shift)")] = None,
    suite: Annotated[str | None, typer.Option(help="coop11 (the 11 CoOp datasets, ImageNet shifts) or world "
                                                   "(offline)")] = None,
    methods: Annotated[str, typer.Option(help="comma-separated methods (tda, tpt: the test-time protocol's); "
                                              "zero-shot is always included")] = (
        "linear-probe"),
    shots: Annotated[str | None, typer.Option(help="comma-separated K (default: 1,2,4,8,16 for few-shot, 16 for "
                                                   "the others)")] = None,
    seeds: Annotated[str, typer.Option(help="comma-separated seeds")] = "1,2,3",
    protocol: Annotated[str, typer.Option(help="few-shot, base-to-novel, cross-dataset, domain-shift, test-time "
                                               "(seeds: the streams'), comma-separated, or all (all but test-time)")
                        ] = "few-shot",
    targets: Annotated[str | None, typer.Option(help="cross-dataset/domain-shift/test-time targets instead of "
                                                     "the suite's")] = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="where the runs, benchmark.csv/md and report.html "
                                                              "go")] = Path("runs/benchmark"),
    data_root: Annotated[Path | None, typer.Option(help="CoOp's data folder ($DATA) holding each dataset's "
                                                        "folder")] = None,
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
    skip_existing: Annotated[bool, typer.Option(help="keep cells with results, run or resume the rest")] = False,
    overwrite: Annotated[bool, typer.Option(help="rerun cells that already exist")] = False,
    set_: SetOpt = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, mps")] = "auto",
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
):
    """Zero-shot and every method x shots x seed on each dataset, as run directories; benchmark.csv and the
    paper-shaped tables and curves in benchmark.md and report.html."""
    setup_logging(verbose)
    from clipadapt.api import benchmark

    if datasets is None and suite is None:
        raise ClipAdaptError("benchmark needs --datasets D1,D2 or --suite (coop11, world)")
    result = benchmark(model, datasets, methods, number_list(shots, "--shots") if shots else None,
                       number_list(seeds, "--seeds"), protocol, out_dir, suite=suite, targets=targets,
                       data_root=data_root, skip_existing=skip_existing, overwrite=overwrite, device=device,
                       overrides=set_ or [], **executor_options(
                           executor, address, cpus_per_run, gpus_per_run, partition, time, mem, array_parallelism,
                           slurm_setting, slurm_cluster))
    if result.kept:
        notice("kept:", f"{len(result.kept)} cells with results already (--skip-existing)")
    if result.markdown is not None:
        out.print(result.markdown.read_text(), highlight=False, soft_wrap=True)
        out.print(f"results: {result.csv}; report: {result.html}", highlight=False)
    for key, reason in result.failed:
        notice("failed:", f"{key}: {reason}", "red")
    if result.failed:
        raise typer.Exit(1)
