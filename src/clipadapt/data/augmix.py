"""The augmented views of one image that TPT tunes its prompt on (no torchvision: PIL and NumPy only).

Ported from TPT's ``data/datautils.py`` (azshue/TPT at 63ecbac, lines 61-102) and ``data/augmix_ops.py`` (lines
24-114, 141-144; itself Google's AugMix code, Apache-2.0): each view is a random resized crop with a random horizontal
flip of the original image (torchvision's ``RandomResizedCrop`` defaults: scale 0.08-1, ratio 3/4-4/3, 10 tries then
a center crop; bilinear), and with ``augmix`` a mix of three chains of one to three operations (autocontrast,
equalize, posterize, rotate, solarize, shear x/y, translate x/y at severity 1) with Dirichlet(1, 1, 1) weights, mixed
with the crop by a Beta(1, 1) weight. The reference draws from NumPy's global generator; ours from a
``numpy.random.Generator`` per image, so an image's views do not depend on the images before it. The geometric
operations work at the crop size (the reference's ``IMAGE_SIZE``, 224 there).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image, ImageOps

from clipadapt.data.transforms import ClipPreprocess, pil_to_uint8_tensor


def _int_parameter(level: float, maxval: float) -> int:
    return int(level * maxval / 10)


def _float_parameter(level: float, maxval: float) -> float:
    return float(level) * maxval / 10.0


def _sample_level(rng: np.random.Generator, n: float) -> float:
    return rng.uniform(low=0.1, high=n)


def _signed(rng: np.random.Generator, value: float) -> float:
    return -value if rng.uniform() > 0.5 else value


def augmentations(size: int) -> list[Callable[[Image.Image, int, np.random.Generator], Image.Image]]:
    """The reference's ``augmentations`` list (without the ImageNet-C overlaps), for images of ``size`` pixels."""
    def affine(image, matrix):
        return image.transform((size, size), Image.Transform.AFFINE, matrix, resample=Image.Resampling.BILINEAR)

    return [
        lambda image, level, rng: ImageOps.autocontrast(image),
        lambda image, level, rng: ImageOps.equalize(image),
        lambda image, level, rng: ImageOps.posterize(image, 4 - _int_parameter(_sample_level(rng, level), 4)),
        lambda image, level, rng: image.rotate(_signed(rng, _int_parameter(_sample_level(rng, level), 30)),
                                               resample=Image.Resampling.BILINEAR),
        lambda image, level, rng: ImageOps.solarize(image, 256 - _int_parameter(_sample_level(rng, level), 256)),
        lambda image, level, rng: affine(image, (1, _signed(rng, _float_parameter(_sample_level(rng, level), 0.3)),
                                                 0, 0, 1, 0)),
        lambda image, level, rng: affine(image, (1, 0, 0, _signed(rng, _float_parameter(_sample_level(rng, level),
                                                                                          0.3)), 1, 0)),
        lambda image, level, rng: affine(image, (1, 0, _signed(rng, _int_parameter(_sample_level(rng, level),
                                                                                     size / 3)), 0, 1, 0)),
        lambda image, level, rng: affine(image, (1, 0, 0, 0, 1, _signed(rng, _int_parameter(_sample_level(rng, level),
                                                                                              size / 3)))),
    ]


def random_resized_crop(image: Image.Image, size: tuple[int, int], rng: np.random.Generator,
                        scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> Image.Image:
    """torchvision's ``RandomResizedCrop.get_params`` and crop, then a horizontal flip with probability 1/2."""
    width, height = image.size
    area = width * height
    box = None
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            box = (left, top, left + w, top + h)
            break
    if box is None:  # the fallback: a center crop within the ratio
        in_ratio = width / height
        w, h = ((width, int(round(width / ratio[0]))) if in_ratio < ratio[0] else
                (int(round(height * ratio[1])), height) if in_ratio > ratio[1] else (width, height))
        left, top = (width - w) // 2, (height - h) // 2
        box = (left, top, left + w, top + h)
    view = image.crop(box).resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return view.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.uniform() < 0.5 else view


def augmented_views(image: Image.Image, preprocess: ClipPreprocess, views: int, augmix: bool,
                    rng: np.random.Generator, severity: int = 1) -> torch.Tensor:
    """``(1 + views, 3, H, W)`` normalised pixels: the image as the model sees it, then ``views`` augmented views
    (``AugMixAugmenter.__call__``)."""
    size = preprocess.config.crop
    operations = augmentations(size[0]) if augmix else []
    pixels = [preprocess.normalize(preprocess.to_uint8(image))]
    for _ in range(views):
        crop = random_resized_crop(image, size, rng)
        processed = preprocess.normalize(pil_to_uint8_tensor(crop))
        if not operations:
            pixels.append(processed)
            continue
        weights = np.float32(rng.dirichlet([1.0, 1.0, 1.0]))
        keep = np.float32(rng.beta(1.0, 1.0))
        mix = torch.zeros_like(processed)
        for i in range(3):
            chained = crop.copy()
            for _ in range(int(rng.integers(1, 4))):
                chained = operations[int(rng.integers(len(operations)))](chained, severity, rng)
            mix += float(weights[i]) * preprocess.normalize(pil_to_uint8_tensor(chained))
        pixels.append(keep * processed + (1 - keep) * mix)
    return torch.stack(pixels)
