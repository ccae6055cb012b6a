"""The caption comparison report: ``report.md`` and a self-contained ``report.html`` from caption run directories.

One row per (model, decoder, method, bridge) over its seeds, with every number read from the runs' metrics.json:
CIDEr-D, BLEU-4, METEOR, ROUGE-L, CLIPScore and RefCLIPScore on the test split with the CLIP that scored them,
trainable parameters, training time, peak memory and decoding speed; then CIDEr against trainable parameters,
and per row the best and worst captions and one attention figure. Rendered by the generic report writers
(``reports.report``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from clipadapt.captioning.scoring import DEFINITION_SCORER, scorer_label
from clipadapt.errors import ClipAdaptError
from clipadapt.paths import slug
from clipadapt.reports.collect import Row, RunInfo, find_runs
from clipadapt.reports.report import (
    Figure,
    ReportResult,
    Table,
    fresh_files_dir,
    number,
    plus_minus,
    report_intro,
    write_report,
)

METRIC_COLUMNS = [("cider", "CIDEr"), ("bleu4", "BLEU-4"), ("meteor", "METEOR"), ("rouge_l", "ROUGE-L"),
                  ("clip_score", "CLIPScore"), ("ref_clip_score", "RefCLIPScore")]
COLUMNS = (["model", "decoder", "method", "bridge", "seeds"] + [name for _, name in METRIC_COLUMNS]
           + ["CLIPScore by", "trainable params", "train time (s)", "peak memory (MB)", "decode images/s"])


def is_caption_run(run: RunInfo) -> bool:
    return run.config.get("task") == "captioning"


def caption_rows(runs: list[RunInfo]) -> list[Row]:
    """Complete caption runs grouped by (dataset, model, decoder, method, bridge); best mean CIDEr first."""
    rows: dict[tuple, Row] = {}
    for run in runs:
        if not run.complete or not is_caption_run(run):
            continue
        decoder = run.config.get("decoder", {}).get("spec", "?")
        bridge = run.config.get("bridge", {}).get("kind", "?")
        label = (run.config.get("run") or {}).get("label") or f"{run.method} ({bridge})"
        key = (run.dataset, run.model, decoder, label)
        rows.setdefault(key, Row(run.dataset, run.model, run.method, label)).runs.append(run)
    return sorted(rows.values(), key=lambda r: -r.stat("metrics", "cider")[0])


def caption_table(rows: list[Row]) -> Table:
    table = Table(COLUMNS, [], [])
    for row in rows:
        first = row.runs[0].config
        n = len(row.runs)
        cells = [row.model, first.get("decoder", {}).get("spec", "?"), row.method,
                 first.get("bridge", {}).get("kind", "?"), ",".join(map(str, row.seeds))]
        cells += [plus_minus(*row.stat("metrics", key), n, digits=3) for key, _ in METRIC_COLUMNS]
        cells.append(", ".join(row_scorers(row)))
        cells += [number(row.stat("params", "trainable")[0], ",.0f"),
                  number(row.stat("cost", "train_time_s")[0], ".1f"),
                  number(row.stat("cost", "peak_mem_mb")[0], ",.0f"),
                  number(row.stat("cost", "decode_images_per_s")[0], ".1f")]
        table.rows.append(cells)
        table.row_keys.append(row.label)
    return table


def row_scorers(row: Row) -> list[str]:
    """The CLIPs that scored a row's runs (one, unless its seeds were scored differently)."""
    return sorted({scorer_label((run.record or {}).get("clipscore"), run.model) for run in row.runs})


def scorer_paragraph(rows: list[Row]) -> str:
    scorers = sorted({label for row in rows for label in row_scorers(row)})
    text = (f"CLIPScore and RefCLIPScore (Hessel et al. 2021: 2.5 · max(cos, 0) with \"A photo depicts \" in front "
            f"of the caption) scored by {', '.join(scorers)}; the metric is defined with {DEFINITION_SCORER}, and "
            "only its numbers compare with papers.")
    if any(label.endswith("(fallback)") for label in scorers):
        text += (f" \"(fallback)\": {DEFINITION_SCORER} could not be loaded, so the run's own CLIP scored "
                 "(its own judgement of its captions).")
    if any(label.endswith("(own)") for label in scorers):
        text += " \"(own)\": a run from before the scorer was a setting, scored by its own CLIP."
    return text


def build_caption_report(paths: list[str | Path], out_dir: str | Path) -> ReportResult:
    """Collect the caption runs under ``paths``; write ``out_dir/report.md`` and ``out_dir/report.html``."""
    from clipadapt.reports import plots

    out_dir = Path(out_dir)
    runs = [r for r in find_runs(paths) if is_caption_run(r)]
    if not runs:
        raise ClipAdaptError(f"no caption runs under {', '.join(map(str, paths))}")
    datasets = sorted({r.dataset for r in runs if r.complete})
    files = fresh_files_dir(out_dir)
    blocks = report_intro("clipadapt caption report", "caption runs", runs, paths,
                          "scores on the test split (mean ± sample std over seeds), models selected on validation "
                          "only.")
    all_rows = caption_rows(runs)
    for index, dataset in enumerate(datasets):
        rows = [r for r in all_rows if r.dataset == dataset]
        prefix = f"{index}-" if len(datasets) > 1 else ""
        tokenizers = sorted({str(run.record.get("tokenizer")) for row in rows for run in row.runs})
        blocks += [("h2", f"Dataset: {dataset}"), ("table", caption_table(rows)),
                   ("p", f"n-gram metrics tokenised by: {', '.join(tokenizers)} (compare runs within one tokenizer)."),
                   ("p", scorer_paragraph(rows))]
        scatter = files / f"{prefix}cider_vs_params.png"
        points = [{"label": r.label, "x": r.stat("params", "trainable")[0], "y": r.stat("metrics", "cider")[0],
                   "yerr": r.stat("metrics", "cider")[1]} for r in rows]
        plots.plot_accuracy_scatter(points, scatter, "trainable parameters", title=f"{dataset}: CIDEr-D vs "
                                    "trainable parameters", ylabel="CIDEr-D (test)")
        blocks.append(("figure", Figure(scatter, "Test CIDEr-D against trainable parameters.")))
        blocks.append(("h3", "Per method"))
        for row in rows:
            run = sorted(row.runs, key=lambda r: r.seed)[0]
            name = f"{prefix}{slug(row.label)}"
            for source, caption in ((run.path / "best_worst.png", "best and worst test captions by CLIPScore"),
                                    (next(iter(sorted((run.path / "attention").glob("*.png"))), None),
                                     "per-word attention over the image patches")):
                if source is not None and source.is_file():
                    target = files / f"{name}-{source.stem}.png"
                    shutil.copyfile(source, target)
                    blocks.append(("figure", Figure(target, f"{row.label}, seed {run.seed}: {caption}.")))
    return write_report(out_dir, blocks, all_rows, runs, "clipadapt caption train ... --resume")
