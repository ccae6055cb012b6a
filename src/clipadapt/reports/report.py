"""``report.md`` and a self-contained ``report.html`` from run directories (``clipadapt report DIR...``).

The report is a list of blocks (headings, paragraphs, tables, figures) rendered twice: as Markdown with figures
under ``report_files/``, and as one HTML file with the figures inlined (opens offline, can be mailed). Rows come
from whatever runs exist, so a newly registered method shows up without changes here.
"""

from __future__ import annotations

import base64
import html
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from clipadapt.errors import ClipAdaptError
from clipadapt.io import atomic_write_text
from clipadapt.reports import plots
from clipadapt.reports.collect import Row, RunInfo, find_runs, table_rows
from clipadapt.reports.combined import combined_blocks
from clipadapt.runs import slug

FILES_DIR = "report_files"
HEADINGS = ("h1", "h2", "h3", "h4")
COLUMNS = ["model", "method", "seeds", "acc1", "acc5", "mean per-class", "trainable params", "% of model",
           "train time (s)", "peak memory (MB)", "eval images/s"]


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    row_keys: list[str] = field(default_factory=list)  # data-method attribute of each HTML row


@dataclass
class Figure:
    path: Path
    caption: str


@dataclass
class ReportResult:
    markdown: Path
    html: Path
    rows: list[Row]
    incomplete: list[RunInfo]


def _pm(mean: float, std: float, n: int, digits: int = 4) -> str:
    if mean != mean:  # nan
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def _number(value: float, fmt: str) -> str:
    return "-" if value != value else format(value, fmt)


def summary_table(rows: list[Row]) -> Table:
    table = Table(COLUMNS, [], [])
    for row in rows:
        n = len(row.runs)
        trainable, _ = row.stat("params", "trainable")
        pct, _ = row.stat("params", "trainable_pct")
        table.rows.append([
            row.model, row.label, ",".join(map(str, row.seeds)),
            _pm(*row.stat("metrics", "acc1"), n), _pm(*row.stat("metrics", "acc5"), n),
            _pm(*row.stat("metrics", "mean_per_class_acc"), n),
            _number(trainable, ",.0f"), _number(pct, ".4f"),
            _number(row.stat("cost", "train_time_s")[0], ".1f") if row.method != "zeroshot" else "0",
            _number(row.stat("cost", "peak_mem_mb")[0], ",.0f"),
            _number(row.stat("cost", "eval_images_per_s")[0], ",.1f"),
        ])
        table.row_keys.append(row.method)
    return table


def _figures(rows: list[Row], files: Path, prefix: str) -> list[Figure]:
    figures = []
    trained = [r for r in rows if r.method != "zeroshot"]
    multi_model = len({r.model for r in rows}) > 1

    def label(row: Row) -> str:
        return f"{row.label} ({Path(row.model).name})" if multi_model else row.label

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
            history = [h for h in r.runs[0].history() if "epoch" in h]
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
                               "label": f"{label(r)} {corruption}"})
    if robustness:
        path = files / f"{prefix}robustness.png"
        plots.plot_lines(robustness, path, "corruption severity", "top-1 accuracy", "accuracy under corruption")
        figures.append(Figure(path, "Accuracy under corruptions (severity: noise sigma, blur radius, or "
                                    "100 - JPEG quality)."))
    return figures


def _run_figures(rows: list[Row], files: Path, prefix: str) -> list[Figure]:
    """Each row's confusion matrix and prediction grid, from its first seed's run directory."""
    figures = []
    for row in rows:
        run = row.runs[0]
        for name, what in (("confusion.png", "confusion matrix"), ("predictions.png", "sample predictions")):
            source = run.path / name
            if source.is_file():
                target = files / f"{prefix}{slug(Path(row.model).name)}-{slug(row.label)}-{name}"
                shutil.copyfile(source, target)
                figures.append(Figure(target, f"{row.label} ({Path(row.model).name}, seed {run.seed}): {what}"))
    return figures


