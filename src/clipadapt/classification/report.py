"""The classification sections of a report: one table per dataset (mean ± std over seeds), accuracy against
trainable parameters and training time, validation curves, robustness curves, and each row's confusion matrix,
reliability diagram and prediction grid. Every number is read from the runs' own files (``reports.collect``)."""

from __future__ import annotations

import shutil
from pathlib import Path

from clipadapt.paths import slug
from clipadapt.reports import plots
from clipadapt.reports.collect import Row, RunInfo, table_rows
from clipadapt.reports.report import Figure, Table, number, plus_minus

COLUMNS = ["model", "method", "seeds", "acc1", "acc5", "mean per-class", "ECE", "trainable params", "% of model",
           "train time (s)", "peak memory (MB)", "eval images/s"]
ECE_NOTE = ("ECE: expected calibration error of the test predictions (Guo et al. 2017): the confidence of an image is "
            "its largest softmax probability; over 15 equal-width confidence bins, the image-weighted mean of "
            "|accuracy - mean confidence|; 0 when confidence matches accuracy, lower is better. Each run's "
            "reliability.png draws the bins and reliability.csv holds them; \"-\": runs written before ECE was "
            "recorded.")
CONTROL_COLUMN = "control accuracy kept"  # where any row's runs had a control dataset (eval.control)


def controls(rows: list[Row]) -> list[str]:
    """The control datasets of the rows' runs (metrics.json ``control``), in order of appearance."""
    found = [(run.record or {}).get("control") or {} for row in rows for run in row.runs]
    return list(dict.fromkeys(f"{c['dataset']} ({c['split']})" for c in found if c.get("dataset")))


def summary_table(rows: list[Row]) -> Table:
    with_control = bool(controls(rows))
    table = Table(COLUMNS + [CONTROL_COLUMN] * with_control, [], [], css_class="summary")
    for row in rows:
        n = len(row.runs)
        trainable, _ = row.stat("params", "trainable")
        pct, _ = row.stat("params", "trainable_pct")
        table.rows.append([
            row.model, row.label, ",".join(map(str, row.seeds)),
            plus_minus(*row.stat("metrics", "acc1"), n), plus_minus(*row.stat("metrics", "acc5"), n),
            plus_minus(*row.stat("metrics", "mean_per_class_acc"), n),
            plus_minus(*row.stat("metrics", "ece"), len(row.values("metrics", "ece"))),  # "-" before runs had it
            number(trainable, ",.0f"), number(pct, ".4f"),
            number(row.stat("cost", "train_time_s")[0], ".1f") if row.method != "zeroshot" else "0",
            number(row.stat("cost", "peak_mem_mb")[0], ",.0f"),
            number(row.stat("cost", "eval_images_per_s")[0], ",.1f"),
        ] + [plus_minus(*row.stat("control", "kept"), len(row.values("control", "kept")), 3)] * with_control)
        table.row_keys.append(row.method)
    return table


