"""scikit-learn's bundled handwritten digits: real images that need no download."""

from __future__ import annotations

import numpy as np
from PIL import Image

from clipadapt.data.base import ClassificationDataset, InMemorySource, Split, make_splits, stratified_split
from clipadapt.data.registry import DataConfig, register_dataset

DIGITS_SIZE = 32
DIGITS_TEST_SEED = 0  # the test split is fixed, whatever the run seed


def _digit_images() -> tuple[list[Image.Image], np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = []
    for pixels in digits.images:  # 8x8, values 0..16, ink is high
        gray = (255 - pixels * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)  # dark ink on white paper
        image = Image.fromarray(gray, mode="L").resize((DIGITS_SIZE, DIGITS_SIZE), Image.Resampling.BILINEAR)
        images.append(image)
    return images, digits.target.astype(np.int64)


@register_dataset("digits", usage="digits")
def load_digits_dataset(config: DataConfig, argument: str | None = None) -> ClassificationDataset:
    """1,797 real 8x8 handwritten digits (scikit-learn), upscaled to 32 px; 30% held out as test."""
    images, labels = _digit_images()
    source = InMemorySource(images, labels, name="digits")
    pool = Split(source, np.arange(len(labels)), "pool")
    train_pos, test_pos = stratified_split(labels, 0.3, DIGITS_TEST_SEED)
    splits = make_splits(
        "digits", pool.subset(train_pos, "train"), pool.subset(test_pos, "test"),
        val_fraction=config.val_fraction, seed=config.seed,
    )
    return ClassificationDataset(
        name="digits", classnames=[str(d) for d in range(10)], splits=splits, templates=["simple", "digits"],
        info={"source": "sklearn.datasets.load_digits"},
    )
