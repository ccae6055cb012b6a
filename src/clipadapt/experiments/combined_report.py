"""The report's section on combined runs: WiSE-FT interpolations and ensembles, read from their run directories.

A WiSE-FT run (``clipadapt wise``) shows its alpha table (validation, test and shifted accuracy per alpha, the
chosen alpha in bold) and its wise.png; an ensemble (``clipadapt ensemble``) its members with their weights and
their own accuracies beside the ensemble's. Both also stand as ordinary rows of the main table.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from clipadapt.experiments.wise import WISE_FILE
from clipadapt.paths import slug
from clipadapt.reports.collect import RunInfo
from clipadapt.reports.report import Figure, Table, number


def _bold_if(text: str, chosen: bool) -> str:
    return f"**{text}**" if chosen else text


def wise_blocks(run: RunInfo, files: Path, prefix: str) -> list:
    path = run.path / WISE_FILE
    if not path.is_file():
        return []
    summary = json.loads(path.read_text())
    chosen, shift = summary["chosen_alpha"], summary.get("shift_dataset")
    headers = ["alpha", "val acc1", "test acc1"] + ([f"{shift} acc1"] if shift else [])
    table = Table(headers, [])
    for row in summary["rows"]:
        cells = [f"{row['alpha']:g}", number(row["val_acc"], ".4f"), number(row["test_acc"], ".4f")]
        cells += [number(row["shift_acc"], ".4f")] if shift else []
        table.rows.append([_bold_if(c, row["alpha"] == chosen) for c in cells])
    where = f"; {shift} is the shifted test set." if shift else "."
    blocks = [("h4", f"WiSE-FT: {run.label}"),
              ("p", f"Weights of {summary['source']} ({summary['method']}) interpolated with zero-shot; alpha "
                    f"{chosen:g} chosen on validation (bold){where}"),
              ("table", table)]
    figure = run.path / "wise.png"
    if figure.is_file():
        target = files / f"{prefix}{slug(run.label)}-wise.png"
        shutil.copyfile(figure, target)
        blocks.append(("figure", Figure(target, f"{run.label}: " + (
            f"accuracy on {shift} against test accuracy, one point per alpha" if shift else
            "test and validation accuracy per alpha"))))
    return blocks


def ensemble_blocks(run: RunInfo) -> list:
    members = (run.record or {}).get("members")
    if not members:
        return []
    table = Table(["member", "weight", "val acc1", "test acc1"], [
        [m["label"], f"{m['weight']:.3f}", number(m["val_acc"], ".4f"), number(m["test_acc"], ".4f")]
        for m in members])
    mode = run.record.get("selection", {}).get("weights", "uniform")
    table.rows.append([f"**{run.label}**", "1", number(run.record["selection"]["val_acc"], ".4f"),
                       f"**{run.record['metrics']['acc1']:.4f}**"])
    how = "weights searched on validation" if mode == "val" else "equal weights"
    return [("h4", f"Ensemble: {run.label}"), ("p", f"Class probabilities averaged with {how}."), ("table", table)]


def combined_blocks(runs: list[RunInfo], files: Path, prefix: str) -> list:
    """The 'Combined runs' section for one dataset's complete runs (nothing when there are none)."""
    blocks = []
    for run in sorted((r for r in runs if r.complete), key=lambda r: str(r.path)):
        if run.record.get("wise"):
            blocks += wise_blocks(run, files, prefix)
        elif run.record.get("members"):
            blocks += ensemble_blocks(run)
    return [("h3", "Combined runs")] + blocks if blocks else []