def _figures(rows: list[Row], files: Path, prefix: str) -> list[Figure]:
    figures = []
    trained = [r for r in rows if r.method != "zeroshot"]
    multi_model = len({r.model_spec for r in rows}) > 1

    def label(row: Row) -> str:
        """The row's label, with its model where several CLIP models share the figure or it used another (a
        baseline's classifier)."""
        return f"{row.label} ({Path(row.model).name})" if multi_model or row.model != row.model_spec else row.label

    def points(x: tuple[str, str], floor: float) -> list[dict]:
        return [{"x": max(r.stat(*x)[0], floor), "y": r.stat("metrics", "acc1")[0],
                 "yerr": r.stat("metrics", "acc1")[1], "label": label(r)} for r in trained]

    zero_shot = [(label(r), r.stat("metrics", "acc1")[0]) for r in rows if r.method == "zeroshot"]
    if trained:
        path = files / f"{prefix}accuracy_vs_params.png"
        plots.plot_accuracy_scatter(points(("params", "trainable"), 1), path, "trainable parameters (log)",
                                    "accuracy vs trainable parameters", reference=zero_shot)
        figures.append(Figure(path, "Test accuracy against trainable parameters (dashed: zero-shot)."))
        path = files / f"{prefix}accuracy_vs_time.png"
        plots.plot_accuracy_scatter(points(("cost", "train_time_s"), 1e-3), path, "training time (s, log)",
                                    "accuracy vs training time", reference=zero_shot)
        figures.append(Figure(path, "Test accuracy against training time (dashed: zero-shot)."))
        curves = []
        for r in trained:
            history = [h for h in r.runs[0].history() if "epoch" in h and "val_acc" in h]
            if history:
                curves.append({"x": [h["epoch"] for h in history], "y": [h["val_acc"] for h in history],
                               "label": f"{label(r)} seed {r.runs[0].seed}"})
        if curves:
            path = files / f"{prefix}validation_curves.png"
            plots.plot_lines(curves, path, "epoch", "validation accuracy", "validation accuracy per epoch")
            figures.append(Figure(path, "Validation accuracy per epoch (model selection uses these, never test)."))
    robustness = []
    for r in rows:
        for corruption, entry in sorted(r.runs[0].robustness().items()):
            levels = sorted(entry["accuracy"], key=float)
            robustness.append({"x": [float(s) for s in levels], "y": [entry["accuracy"][s] for s in levels],
                               "label": label(r), "panel": corruption})
    if robustness:
        path = files / f"{prefix}robustness.png"
        plots.plot_lines(robustness, path, "corruption severity", "top-1 accuracy", "accuracy under corruption")
        figures.append(Figure(path, "Accuracy under corruptions, one panel per corruption (severity: noise sigma, "
                                    "blur radius, or 100 - JPEG quality)."))
    return figures


def _run_figures(rows: list[Row], files: Path, prefix: str) -> list[Figure]:
    """Each row's confusion matrix and prediction grid, and the pictures its method drew (metrics.json's
    ``pictures``: file -> caption), from its first seed's run directory."""
    figures = []
    for row in rows:
        run = row.runs[0]
        pictures = (run.record or {}).get("pictures") or {}
        for name, what in (("confusion.png", "confusion matrix"), ("reliability.png", "reliability diagram"),
                           ("predictions.png", "sample predictions"),
                           *pictures.items()):
            source = run.path / name
            if source.is_file():
                target = files / f"{prefix}{slug(Path(row.model).name)}-{slug(row.label)}-{name}"
                shutil.copyfile(source, target)
                figures.append(Figure(target, f"{row.label} ({Path(row.model).name}, seed {run.seed}): {what}"))
    return figures


def dataset_sections(runs: list[RunInfo], dataset: str, files: Path, prefix: str) -> tuple[list, list[Row]]:
    """One dataset's table, figures and per-method figures, and the table's rows."""
    rows = [r for r in table_rows(runs) if r.dataset == dataset]
    blocks = [("h2", f"Dataset: {dataset}"), ("table", summary_table(rows)), ("p", ECE_NOTE)]
    if controls(rows):
        blocks.append(("p", f"{CONTROL_COLUMN}: zero-shot accuracy on the control dataset "
                            f"({', '.join(controls(rows))}) with the run's adapted towers after training, divided by "
                            f"the frozen model's before it (1 = nothing forgotten; below 1 = forgotten). Methods "
                            f"that leave the towers frozen (a head, a prompt of their own) keep 1 by construction; "
                            f"the control never chooses anything."))
    oracles = [r for r in table_rows(runs, oracles=True) if r.dataset == dataset]
    if oracles:
        table = summary_table(oracles)
        table.css_class = "oracle"
        blocks += [("p", "Oracles, chosen on the test split they report (zeroshot.select_on=test): upper bounds, "
                         "not results; they are in no comparison."), ("table", table)]
    blocks += [("figure", f) for f in _figures(rows, files, prefix)]
    blocks += [("h3", "Per method")] + [("figure", f) for f in _run_figures(rows, files, prefix)]
    return blocks, rows
