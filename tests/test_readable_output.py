"""Readable output: tables keep every number whole on a narrow or piped console, and no two series of one figure panel
share a colour."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from clipadapt.reports.collect import RunInfo, table_rows


def _runs() -> list[RunInfo]:
    """Three seeds of five methods and of a baseline on its own classifier (a model column), with wide numbers."""
    runs = []
    for i, method in enumerate(["linear-probe", "baseline-flip", "vision-prefix", "visual-prompt", "linear-head"]):
        for seed in (0, 1, 2):
            model = "microsoft/resnet-18" if method == "baseline-flip" else "openai/clip-vit-large-patch14-336"
            record = {"method": method, "model": model, "dataset": "flowers102", "seed": seed,
                      "metrics": {"acc1": 0.9 - i / 100 - seed / 1000, "acc5": 0.99 - seed / 1000,
                                  "mean_per_class_acc": 0.88, "ece": 0.0512 + seed / 1000},
                      "params": {"trainable": 123_456_789 + i, "trainable_pct": 12.3456},
                      "cost": {"train_time_s": 12345.6 + i, "peak_mem_mb": 23456.0, "eval_images_per_s": 1234.5}}
            config = {"method": method, "model": {"spec": "openai/clip-vit-large-patch14-336"}}
            runs.append(RunInfo(Path(f"runs/{method}-seed{seed}"), config, record))
    return runs


@pytest.mark.parametrize("width", [50, 60])
def test_a_narrow_piped_table_keeps_every_number_on_one_line(width):
    from rich.console import Console

    from clipadapt.classification.report import summary_table
    from clipadapt.cli.compare import report_table
    from clipadapt.reports.report import ReportResult

    rows = table_rows(_runs())
    report = ReportResult(Path("r.md"), Path("r.html"), rows, [])
    console = Console(width=width, file=io.StringIO())  # what piped stdout gets: not a terminal, COLUMNS wide
    assert not console.is_terminal
    console.print(report_table(report))
    lines = console.file.getvalue().splitlines()
    assert max(len(line) for line in lines) <= width
    summary = summary_table(rows)
    kept = ["seeds", "acc1", "acc5", "ECE", "trainable params", "% of model", "train time (s)"]
    numbers = {row[summary.headers.index(name)] for row in summary.rows for name in kept}
    assert {"0.8990 ± 0.0010", "123,456,789", "0.0522 ± 0.0010"} <= numbers  # what the check below looks for
    for number in numbers:
        assert any(number in line for line in lines), f"{number!r} is split or cut"
    for method in ("linear-probe", "baseline-flip", "vision-prefix", "visual-prompt", "linear-head"):
        assert any(method in line for line in lines), method
    assert "…" not in "\n".join(lines)


def test_series_styles_never_repeat_a_colour():
    from clipadapt.reports.plots import series_styles

    for count in (1, 10, 11, 15, 20, 21, 40):
        styles = series_styles(count)
        assert len(styles) == count
        assert len({tuple(s["color"]) for s in styles}) == count, count
        assert len({(s["marker"], s["linestyle"]) for s in styles}) == (count + 9) // 10  # changes every ten


def test_fifteen_curves_in_one_panel_get_fifteen_colours(tmp_path, monkeypatch):
    """plot_lines (validation and robustness curves) with 15 methods: no colour reused, the legend beside the axes;
    with panels (small multiples), a method keeps its style in every panel."""
    from matplotlib.colors import to_hex

    from clipadapt.reports import plots

    drawn = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: drawn.append(fig))
    series = [{"x": [0, 1, 2], "y": [0.9, 0.5 + k / 100, 0.1], "label": f"method-{k}"} for k in range(15)]
    plots.plot_lines(series, tmp_path / "curves.png", "epoch", "accuracy")
    (ax,) = drawn[0].axes
    colours = [to_hex(line.get_color()) for line in ax.get_lines()]
    assert len(colours) == 15 and len(set(colours)) == 15
    assert ax.get_legend().get_bbox_to_anchor().x0 > ax.get_window_extent().x1  # beside, not over the curves

    panels = [{**s, "panel": corruption} for corruption in ("gaussian", "blur") for s in series]
    plots.plot_lines(panels, tmp_path / "robustness.png", "severity", "accuracy")
    axes = [ax for ax in drawn[1].axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["gaussian", "blur"]
    per_panel = [[to_hex(line.get_color()) for line in ax.get_lines()] for ax in axes]
    assert per_panel[0] == per_panel[1] == colours


def test_accuracy_scatter_with_fifteen_points_uses_fifteen_colours(tmp_path, monkeypatch):
    from matplotlib.colors import to_hex

    from clipadapt.reports import plots

    drawn = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: drawn.append(fig))
    points = [{"x": 10 ** (k / 3), "y": 0.5 + k / 50, "label": f"method-{k}"} for k in range(15)]
    plots.plot_accuracy_scatter(points, tmp_path / "scatter.png", "trainable parameters")
    (ax,) = drawn[0].axes
    colours = {to_hex(line.get_color()) for line in ax.get_lines()}
    assert len(colours) == 15