def build_report(paths: list[str | Path], out_dir: str | Path, group: bool = False) -> ReportResult:
    """Collect runs under ``paths`` and write ``out_dir/report.md`` and ``out_dir/report.html``."""
    out_dir = Path(out_dir)
    runs = find_runs(paths)
    if not runs:
        raise ClipAdaptError(f"no run directories under {', '.join(map(str, paths))}")
    captions = [r for r in runs if r.config.get("task") == "captioning"]
    if captions and len(captions) == len(runs):  # only caption runs: their own report
        from clipadapt.captioning.report import build_caption_report

        return build_caption_report(paths, out_dir)
    runs = [r for r in runs if r.config.get("task") != "captioning"]  # mixed: captions get `caption report`
    datasets = sorted({r.dataset for r in runs if r.complete})
    if len(datasets) > 1 and not group:
        counts = ", ".join(f"{d} ({sum(r.dataset == d for r in runs)} runs)" for d in datasets)
        raise ClipAdaptError(f"runs from different datasets cannot share one table: {counts}; pass --group to "
                             f"report each dataset in its own section")
    files = fresh_files_dir(out_dir)
    blocks = report_intro("clipadapt report", "runs", runs, paths,
                          "acc is on the test split, mean ± sample std over seeds; models were selected on "
                          "validation only.")
    all_rows = []
    for index, dataset in enumerate(datasets):
        rows = [r for r in table_rows(runs) if r.dataset == dataset]
        all_rows += rows
        prefix = f"{index}-" if len(datasets) > 1 else ""
        blocks += [("h2", f"Dataset: {dataset}"), ("table", summary_table(rows))]
        blocks += [("figure", f) for f in _figures(rows, files, prefix)]
        blocks += [("h3", "Per method")] + [("figure", f) for f in _run_figures(rows, files, prefix)]
        blocks += combined_blocks([r for r in runs if r.dataset == dataset], files, prefix)
    blocks += _bench_blocks(paths, files)
    return write_report(out_dir, blocks, all_rows, runs, "clipadapt train ... --resume")


def report_intro(title: str, kind: str, runs: list[RunInfo], paths: list[str | Path], what: str) -> list:
    """The title and the paragraph every report opens with: how many runs, from where, when, what the numbers are."""
    return [("h1", title),
            ("p", f"{sum(r.complete for r in runs)} complete {kind} from {', '.join(map(str, paths))}; written "
                  f"{datetime.now():%Y-%m-%d %H:%M}. Every number is read from a run's metrics.json; {what}")]


def fresh_files_dir(out_dir: Path) -> Path:
    """``out_dir/report_files``, emptied: the figures of this report only."""
    files = out_dir / FILES_DIR
    shutil.rmtree(files, ignore_errors=True)
    files.mkdir(parents=True)
    return files


def write_report(out_dir: Path, blocks: list, rows: list[Row], runs: list[RunInfo], resume: str) -> ReportResult:
    """Add the incomplete runs (continued by the ``resume`` command), write report.md and report.html."""
    incomplete = [r for r in runs if not r.complete]
    if incomplete:
        blocks = blocks + [("h2", "Incomplete runs"),
                           ("p", f"No metrics.json yet (interrupted or still running; `{resume}` continues them): "
                                 + ", ".join(str(r.path) for r in incomplete))]
    atomic_write_text(out_dir / "report.md", render_markdown(blocks, out_dir))
    atomic_write_text(out_dir / "report.html", render_html(blocks))
    return ReportResult(out_dir / "report.md", out_dir / "report.html", rows, incomplete)


