"""``clipadapt robustness``: test accuracy of runs under seeded image corruptions.

Corruptions act on the decoded, resized image before normalisation: ``gaussian`` adds N(0, sigma) noise in
[0, 1] pixel space; ``blur`` is a Gaussian blur of the given radius in pixels; ``jpeg`` re-encodes at quality
100 - level. Noise depends only on (seed, image position), so every run sees the same corrupted images, and
level 0 is the clean image itself (the run's own accuracy).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from clipadapt.classification.predictors import Predictor
from clipadapt.engine.features import image_loader
from clipadapt.engine.metrics import classification_metrics
from clipadapt.errors import ConfigError
from clipadapt.io import atomic_write_json
from clipadapt.progress import progress_bar
from clipadapt.registry import Registry
from clipadapt.reports.collect import ROBUSTNESS_FILE

Corruption = Callable[[torch.Tensor, float, int, int], torch.Tensor]  # (uint8 CHW, level, seed, position)


@dataclass
class CorruptionEntry:
    apply: Corruption
    default_levels: tuple[float, ...]
    level_name: str


CORRUPTIONS: Registry[CorruptionEntry] = Registry("corruption")


def _to_pil(pixels: torch.Tensor) -> Image.Image:
    return Image.fromarray(pixels.permute(1, 2, 0).numpy())


def _from_pil(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def gaussian_noise(pixels: torch.Tensor, sigma: float, seed: int, position: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + position)
    noisy = pixels.float() / 255 + sigma * torch.randn(pixels.shape, generator=generator)
    return noisy.clamp_(0, 1)


def gaussian_blur(pixels: torch.Tensor, radius: float, seed: int, position: int) -> torch.Tensor:
    return _from_pil(_to_pil(pixels).filter(ImageFilter.GaussianBlur(radius)))


def jpeg_compression(pixels: torch.Tensor, level: float, seed: int, position: int) -> torch.Tensor:
    buffer = io.BytesIO()
    _to_pil(pixels).save(buffer, format="JPEG", quality=max(1, int(round(100 - level))))
    return _from_pil(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


CORRUPTIONS.register("gaussian", CorruptionEntry(gaussian_noise, (0, 0.05, 0.1, 0.2, 0.4), "sigma"),
                     help="additive Gaussian pixel noise, sigma in [0, 1] pixel units")
CORRUPTIONS.register("blur", CorruptionEntry(gaussian_blur, (0, 0.5, 1, 2, 4), "radius (px)"),
                     help="Gaussian blur, radius in pixels")
CORRUPTIONS.register("jpeg", CorruptionEntry(jpeg_compression, (0, 50, 80, 90, 95), "100 - quality"),
                     help="JPEG re-encoding at quality 100 - level")


def check_levels(corruption: str, levels: list[float]) -> list[float]:
    CORRUPTIONS.get(corruption)
    if not levels:
        raise ConfigError("give at least one corruption level")
    bad = [v for v in levels if v < 0]
    if bad:
        raise ConfigError(f"corruption levels must be >= 0 (a sigma or radius cannot be negative), got {bad[0]:g}")
    if corruption == "jpeg" and any(v >= 100 for v in levels):
        raise ConfigError("jpeg levels are 100 - quality and must be below 100")
    return sorted(set(levels))


def corrupted_accuracy(predictor: Predictor, split: str, corruption: str, level: float, seed: int = 0,
                       batch_size: int = 64, num_workers: int = -1) -> dict:
    """Metrics of one predictor on a split with every image corrupted at ``level`` (0: clean)."""
    return corrupted_accuracies([predictor], split, corruption, level, seed, batch_size, num_workers)[0]


def corrupted_accuracies(predictors: list[Predictor], split: str, corruption: str, level: float, seed: int = 0,
                         batch_size: int = 64, num_workers: int = -1) -> list[dict]:
    """Metrics of predictors that read the same split with the same preprocessing (``shared_input``), each image
    read and corrupted once for all of them: the same numbers as one pass per predictor."""
    apply = CORRUPTIONS.get(corruption).apply
    first = predictors[0]
    data = first.dataset.split(split)
    logits: list[list[torch.Tensor]] = [[] for _ in predictors]
    labels = []
    label = first.label if len(predictors) == 1 else f"{len(predictors)} runs"
    with progress_bar(f"{label}: {corruption} {level:g}", total=len(data)) as advance:
        for batch in image_loader(data, first.preprocess, batch_size, num_workers):
            if batch["images"] is None:
                advance(len(batch["skipped"]))
                continue
            images = batch["images"]
            if level > 0:  # level 0 is the clean image itself, bit for bit
                images = torch.stack([apply(img, level, seed, int(pos))
                                      for img, pos in zip(images, batch["positions"], strict=True)])
            pixels = first.preprocess.normalize(images)
            for predictor, out in zip(predictors, logits, strict=True):
                with torch.no_grad(), predictor.context():
                    out.append(predictor.logits(pixels.to(predictor.device)).float().cpu())
            labels.append(batch["labels"].numpy())
            advance(len(batch["labels"]) + len(batch["skipped"]))
    return [classification_metrics(torch.cat(out), np.concatenate(labels)) for out in logits]


def shared_input(predictor: Predictor, split: str) -> tuple:
    """What a predictor's corrupted images and their labels depend on besides the corruption: its preprocessing,
    and the images of the split with their labels (runs of one dataset share them)."""
    preprocess = getattr(predictor.preprocess, "config", id(predictor.preprocess))  # unknown kinds: never shared
    return preprocess, predictor.dataset.split(split).fingerprint()  # the feature cache's identity of its images


def evaluate_robustness(predictor: Predictor, corruption: str, levels: list[float], seed: int = 0,
                        split: str = "test", batch_size: int = 64) -> dict:
    """``{"levels", "accuracy": {level: acc1}, ...}``, merged into the run's robustness.json."""
    return evaluate_robustness_of_runs([predictor], corruption, levels, seed, split, batch_size)[0]


