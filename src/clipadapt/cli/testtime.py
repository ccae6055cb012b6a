"""``clipadapt testtime tda|tpt``: test-time adaptation on the unlabelled test stream."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from clipadapt.cli.common import DatasetOpt, DeviceOpt, ModelOpt, SetOpt, out, result_table, setup_logging, user_errors


@user_errors
def testtime_command(
    method: Annotated[str, typer.Argument(help="tda (training-free caches) or tpt (prompt tuning per image)")],
    model: ModelOpt = None,
    dataset: DatasetOpt = None,
    stream_seed: Annotated[int | None, typer.Option(help="seed of the stream's order (default 1)")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="run directory")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing run directory")] = False,
    set_: SetOpt = None,
    device: DeviceOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
):
    """Classify the test split as an unlabelled stream in a seeded order, adapting on it (no label is read);
    prints the method's accuracy beside the zero-shot classifier it started from, on the same images."""
    setup_logging(verbose)
    from clipadapt.api import testtime

    run = testtime(method, model, dataset, out_dir, stream_seed=stream_seed, overwrite=overwrite, device=device,
                   overrides=set_ or [])
    record = run.record
    rows = []
    for label, metrics in ((f"zero-shot ({len(record['templates'])} templates)", record["zeroshot_metrics"]),
                           (method, record["metrics"])):
        ece = metrics.get("ece")
        rows.append([label, f"{metrics['acc1']:.4f}", f"{metrics['acc5']:.4f}",
                     "-" if ece is None else f"{ece:.4f}"])
    stream = record["stream"]
    out.print(result_table(["classifier", "acc1", "acc5", "ECE"], rows,
                           title=f"{record['protocol']}: {record['model']} on {record['dataset']} "
                                 f"({stream['images']} images, stream seed {stream['seed']})"))
    out.print(f"{record['cost']['seconds_per_image']:.4f} s per image; run: {run.dir}", highlight=False)
