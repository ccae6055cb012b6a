"""Figures written with matplotlib, outside pyplot: no display is needed, the user's backend is left alone (a
notebook keeps its inline plots after clipadapt draws) and no figure stays open."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageOps

from clipadapt.io import atomic_save


def subplots(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] | None = None, **kwargs: Any):
    """``(figure, axes)`` like ``pyplot.subplots``, for a figure that is only saved."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)  # an Agg canvas of its own (measuring text needs a renderer), pyplot's backend untouched
    return fig, fig.subplots(nrows, ncols, **kwargs)


def save_figure(fig: Figure, path: str | Path) -> None:
    atomic_save(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")
LINESTYLES = ("-", "--", ":", "-.")
LEGEND_INSIDE = 10  # series; beyond, the legend goes beside the axes


def series_styles(count: int) -> list[dict[str, Any]]:
    """A colour, marker and line style for each of ``count`` series of one panel, no colour used twice.

    matplotlib's default cycle repeats after ten colours, so an eleventh method looked like the first. Up to ten
    series: the ten ``tab10`` colours, round markers, solid lines (what the figures always had). Up to twenty: the
    ten dark ``tab20`` shades, then their ten light twins, each twin with another marker and a dashed line. Beyond:
    ``count`` colours spread evenly over ``turbo``, marker and line style changing every ten series.
    """
    if count <= 10:
        colours = list(colormaps["tab10"].colors[:count])
    elif count <= 20:
        tab20 = colormaps["tab20"].colors
        colours = [tab20[2 * i] for i in range(10)] + [tab20[2 * i + 1] for i in range(count - 10)]
    else:
        colours = [colormaps["turbo"](x) for x in np.linspace(0.03, 0.97, count)]
    return [{"color": colour, "marker": MARKERS[(i // 10) % len(MARKERS)],
             "linestyle": LINESTYLES[(i // 10) % len(LINESTYLES)]} for i, colour in enumerate(colours)]


def add_legend(ax, count: int, fontsize: int = 7) -> None:
    """The legend inside the axes up to ``LEGEND_INSIDE`` entries; beside them, in columns of 20, beyond."""
    if count <= LEGEND_INSIDE:
        ax.legend(fontsize=fontsize)
    else:
        ax.legend(fontsize=fontsize, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0,
                  ncol=(count + 19) // 20)


def plot_confusion(matrix: np.ndarray, classnames: list[str], path: str | Path, title: str = "") -> None:
    """Row-normalised confusion matrix; class names on the axes up to 40 classes."""
    counts = matrix.astype(float)
    rows = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    n = len(classnames)
    size = min(4 + 0.28 * n, 18)
    fig, ax = subplots(figsize=(size, size * 0.9))
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    if n <= 40:
        ax.set_xticks(range(n), [c[:18] for c in classnames], rotation=90, fontsize=7)
        ax.set_yticks(range(n), [c[:18] for c in classnames], fontsize=7)
        if n <= 12:
            for i in range(n):
                for j in range(n):
                    if matrix[i, j]:
                        colour = "white" if normalised[i, j] > 0.5 else "black"
                        ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=7, color=colour)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix")
    save_figure(fig, path)


GRID_DPI = 110
GRID_COLOURS = {"true": "#74c476", "other": "#bdbdbd", "track": "#f0f0f0"}


def plot_prediction_grid(images: list[Image.Image], true_labels: list[str], top_classes: list[list[str]],
                         top_probs: list[list[float]], path: str | Path, title: str = "") -> None:
    """Each sample: the image under its true label (green: the top class is right, red: wrong), and a bar per top
    class with its probability (the true class's bar green).

    Drawn with figure-level artists only (pictures, texts, rectangles; no axes): the grid of axes it had (two per
    sample, each with its tickers, and tight layout) took about 2 s a run, a fifth of a cheap run's wall time."""
    from matplotlib.patches import Rectangle

    n = len(images)
    cols = min(4, n) or 1
    rows = (n + cols - 1) // cols
    cell_w, cell_h, side, head = 4.6, 1.95, 1.5, (0.45 if title else 0.1)  # inches: cell, picture, title band
    width, height = cols * cell_w, rows * cell_h + head
    fig = Figure(figsize=(width, height), dpi=GRID_DPI)
    FigureCanvasAgg(fig)
    if title:
        fig.text(0.5, 1 - 0.25 / height, title, ha="center", va="center", fontsize=10)
    pixels = int(side * GRID_DPI)
    for k in range(n):
        row, col = divmod(k, cols)
        left, top = col * cell_w + 0.1, height - head - row * cell_h - 0.05  # inches from the bottom left
        picture = ImageOps.contain(images[k].convert("RGB"), (pixels, pixels), Image.Resampling.BICUBIC)
        fig.figimage(np.asarray(picture), xo=int(left * GRID_DPI) + (pixels - picture.width) // 2,
                     yo=int((top - 0.25) * GRID_DPI) - pixels + (pixels - picture.height) // 2, origin="upper")
        correct = top_classes[k][0] == true_labels[k]
        fig.text((left + side / 2) / width, (top - 0.12) / height, f"true: {true_labels[k][:22]}", ha="center",
                 va="center", fontsize=8, color="green" if correct else "red")
        bar_left, bar_width = left + side + 0.15, cell_w - side - 0.45
        bar_height = side / max(len(top_classes[k]), 1)
        for j, (name, probability) in enumerate(zip(top_classes[k], top_probs[k], strict=True)):
            bottom = top - 0.25 - (j + 1) * bar_height
            colour = GRID_COLOURS["true"] if name == true_labels[k] else GRID_COLOURS["other"]
            for share, face in ((1.0, GRID_COLOURS["track"]), (probability, colour)):
                fig.add_artist(Rectangle((bar_left / width, (bottom + 0.1 * bar_height) / height),
                                         share * bar_width / width, 0.8 * bar_height / height, facecolor=face,
                                         edgecolor="none"))
            fig.text((bar_left + 0.04) / width, (bottom + bar_height / 2) / height,
                     f"{name[:24]}  {probability:.2f}", ha="left", va="center", fontsize=7)
    atomic_save(path, lambda tmp: fig.savefig(tmp, format="png", dpi=GRID_DPI))


def plot_template_sets(names: list[str], acc1: list[float], path: str | Path, title: str = "") -> None:
    """Horizontal bars of acc1 per template set."""
    fig, ax = subplots(figsize=(6, 0.5 + 0.45 * len(names)))
    y = np.arange(len(names))[::-1]
    ax.barh(y, acc1, color="tab:blue")
    ax.set_yticks(y, [n[:40] for n in names], fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("top-1 accuracy")
    for yi, a in zip(y, acc1, strict=True):
        ax.text(min(a + 0.01, 0.9), yi, f"{a:.3f}", va="center", fontsize=8)
    ax.set_title(title or "zero-shot accuracy by template set")
    save_figure(fig, path)


def plot_reliability(bins: list[dict], ece: float, path: str | Path, title: str = "") -> None:
    """Reliability diagram (Guo et al. 2017, figure 1): accuracy per confidence bin against the diagonal, the gap to
    each bin's mean confidence shaded; below, the share of images per bin. ``bins``: ``reliability_bins`` rows."""
    fig, (ax, hist) = subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    filled = [b for b in bins if b["count"]]
    lower = np.array([b["lower"] for b in filled])
    width = np.array([b["upper"] - b["lower"] for b in filled])
    accuracy = np.array([b["accuracy"] for b in filled])
    confidence = np.array([b["confidence"] for b in filled])
    ax.bar(lower, accuracy, width=width, align="edge", color="tab:blue", edgecolor="black", linewidth=0.6,
           label="accuracy")
    ax.bar(lower, confidence - accuracy, bottom=accuracy, width=width, align="edge", color="tab:red", alpha=0.3,
           edgecolor="tab:red", hatch="//", linewidth=0.6, label="gap to mean confidence")
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"{title}\nECE {ece:.4f} ({len(bins)} bins)" if title else f"ECE {ece:.4f} ({len(bins)} bins)",
                 fontsize=10)
    n = sum(b["count"] for b in bins) or 1
    hist.bar(lower, [b["count"] / n for b in filled], width=width, align="edge", color="grey", edgecolor="black",
             linewidth=0.6)
    hist.set_ylabel("share of images")
    hist.set_xlabel("confidence (max softmax probability)")
    save_figure(fig, path)


def plot_curve(values: list[float], path: str | Path, xlabel: str = "step", ylabel: str = "", title: str = "",
               smooth: int = 10) -> None:
    """A raw curve with its running mean."""
    fig, ax = subplots(figsize=(6, 3.5))
    steps = np.arange(1, len(values) + 1)
    ax.plot(steps, values, color="tab:blue", alpha=0.35, linewidth=1, label="per step")
    if len(values) >= smooth:
        kernel = np.ones(smooth) / smooth
        ax.plot(steps[smooth - 1:], np.convolve(values, kernel, mode="valid"), color="tab:blue",
                label=f"mean of {smooth}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, path)


SEARCH_AXES = {"C": "C (inverse regularisation strength)", "beta": "beta (cache sharpness; best alpha at each)",
               "alpha": "alpha (WiSE-FT: 0 zero-shot, 1 the run)"}


def plot_training_curves(history: list[dict], path: str | Path, title: str = "", loss_label: str = "cross-entropy",
                         acc_label: str = "accuracy", extra: tuple[tuple[str, str], ...] = (),
                         selected: int | None = None) -> None:
    """Loss and accuracy per epoch (train and val, where the run had a validation split), one more panel per
    ``extra`` (validation key, label) the history has, the ``selected`` epoch marked (the epoch the run chose on
    validation; None: nothing chosen, no mark); a closed-form method's search (rows of ``C``, the linear probe's, or
    ``beta``, Tip-Adapter's, with the best ``alpha`` at each) as val accuracy vs it."""
    if history and {"lr", "lambda"} <= set(history[0]):  # ProLIP's grid: one line per lambda
        fig, ax = subplots(figsize=(6, 3.5))
        for lam in sorted({r["lambda"] for r in history}):
            cells = sorted((r for r in history if r["lambda"] == lam), key=lambda r: r["lr"])
            ax.semilogx([r["lr"] for r in cells], [r["val_acc"] for r in cells], "o-", label=f"lambda={lam:g}")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("validation accuracy")
        ax.set_title(title or "search on validation")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        save_figure(fig, path)
        return
    swept = next((key for key in SEARCH_AXES if history and key in history[0]), None)
    if swept is not None:
        fig, ax = subplots(figsize=(6, 3.5))
        plot = ax.semilogx if swept == "C" else ax.plot
        plot([r[swept] for r in history], [r["val_acc"] for r in history], "o-", color="tab:orange")
        ax.set_xlabel(SEARCH_AXES[swept])
        ax.set_ylabel("validation accuracy")
        ax.set_title(title or "search on validation")
        ax.grid(alpha=0.3)
        save_figure(fig, path)
        return
    epochs = [r["epoch"] for r in history]
    extra = tuple((key, label) for key, label in extra if history and key in history[0])
    fig, axes = subplots(1, 2 + len(extra), figsize=(5 * (2 + len(extra)), 3.6))
    ax_loss, ax_acc = axes[0], axes[1]
    for split, colour in (("train", "tab:blue"), ("val", "tab:orange")):
        if history and f"{split}_loss" not in history[0]:
            continue  # no validation split: nothing was validated
        ax_loss.plot(epochs, [r[f"{split}_loss"] for r in history], "o-", color=colour, label=split)
        ax_acc.plot(epochs, [r[f"{split}_acc"] for r in history], "o-", color=colour, label=split)
    for ax, (key, label) in zip(axes[2:], extra, strict=True):
        ax.plot(epochs, [r[key] for r in history], "o-", color="tab:orange", label="val")
        ax.set_ylabel(label)
    if selected is not None:
        for ax in axes[1:]:
            ax.axvline(selected, color="gray", linestyle="--", linewidth=1, label="selected")
    ax_loss.set_ylabel(loss_label)
    ax_acc.set_ylabel(acc_label)
    ax_acc.set_ylim(0, 1.02)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def plot_accuracy_scatter(points: list[dict], path: str | Path, xlabel: str, title: str = "", log_x: bool = True,
                          reference: list[tuple[str, float]] = (), ylabel: str = "top-1 accuracy") -> None:
    """acc1 (mean, with std error bars) against a cost; ``reference`` lines (e.g. zero-shot) are dashed."""
    fig, ax = subplots(figsize=(7, 4.2))
    labels = []
    for p, style in zip(points, series_styles(len(points)), strict=True):
        ax.errorbar(p["x"], p["y"], yerr=p.get("yerr", 0) or None, fmt=style["marker"], color=style["color"],
                    capsize=3, label=p["label"])
        labels.append(ax.annotate(p["label"], (p["x"], p["y"]), textcoords="offset points", xytext=(5, 4),
                                  fontsize=7))
    for j, (name, value) in enumerate(reference):
        ax.axhline(value, linestyle="--", linewidth=1, color="gray", alpha=0.8 - 0.15 * j)
        ax.text(0.01, value, name, fontsize=7, va="bottom", color="gray", transform=ax.get_yaxis_transform())
    if log_x and points and min(p["x"] for p in points) > 0:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    _separate_labels(fig, labels)
    save_figure(fig, path)


def _separate_labels(fig, labels: list) -> None:
    """Nudge point labels up or down, a line at a time, until none overlaps a label placed before it."""
    if len(labels) < 2:
        return
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    placed = []
    for label in labels:
        for shift in (0, -1, 1, -2, 2, -3, 3, -4, 4):
            label.xyann = (5, 4 + 8 * shift)
            box = label.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed):
                break
        placed.append(box)


def plot_lines(series: list[dict], path: str | Path, xlabel: str, ylabel: str, title: str = "") -> None:
    """Labelled curves (validation curves, robustness curves): on one axis, or one panel per distinct ``panel`` of
    the series (small multiples, e.g. a corruption each) with a series keeping its style in every panel. No colour
    repeats within a panel (``series_styles``)."""
    panels = list(dict.fromkeys(s.get("panel") for s in series)) or [None]
    labels = list(dict.fromkeys(s["label"] for s in series))
    style = dict(zip(labels, series_styles(len(labels)), strict=True))
    columns = min(3, len(panels))
    rows = (len(panels) + columns - 1) // columns
    fig, axes = subplots(rows, columns, figsize=(7 if len(panels) == 1 else 4.6 * columns, 4.2 * rows),
                         squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        drawn = [s for s in series if s.get("panel") == panel]
        for s in drawn:
            ax.plot(s["x"], s["y"], markersize=3, label=s["label"], **style[s["label"]])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 1.02)
        if panel is None:
            ax.set_title(title)
        else:
            ax.set_title(str(panel), fontsize=10)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    if series:
        add_legend(axes.flat[min(columns, len(panels)) - 1], len(labels))  # the top right panel's
    if title and panels != [None]:
        fig.suptitle(title)
    save_figure(fig, path)


def plot_image_predictions(image: Image.Image, name: str, top: dict[str, list[tuple[str, float]]],
                           path: str | Path) -> None:
    """One image, then a bar chart of the top-k probabilities of each run (``clipadapt predict``), titled with the
    run's whole label."""
    n = len(top)
    fig, axes = subplots(1, n + 1, figsize=(3.2 * (n + 1), 2.8), squeeze=False,
                             gridspec_kw={"width_ratios": [1] + [1.3] * n})
    axes[0][0].imshow(image)
    axes[0][0].axis("off")
    axes[0][0].set_title(name[:28], fontsize=8)
    for ax, (label, classes) in zip(axes[0][1:], top.items(), strict=True):
        y = np.arange(len(classes))[::-1]
        ax.barh(y, [p for _, p in classes], color=["tab:blue"] + ["tab:gray"] * (len(classes) - 1))
        ax.set_yticks(y, [c[:18] for c, _ in classes], fontsize=7)
        ax.set_xlim(0, 1)
        ax.tick_params(axis="x", labelsize=6)
        ax.set_title("\n".join(textwrap.wrap(label, 34)), fontsize=8)  # whole: an oracle's label ends the name
    fig.tight_layout()
    save_figure(fig, path)
