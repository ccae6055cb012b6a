"""``clipadapt predict`` (your photos) and ``clipadapt robustness``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from clipadapt.cli.common import (
    DeviceOpt,
    notice,
    number_list,
    out,
    result_table,
    setup_logging,
    split_classes,
    user_errors,
)
from clipadapt.errors import ClipAdaptError


@user_errors
def predict_command(
    paths: Annotated[list[Path], typer.Argument(help="run directories, then image files")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="also zero-shot with this model")] = None,
    classes: Annotated[str | None, typer.Option(help="class names for --model (default: the runs' classes)")] = None,
    templates: Annotated[list[str] | None, typer.Option("--templates", "-t", help="templates for --model")] = None,
    topk: Annotated[int, typer.Option(help="classes shown per run")] = 5,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="where the bar charts go")] = Path("predictions"),
    device: DeviceOpt = None,
):
    """Top-k classes and probabilities of every run for each image, as a table and one bar chart per image."""
    setup_logging()
    from clipadapt.api import predict
    from clipadapt.engine.records import CONFIG_FILE

    run_dirs = [p for p in paths if p.is_dir() and (p / CONFIG_FILE).is_file()]
    images = [p for p in paths if p not in run_dirs]
    not_runs = [p for p in images if p.is_dir()]
    if not_runs:
        raise ClipAdaptError(f"'{not_runs[0]}' is a directory but not a run directory (no {CONFIG_FILE})")
    if not images:
        raise ClipAdaptError("no image files given: clipadapt predict RUN_DIR... IMAGE...")
    results, skipped = predict(run_dirs, images, topk, model=model, classes=split_classes(classes) if classes else None,
                               templates=templates, out=out_dir, device=device)
    for path, reason in skipped:
        notice("skipped", f"{path}: {reason}")
    for result in results:
        shown = max(len(top) for top in result.top.values())  # runs with fewer classes than --topk show them all
        rows = [[label, *[f"{name} {p:.3f}" for name, p in top], *[""] * (shown - len(top))]
                for label, top in result.top.items()]
        out.print(result_table(["run", *[f"top {i + 1}" for i in range(shown)]], rows, title=str(result.image),
                               text=range(1, shown + 1)))
        out.print(f"bar chart: {result.figure}", highlight=False)
    if not results:
        raise typer.Exit(2)


@user_errors
def robustness_command(
    run_dirs: Annotated[list[Path], typer.Argument(help="run directories")],
    noise: Annotated[str, typer.Option(help="corruption: gaussian, blur or jpeg")] = "gaussian",
    sigmas: Annotated[str | None, typer.Option("--sigmas", "--levels", help="comma-separated levels: noise "
                                               "sigma, blur radius, or 100 - JPEG quality")] = None,
    seed: Annotated[int, typer.Option(help="noise seed (the same corrupted images for every run)")] = 0,
    split: Annotated[str, typer.Option(help="split to evaluate")] = "test",
    device: DeviceOpt = None,
):
    """Accuracy under seeded corruptions per run; saved as robustness.json/png in each run, shown in reports."""
    setup_logging()
    from clipadapt.api import robustness
    from clipadapt.classification.robustness import CORRUPTIONS

    entry = CORRUPTIONS.get(noise)
    results = robustness(list(run_dirs), noise, None if sigmas is None else number_list(sigmas, "--sigmas", float),
                         seed, split, device)
    rows = [[run_dir, *[f"{a:.4f}" for a in result["accuracy"].values()]] for run_dir, result in results.items()]
    levels = [float(level) for level in next(iter(results.values()))["accuracy"]] if results else []
    out.print(result_table(["run", *[f"{entry.level_name} {v:g}" for v in levels]], rows,
                           title=f"top-1 accuracy under {noise}"))
