"""CLIP preprocessing with PIL and torch (no torchvision).

Resize the short side with bicubic filtering, center crop, scale to [0, 1], normalise; identical to
transformers' ``CLIPImageProcessorPil`` (to float rounding). Decoding and resizing produce uint8 tensors, and
normalisation runs once per batch, so worker processes send 4x less data.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from PIL import Image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
_RESAMPLE_BY_CODE = {int(v): k for k, v in _RESAMPLE.items()}


@dataclass(frozen=True)
class PreprocessConfig:
    """What a checkpoint expects; part of the feature-cache key."""

    resize: int = 224  # short side after resizing
    crop: tuple[int, int] = (224, 224)  # (height, width)
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    resample: str = "bicubic"
    rescale: float = 1 / 255
    resize_mode: str = "shortest"  # "shortest": short side + center crop (CLIP); "squash": straight to crop (SigLIP)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_image_processor(cls, processor) -> PreprocessConfig:
        """Read the settings of a transformers image processor (CLIP or SigLIP style)."""
        size = processor.size if isinstance(processor.size, dict) else dict(processor.size)
        size = {k: v for k, v in size.items() if v is not None}
        resample = _RESAMPLE_BY_CODE.get(int(processor.resample), "bicubic")
        common = dict(mean=tuple(float(m) for m in processor.image_mean),
                      std=tuple(float(s) for s in processor.image_std), resample=resample,
                      rescale=float(getattr(processor, "rescale_factor", 1 / 255)))
        crop_pct = getattr(processor, "crop_pct", None)
        if "shortest_edge" in size and crop_pct:  # ConvNext style (e.g. microsoft/resnet-18): resize, then crop
            short = int(size["shortest_edge"])
            if short < 384:
                return cls(resize=int(short / crop_pct), crop=(short, short), resize_mode="shortest", **common)
            return cls(resize=short, crop=(short, short), resize_mode="squash", **common)
        if "shortest_edge" in size:
            crop = getattr(processor, "crop_size", None) or {}
            crop = {k: v for k, v in (crop if isinstance(crop, dict) else dict(crop)).items() if v is not None}
            short = int(size["shortest_edge"])
            crop_hw = (int(crop["height"]), int(crop["width"])) if processor.do_center_crop and crop else (short, short)
            return cls(resize=short, crop=crop_hw, resize_mode="shortest", **common)
        height, width = int(size["height"]), int(size["width"])  # SigLIP: squash to a fixed size, no crop
        return cls(resize=min(height, width), crop=(height, width), resize_mode="squash", **common)


def resize_short_side(image: Image.Image, size: int, resample: str = "bicubic") -> Image.Image:
    """Resize so the short side is ``size``, long side ``int(size * long / short)`` (transformers' rule)."""
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    if (new_w, new_h) == (width, height):
        return image
    return image.resize((new_w, new_h), resample=_RESAMPLE[resample])


def center_crop(image: Image.Image, height: int, width: int) -> Image.Image:
    """Center crop; images smaller than the crop are zero-padded (transformers' rule)."""
    w, h = image.size
    if h >= height and w >= width:
        top, left = (h - height) // 2, (w - width) // 2
        return image.crop((left, top, left + width, top + height))
    new_h, new_w = max(height, h), max(width, w)
    canvas = Image.new("RGB", (new_w, new_h), (0, 0, 0))
    top_pad, left_pad = math.ceil((new_h - h) / 2), math.ceil((new_w - w) / 2)
    canvas.paste(image, (left_pad, top_pad))
    # transformers crops the padded image at the original offsets shifted by the padding
    top, left = (h - height) // 2 + top_pad, (w - width) // 2 + left_pad
    top, left = max(0, top), max(0, left)
    return canvas.crop((left, top, left + width, top + height))


def pil_to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    """HWC uint8 PIL image -> CHW uint8 tensor."""
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


@dataclass
class ClipPreprocess:
    """Callable image preprocessing that travels with the model (open_clip habit)."""

    config: PreprocessConfig = field(default_factory=PreprocessConfig)

    def to_uint8(self, image: Image.Image) -> torch.Tensor:
        """Resize + crop, still uint8 (CHW)."""
        cfg = self.config
        if cfg.resize_mode == "squash":
            height, width = cfg.crop
            if image.size != (width, height):
                image = image.resize((width, height), resample=_RESAMPLE[cfg.resample])
            return pil_to_uint8_tensor(image)
        image = resize_short_side(image, cfg.resize, cfg.resample)
        image = center_crop(image, *cfg.crop)
        return pil_to_uint8_tensor(image)

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """(N)CHW uint8, or float already in [0, 1] (e.g. corrupted images) -> float32 normalised.

        (x * rescale - mean) / std, in place on one float32 copy (the input is never modified).
        """
        cfg = self.config
        shape = (-1, 1, 1)
        if batch.dtype == torch.uint8:
            x = batch.to(torch.float32).mul_(cfg.rescale)
        else:
            x = batch.to(torch.float32, copy=True)
        x.sub_(torch.tensor(cfg.mean, dtype=torch.float32).view(shape))
        return x.div_(torch.tensor(cfg.std, dtype=torch.float32).view(shape))

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """One RGB PIL image -> normalised CHW float tensor."""
        return self.normalize(self.to_uint8(image))

    def train_augment(self, scale: tuple[float, float] = (0.5, 1.0), flip: bool = True) -> TrainAugment:
        return TrainAugment(self, scale=scale, flip=flip)


@dataclass
class TrainAugment:
    """Training-time augmentation: random resized crop and horizontal flip, then the model's own size."""

    base: ClipPreprocess
    scale: tuple[float, float] = (0.5, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    rng: random.Random = field(default_factory=random.Random)

    def to_uint8(self, image: Image.Image) -> torch.Tensor:
        w, h = image.size
        area = w * h
        box = (0, 0, w, h)
        for _ in range(10):  # same sampling as torchvision's RandomResizedCrop
            target = area * self.rng.uniform(*self.scale)
            log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
            aspect = math.exp(self.rng.uniform(*log_ratio))
            cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                left, top = self.rng.randint(0, w - cw), self.rng.randint(0, h - ch)
                box = (left, top, left + cw, top + ch)
                break
        height, width = self.base.config.crop
        image = image.resize((width, height), _RESAMPLE[self.base.config.resample], box=box)
        if self.flip and self.rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return pil_to_uint8_tensor(image)

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        return self.base.normalize(batch)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.normalize(self.to_uint8(image))
