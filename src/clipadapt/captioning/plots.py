"""Captioning figures: the best and worst captions by CLIPScore, per-word attention maps."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clipadapt.data.images import ImageLoadError, load_image
from clipadapt.reports.plots import save_figure, subplots


def _thumbnail(prediction: dict, preprocess, load: Callable[[dict], Image.Image] | None) -> np.ndarray:
    """The image as the model saw it (resized and cropped), or grey where it cannot be read any more."""
    try:
        image = load(prediction) if load is not None else load_image(prediction["file"])
        return preprocess.to_uint8(image).permute(1, 2, 0).numpy()
    except ImageLoadError:
        return np.full((*preprocess.config.crop, 3), 128, dtype=np.uint8)


def _wrap(text: str, width: int = 28) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or "(empty)"


def plot_best_worst(predictions: list[dict], path: str | Path, preprocess, count: int = 4,
                    load: Callable[[dict], Image.Image] | None = None, title: str = "") -> None:
    """The ``count`` best and worst captions by CLIPScore, each under its image with its scores. Images are read
    from each prediction's ``file``, or by ``load(prediction)`` (images kept in a hub table have no file)."""
    ranked = sorted(predictions, key=lambda p: p["scores"]["clip_score"], reverse=True)
    count = min(count, max(1, len(ranked) // 2)) if len(ranked) > 1 else 1
    rows = [("best", ranked[:count]), ("worst", ranked[::-1][:count] if len(ranked) > 1 else [])]
    rows = [(name, items) for name, items in rows if items]
    fig, axes = subplots(len(rows), count, figsize=(3.0 * count, 3.6 * len(rows)), squeeze=False)
    for r, (name, items) in enumerate(rows):
        for c in range(count):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(items):
                continue
            p = items[c]
            ax.imshow(_thumbnail(p, preprocess, load))
            scores = p["scores"]
            ax.set_title(f"{name}: CLIPScore {scores['clip_score']:.3f}, CIDEr {scores.get('cider', float('nan')):.2f}"
                         f"\n{_wrap(p['caption'])}\nref: {_wrap(p['references'][0])}", fontsize=7, loc="left")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.96) if title else None)
    save_figure(fig, path)


def plot_word_attention(image: Image.Image, words: list[str], maps: torch.Tensor, path: str | Path, preprocess,
                        title: str = "", layers: list[str] | None = None) -> tuple[int, int]:
    """The image, then one panel per generated word: its attention over the patches, upsampled over the image.

    ``maps`` is ``(words, rows, cols)`` (panels wrapped six to a line), or ``(layers, words, rows, cols)``: a grid
    with one row per layer (named by ``layers``), the image first in each. Returns the grid's (rows, columns)."""
    picture = preprocess.to_uint8(image).permute(1, 2, 0).numpy()
    height, width = picture.shape[:2]
    if maps.dim() == 4:
        lines, columns = maps.shape[0], len(words) + 1
        names = layers or [f"layer {k}" for k in range(lines)]
        cells = [(r, 0, None, names[r]) for r in range(lines)]
        cells += [(r, k + 1, maps[r, k], word) for r in range(lines) for k, word in enumerate(words)]
    else:
        panels = len(words) + 1
        columns = min(panels, 6)
        lines = -(-panels // columns)
        cells = [(0, 0, None, "image")]
        cells += [((k + 1) // columns, (k + 1) % columns, maps[k], word) for k, word in enumerate(words)]
    fig, axes = subplots(lines, columns, figsize=(2.2 * columns, 2.5 * lines + 0.3), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for row, column, heat, name in cells:
        ax = axes[row][column]
        ax.imshow(picture)
        if heat is not None:  # exactly over the picture: the panel keeps the picture's size
            ax.imshow(heat.float().numpy(), cmap="jet", alpha=0.5, extent=(-0.5, width - 0.5, height - 0.5, -0.5),
                      interpolation="bilinear")
        ax.set_title(name, fontsize=9 if heat is not None else 8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    return lines, columns
