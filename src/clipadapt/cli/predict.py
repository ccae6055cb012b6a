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
    from clipadapt.classification.predict import predict_images
    from clipadapt.classification.predictors import load_predictor, zero_shot_predictor
    from clipadapt.data.prompts import resolve_template_sets
    from clipadapt.engine.records import CONFIG_FILE

    run_dirs = [p for p in paths if p.is_dir() and (p / CONFIG_FILE).is_file()]
    images = [p for p in paths if p not in run_dirs]
    not_runs = [p for p in images if p.is_dir()]
    if not_runs:
        raise ClipAdaptError(f"'{not_runs[0]}' is a directory but not a run directory (no {CONFIG_FILE})")
    if not images:
        raise ClipAdaptError("no image files given: clipadapt predict RUN_DIR... IMAGE...")
    predictors = [load_predictor(p, device) for p in run_dirs]
    if model:
        names = split_classes(classes) or (predictors[0].classnames if predictors else None)
        if not names:
            raise ClipAdaptError("--model without run directories needs --classes a,b,c")
        sets = resolve_template_sets(list(templates or ["simple"]))
        prompts = [t for template_set in sets for t in template_set.templates]
        predictors.append(zero_shot_predictor(model, names, prompts, device or "auto"))
    results, skipped = predict_images(predictors, images, topk, out_dir)
    for path, reason in skipped:
        notice("skipped", f"{path}: {reason}")
    for result in results:
        rows = [[label, *[f"{name} {p:.3f}" for name, p in top]] for label, top in result.top.items()]
        out.print(result_table(["run", *[f"top {i + 1}" for i in range(topk)]], rows, title=str(result.image),
                               text=range(1, topk + 1)))
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
    from clipadapt.classification.predictors import load_predictor
    from clipadapt.classification.robustness import CORRUPTIONS, check_levels, evaluate_robustness

    entry = CORRUPTIONS.get(noise)
    levels = check_levels(noise, list(entry.default_levels) if sigmas is None
                          else number_list(sigmas, "--sigmas", float))
    predictors = [load_predictor(p, device) for p in run_dirs]  # every run loads before the first evaluation
    rows = []
    for predictor in predictors:
        result = evaluate_robustness(predictor, noise, levels, seed, split)
        rows.append([predictor.run_dir, *[f"{a:.4f}" for a in result["accuracy"].values()]])
    out.print(result_table(["run", *[f"{entry.level_name} {v:g}" for v in levels]], rows,
                           title=f"top-1 accuracy under {noise}"))