def evaluate_robustness_of_runs(predictors: list[Predictor], corruption: str, levels: list[float], seed: int = 0,
                                split: str = "test", batch_size: int = 64) -> list[dict]:
    """``evaluate_robustness`` of each predictor (in order), with the predictors that share their input
    (``shared_input``) evaluated together: each corrupted image is made once per level for all of them."""
    levels = check_levels(corruption, levels)
    groups: dict[tuple, list[int]] = {}
    for k, predictor in enumerate(predictors):
        groups.setdefault(shared_input(predictor, split), []).append(k)
    accuracy: list[dict[str, float]] = [{} for _ in predictors]
    for members in groups.values():
        for level in levels:
            results = corrupted_accuracies([predictors[k] for k in members], split, corruption, level, seed,
                                           batch_size)
            for k, result in zip(members, results, strict=True):
                accuracy[k][f"{level:g}"] = result["acc1"]
    entries = []
    for predictor, per_level in zip(predictors, accuracy, strict=True):
        entry = {"levels": levels, "level_name": CORRUPTIONS.get(corruption).level_name, "accuracy": per_level,
                 "seed": seed, "split": split}
        if predictor.run_dir is not None:
            save_robustness(predictor.run_dir, corruption, entry)
        entries.append(entry)
    return entries


def save_robustness(run_dir: Path, corruption: str, entry: dict) -> None:
    import json

    from clipadapt.reports import plots

    path = Path(run_dir) / ROBUSTNESS_FILE
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[corruption] = entry
    atomic_write_json(path, data)
    series = [{"x": [float(k) for k in e["accuracy"]], "y": list(e["accuracy"].values()),
               "label": f"{name} ({e['level_name']})"} for name, e in sorted(data.items())]
    plots.plot_lines(series, Path(run_dir) / "robustness.png", "corruption level", "top-1 accuracy",
                     f"robustness of {Path(run_dir).name}")
