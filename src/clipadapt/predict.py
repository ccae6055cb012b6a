"""``clipadapt predict``: the top-k classes of every run (and a model's zero-shot) for your own images."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from clipadapt.data.images import ImageLoadError, load_image  # noqa: E402
from clipadapt.errors import ClipAdaptError  # noqa: E402
from clipadapt.predictors import Predictor  # noqa: E402
from clipadapt.reports.plots import _save  # noqa: E402
from clipadapt.runs import slug  # noqa: E402


@dataclass
class ImagePrediction:
    image: Path
    top: dict[str, list[tuple[str, float]]] = field(default_factory=dict)  # predictor label -> [(class, p)]
    probabilities: dict[str, np.ndarray] = field(default_factory=dict)  # predictor label -> all classes
    figure: Path | None = None


def predict_images(predictors: list[Predictor], images: list[Path], topk: int = 5,
                   out_dir: Path | None = None) -> tuple[list[ImagePrediction], list[tuple[Path, str]]]:
    """Predictions per image and predictor; unreadable images are skipped and returned with the reason."""
    if topk <= 0:
        raise ClipAdaptError(f"--topk must be positive, got {topk}")
    if not predictors:
        raise ClipAdaptError("nothing to predict with: give run directories or --model")
    results, skipped = [], []
    for path in images:
        try:
            image = load_image(Path(path))
        except (ImageLoadError, OSError) as e:
            skipped.append((Path(path), str(e)))
            continue
        prediction = ImagePrediction(Path(path))
        for predictor in predictors:
            probs = predictor.probabilities(predictor.preprocess(image).unsqueeze(0))[0].numpy()
            order = np.argsort(-probs, kind="stable")[: min(topk, len(probs))]
            prediction.probabilities[predictor.label] = probs
            prediction.top[predictor.label] = [(predictor.classnames[i], float(probs[i])) for i in order]
        if out_dir is not None:
            prediction.figure = Path(out_dir) / f"{slug(Path(path).stem)}.png"
            plot_prediction(image, prediction, prediction.figure)
        results.append(prediction)
    return results, skipped


def plot_prediction(image, prediction: ImagePrediction, path: Path) -> None:
    """The image, then one bar chart of top-k probabilities per run."""
    n = len(prediction.top)
    fig, axes = plt.subplots(1, n + 1, figsize=(3.2 * (n + 1), 2.8), squeeze=False,
                             gridspec_kw={"width_ratios": [1] + [1.3] * n})
    axes[0][0].imshow(image)
    axes[0][0].axis("off")
    axes[0][0].set_title(prediction.image.name[:28], fontsize=8)
    for ax, (label, top) in zip(axes[0][1:], prediction.top.items(), strict=True):
        y = np.arange(len(top))[::-1]
        ax.barh(y, [p for _, p in top], color=["tab:blue"] + ["tab:gray"] * (len(top) - 1))
        ax.set_yticks(y, [c[:18] for c, _ in top], fontsize=7)
        ax.set_xlim(0, 1)
        ax.tick_params(axis="x", labelsize=6)
        ax.set_title(label[:34], fontsize=8)
    fig.tight_layout()
    _save(fig, path)
