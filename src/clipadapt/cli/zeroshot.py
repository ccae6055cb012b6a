"""``clipadapt zeroshot``: zero-shot accuracy per template set."""

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
    ece_cell,
    notice,
    out,
    result_table,
    setup_logging,
    split_classes,
    user_errors,
)
from clipadapt.config import given


def zero_shot_results_table(record: dict) -> Table:
    selected_on = record.get("selected_on")
    show_selection = selected_on == "val" and any(t.get("selection_metrics") for t in record["templates"].values())
    headers = (["template set", "prompts", "acc1", "acc5", "mean per-class", "ECE"]
               + [f"{selected_on} acc1"] * show_selection)
    rows = []
    for name, entry in record["templates"].items():
        m = entry["metrics"]
        marker = " *" if name == record["best_template_set"] else ""
        row = [name[:50] + marker, len(entry["templates"]), f"{m['acc1']:.4f}", f"{m['acc5']:.4f}",
               f"{m['mean_per_class_acc']:.4f}", ece_cell(m)]
        if show_selection:
            row.append(f"{entry['selection_metrics']['acc1']:.4f}")
        rows.append(row)
    return result_table(headers, rows, title=f"zero-shot: {record['model']} on {record['dataset']} "
                                             f"({record['split']}, n={record['metrics']['n']})")


def selection_line(record: dict) -> str:
    """How the reported template set (marked *) was chosen."""
    selection = record.get("selection") or {}
    best = record["best_template_set"]
    if record.get("oracle"):
        return f"{best}: {selection.get('oracle', 'oracle')}: an upper bound, not a result"
    if record.get("selected_on") == "val":
        carved = f", carved from {selection['carved_from']}" if selection.get("carved_from") else ""
        return f"{best}: chosen on validation ({selection.get('images', '?')} images{carved})"
    return f"{best}: the a-priori default, nothing chosen ({selection.get('reason', 'zeroshot.select_on=none')})"


@user_errors
def zeroshot_command(
    model: ModelOpt = None,
    dataset: DatasetOpt = None,
    split: Annotated[str | None, typer.Option(help="split to evaluate: train, val, test")] = None,
    templates: Annotated[list[str] | None, typer.Option(
        "--templates", "-t", help="template set name, file of templates, or a template with {}; repeatable")] = None,
    classes: Annotated[str | None, typer.Option(help="comma-separated class names replacing the dataset's")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="run directory")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing run directory")] = False,
    config: Annotated[Path | None, typer.Option(help="YAML config (e.g. a run's config.yaml)")] = None,
    set_: SetOpt = None,
    data_root: Annotated[str | None, typer.Option(help="local copy of a hub dataset")] = None,
    image_column: Annotated[str | None, typer.Option(help="image column (hf: datasets)")] = None,
    label_column: Annotated[str | None, typer.Option(help="label column (hf: datasets)")] = None,
    shots: Annotated[int | None, typer.Option(help="K training images per class")] = None,
    batch_size: Annotated[int | None, typer.Option(help="images per batch")] = None,
    device: DeviceOpt = None,
    strict: Annotated[bool | None, typer.Option("--strict/--skip-bad-images",
                                                help="abort on unreadable images")] = None,
    seed: Annotated[int | None, typer.Option(help="seed")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
):
    """Zero-shot accuracy of a model on a dataset, one row per template set."""
    setup_logging(verbose)
    from clipadapt.api import zeroshot

    settings = given({"data.root": data_root, "data.image_column": image_column, "data.label_column": label_column,
                      "data.shots": shots, "data.batch_size": batch_size, "data.strict": strict})
    run = zeroshot(model, dataset, templates, split, out_dir, classes=split_classes(classes) if classes is not None
                   else None, seed=seed, overwrite=overwrite, device=device, config=config, overrides=set_ or [],
                   **settings)
    record = run.record
    out.print(zero_shot_results_table(record))
    if record.get("oracle"):
        notice("oracle:", selection_line(record))
    else:
        out.print(selection_line(record), highlight=False)
    skipped = record["skipped_images"]["count"]
    if skipped:
        notice(f"{skipped} unreadable image(s) skipped; see {run.dir / 'skipped_images.txt'}")
    out.print(f"run directory: {run.dir}", highlight=False)
