"""``clipadapt predict``: the top-k classes of every run (and a model's zero-shot) for your own images."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from clipadapt.classification.predictors import Predictor
from clipadapt.data.images import ImageLoadError, load_image
from clipadapt.errors import ClipAdaptError
from clipadapt.paths import slug
from clipadapt.reports.plots import plot_image_predictions


@dataclass
class ImagePrediction:
    image: Path
    top: dict[str, list[tuple[str, float]]] = field(default_factory=dict)  # predictor label -> [(class, p)]
    probabilities: dict[str, np.ndarray] = field(default_factory=dict)  # predictor label -> all classes
    figure: Path | None = None


def predict_images(predictors: list[Predictor], images: list[Path | str | Image.Image], topk: int = 5,
                   out_dir: Path | None = None) -> tuple[list[ImagePrediction], list[tuple[Path, str]]]:
    """Predictions per image (a file, or a PIL image already in memory, named ``image-N``) and predictor;
    unreadable files are skipped and returned with the reason."""
    if topk <= 0:
        raise ClipAdaptError(f"--topk must be positive, got {topk}")
    if not predictors:
        raise ClipAdaptError("nothing to predict with: give run directories or --model")
    results, skipped = [], []
    for index, item in enumerate(images):
        if isinstance(item, Image.Image):
            path, image = Path(f"image-{index}"), item.convert("RGB")
        else:
            path = Path(item)
            try:
                image = load_image(path)
            except (ImageLoadError, OSError) as e:
                skipped.append((path, str(e)))
                continue
        prediction = ImagePrediction(path)
        for predictor in predictors:
            probs = predictor.probabilities(predictor.preprocess(image).unsqueeze(0))[0].numpy()
            order = np.argsort(-probs, kind="stable")[: min(topk, len(probs))]
            prediction.probabilities[predictor.label] = probs
            prediction.top[predictor.label] = [(predictor.classnames[i], float(probs[i])) for i in order]
        if out_dir is not None:
            prediction.figure = Path(out_dir) / f"{slug(Path(path).stem)}.png"
            plot_image_predictions(image, prediction.image.name, prediction.top, prediction.figure)
        results.append(prediction)
    return results, skipped
