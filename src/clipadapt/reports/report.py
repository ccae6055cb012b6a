"""Reports from run directories, for any task: a list of blocks (headings, paragraphs, tables, figures) rendered
twice, as ``report.md`` with figures under ``report_files/`` and as one self-contained ``report.html`` with the
figures inlined (opens offline, can be mailed).

This module knows no task: each task builds its own sections (``classification.report``, ``captioning.report``),
and the ``report`` workflow (``experiments.report``) puts them together.
"""

from __future__ import annotations

import base64
import html
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from clipadapt.io import atomic_write_text
from clipadapt.reports.collect import Row, RunInfo

FILES_DIR = "report_files"
HEADINGS = ("h1", "h2", "h3", "h4")


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    row_keys: list[str] = field(default_factory=list)  # data-method attribute of each HTML row
    css_class: str = ""  # class of the HTML table ("summary": a report's main table)


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


def plus_minus(mean: float, std: float, n: int, digits: int = 4) -> str:
    """``mean ± std`` over ``n`` seeds (the mean alone for one seed, ``-`` for none)."""
    if mean != mean:  # nan
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def number(value: float, fmt: str) -> str:
    """``value`` formatted, ``-`` for nan."""
    return "-" if value != value else format(value, fmt)


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
            css = f" class='{html.escape(value.css_class)}'" if value.css_class else ""
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