def _bench_blocks(paths: list[str | Path], files: Path) -> list:
    """Tables of every ``clipadapt bench`` result (bench.json) found under ``paths``."""
    import json

    blocks: list = []
    for path in sorted({p.resolve() for root in map(Path, paths) for p in root.rglob("bench.json")}):
        bench = json.loads(path.read_text())
        blocks += [("h2", f"Efficiency ({path.parent.name}/bench.json)"),
                   ("p", f"Image tower forward, batch {bench['batch']}, {bench['dtype']}; peak memory is CUDA peak "
                         f"allocated on a GPU, peak RSS of a fresh process on CPU.")]
        inference = Table(["model", "mode", "images/s", "latency p50 (ms)", "latency p95 (ms)", "peak memory (MB)",
                           "params"], [], [])
        for row in bench.get("inference", []):
            inference.rows.append([row["model"], row["mode"], f"{row['images_per_s']:,.1f}",
                                   f"{row['latency_ms_p50']:.1f}", f"{row['latency_ms_p95']:.1f}",
                                   f"{row['peak_mem_mb']:,.0f}", f"{row['params']:,}"])
            inference.row_keys.append(f"bench-{row['mode']}")
        blocks.append(("table", inference))
        if bench.get("training"):
            training = Table(["model", "method", "train images/s", "peak memory (MB)", "trainable", "% of model"],
                             [], [])
            for row in bench["training"]:
                training.rows.append([row["model"], row["method"], f"{row['train_images_per_s']:,.1f}",
                                      f"{row['peak_mem_mb']:,.0f}", f"{row['trainable']:,}",
                                      f"{row['trainable_pct']:.3f}"])
                training.row_keys.append(f"bench-{row['method']}")
            blocks.append(("table", training))
        scatter = path.parent / "accuracy_vs_speed.png"
        if scatter.is_file():
            target = files / f"{path.parent.name}-accuracy_vs_speed.png"
            shutil.copyfile(scatter, target)
            blocks.append(("figure", Figure(target, "Test accuracy against the model's inference speed.")))
    return blocks


def render_markdown(blocks: list, out_dir: Path) -> str:
    lines = []
    for kind, value in blocks:
        if kind in HEADINGS:
            lines += ["#" * int(kind[1]) + " " + value, ""]
        elif kind == "p":
            lines += [value, ""]
        elif kind == "table":
            lines.append("| " + " | ".join(value.headers) + " |")
            lines.append("|" + "|".join("---" for _ in value.headers) + "|")
            lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in value.rows]
            lines.append("")
        elif kind == "figure":
            lines += [f"![{value.caption}]({value.path.relative_to(out_dir).as_posix()})", "", f"*{value.caption}*", ""]
    return "\n".join(lines)


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:nth-child(-n+2){text-align:left}figure{margin:1.5em 0}img{max-width:100%}
figcaption{font-size:13px;color:#555}"""
# Marks the page after loading so a headless browser can check that every figure rendered.
CHECK_IMAGES = """window.addEventListener('load',function(){var imgs=Array.prototype.slice.call(document.images);
var broken=imgs.filter(function(i){return !(i.complete&&i.naturalWidth>0);}).length;
document.body.setAttribute('data-images',imgs.length);document.body.setAttribute('data-broken-images',broken);});"""


def _html_cell(text: str) -> str:
    """A table cell; ``**text**`` (Markdown bold, e.g. a chosen row) becomes bold in HTML too."""
    if len(text) > 4 and text.startswith("**") and text.endswith("**"):
        return f"<b>{html.escape(text[2:-2])}</b>"
    return html.escape(text)


def render_html(blocks: list) -> str:
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>clipadapt report</title>",
             f"<style>{STYLE}</style><script>{CHECK_IMAGES}</script></head><body>"]
    for kind, value in blocks:
        if kind in HEADINGS:
            parts.append(f"<{kind}>{html.escape(value)}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{html.escape(value)}</p>")
        elif kind == "table":
            css = " class='summary'" if value.headers == COLUMNS else ""
            parts.append(f"<table{css}><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in value.headers)
                         + "</tr></thead><tbody>")
            for key, row in zip(value.row_keys or [""] * len(value.rows), value.rows, strict=True):
                parts.append((f"<tr class='method-row' data-method='{html.escape(key)}'>" if key else "<tr>")
                             + "".join(f"<td>{_html_cell(c)}</td>" for c in row) + "</tr>")
            parts.append("</tbody></table>")
        elif kind == "figure":
            data = base64.b64encode(value.path.read_bytes()).decode()
            parts.append(f"<figure><img alt='{html.escape(value.caption)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{html.escape(value.caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)
