"""What the engine feeds a method: batches of cached features or of preprocessed images.

Shuffling and augmentation are functions of (seed, epoch, position) only, so an epoch is the same whether it
runs straight through, after a resume, or split over several processes.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader

from clipadapt.data.base import ClassificationDataset, Split
from clipadapt.data.transforms import ClipPreprocess, TrainAugment
from clipadapt.engine.features import (
    EncodedSplit,
    FeatureCache,
    SkippedImage,
    SplitImages,
    check_feature_kind,
    collate_images,
    default_num_workers,
    encode_split,
    report_skipped,
)
from clipadapt.engine.views import FeatureViews, ViewCache, ViewSpec, feature_views
from clipadapt.errors import ConfigError
from clipadapt.models.bundle import ClipBundle

AUGMENTATIONS = ("none", "flip", "crop-flip")
INPUT_KINDS = ("features", "pixels")


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool, rank: int = 0, world_size: int = 1) -> np.ndarray:
    """This process's positions for an epoch; with several processes every one gets the same count (padded)."""
    if shuffle:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=generator).numpy()
    else:
        order = np.arange(n)
    if world_size > 1:
        padded = int(np.ceil(n / world_size)) * world_size
        order = np.concatenate([order, order[: padded - n]]) if shuffle else order
        order = order[rank::world_size]
    return order


def note_skipped(seen: dict[str, dict[int, SkippedImage]], split: Split, position: int, reason: str,
                 strict: bool) -> None:
    """Record an unreadable image of a split once, warning (or, ``strict``, failing) the first time only."""
    images = seen.setdefault(split.name, {})
    if position not in images:
        images[position] = SkippedImage(position, split.describe(position), reason)
        report_skipped([images[position]], strict, split.name)


class AugmentedImages(SplitImages):
    """Images of a split as uint8 tensors; the augmentation of an item depends only on (seed, epoch, position)."""

    def __init__(self, split: Split, preprocess: ClipPreprocess, augment: str, seed: int, epoch: int,
                 crop_scale: tuple[float, float] = (0.5, 1.0)) -> None:
        super().__init__(split, preprocess)
        self.augment, self.seed, self.epoch, self.crop_scale = augment, seed, epoch, tuple(crop_scale)

    def pixels(self, image, position: int) -> torch.Tensor:
        if self.augment == "none":
            return self.transform.to_uint8(image)
        rng = random.Random(f"{self.seed}-{self.epoch}-{position}")
        if self.augment == "crop-flip":
            return TrainAugment(self.transform, scale=self.crop_scale, rng=rng).to_uint8(image)
        pixels = self.transform.to_uint8(image)
        return pixels.flip(-1) if rng.random() < 0.5 else pixels


@dataclass
class TrainingData:
    """Train/val/test inputs for one run: cached features for feature methods, images for pixel methods."""

    dataset: ClassificationDataset
    bundle: ClipBundle
    batch_size: int = 32
    eval_batch_size: int = 64
    num_workers: int = -1
    strict: bool = False
    augment: str = "none"
    seed: int = 0
    cache: FeatureCache | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    main_process_first: object = None  # accelerator.main_process_first, so one process encodes and the rest read
    preprocess: ClipPreprocess | None = None  # for pixel batches (default: the bundle's); features use the bundle's
    feature_kind: str = "projected"  # what feature methods eat (engine.features.FEATURE_KINDS)
    crop_scale: tuple[float, float] = (0.5, 1.0)  # random resized crop of crop-flip and of the feature views
    # augmented views of the training split that feature methods train on (engine/views.py; 0: the clean features):
    # the engine's epoch e trains on view e mod views, and methods that fit themselves read ``feature_views()``
    views: int = 0
    views_seed: int = 0
    view_cache: ViewCache | None = None
    skipped: dict[str, dict[int, SkippedImage]] = field(default_factory=dict)
    _features: dict[str, EncodedSplit] = field(default_factory=dict)
    _views: FeatureViews | None = None

    def __post_init__(self) -> None:
        if self.preprocess is None:
            self.preprocess = self.bundle.preprocess
        check_feature_kind(self.feature_kind)
        if self.augment not in AUGMENTATIONS:
            raise ConfigError(f"unknown train.augment '{self.augment}'; valid choices: {', '.join(AUGMENTATIONS)}")

    def split(self, name: str) -> Split:
        return self.dataset.split(name)

    def features(self, split: str) -> EncodedSplit:
        """Frozen image features of a split (encoded once, then read from the feature cache)."""
        if split not in self._features:
            with self.main_process_first() if self.main_process_first is not None else nullcontext():
                encoded = encode_split(self.bundle, self.split(split), self.eval_batch_size, self.num_workers,
                                       self.strict, self.cache, self.feature_kind)
            for s in encoded.skipped:
                self.skipped.setdefault(split, {})[s.position] = s
            self._features[split] = encoded
        return self._features[split]

    def feature_views(self) -> FeatureViews:
        """The training split's ``views`` augmented views (encoded once, then read from the views cache)."""
        if self.views <= 0:
            raise ValueError("this run has no feature views (features.views)")
        if self._views is None:
            spec = ViewSpec(self.views, tuple(self.crop_scale), seed=self.views_seed)
            with self.main_process_first() if self.main_process_first is not None else nullcontext():
                self._views = feature_views(self.bundle, self.split("train"), spec, self.eval_batch_size,
                                            self.num_workers, self.strict, self.view_cache, self.feature_kind)
            for s in self._views.skipped:
                self.skipped.setdefault("train", {})[s.position] = s
        return self._views

    def viewed(self, kind: str, split: str) -> bool:
        """Whether training batches of this split come from the feature views."""
        return kind == "features" and split == "train" and self.views > 0

    def num_items(self, kind: str, split: str) -> int:
        if self.viewed(kind, split):
            return len(self.feature_views().labels)
        return len(self.features(split).labels) if kind == "features" else len(self.split(split))

    def batches(self, kind: str, split: str, epoch: int = 0, train: bool = False, rank: int = 0,
                world_size: int = 1) -> Iterator[dict[str, torch.Tensor]]:
        """``{"inputs", "labels", "positions"}`` batches on the device; ``train`` shuffles (and augments)."""
        if kind not in INPUT_KINDS:
            raise ValueError(f"unknown input kind '{kind}'; valid choices: {', '.join(INPUT_KINDS)}")
        batch_size = self.batch_size if train else self.eval_batch_size
        order = epoch_order(self.num_items(kind, split), self.seed, epoch, train, rank, world_size)
        if kind == "features":
            encoded = self.feature_views().encoded(epoch % self.views) if train and self.viewed(kind, split) \
                else self.features(split)
            yield from self._feature_batches(encoded, order, batch_size)
        else:
            yield from self._pixel_batches(split, order, batch_size, epoch, train)

    def _feature_batches(self, encoded: EncodedSplit, order: np.ndarray, batch_size: int):
        labels = torch.as_tensor(encoded.labels, dtype=torch.long)
        positions = torch.as_tensor(encoded.positions, dtype=torch.long)
        for start in range(0, len(order), batch_size):
            index = torch.as_tensor(order[start:start + batch_size], dtype=torch.long)
            yield {"inputs": encoded.features[index].to(self.device), "labels": labels[index].to(self.device),
                   "positions": positions[index]}

    def _pixel_batches(self, split: str, order: np.ndarray, batch_size: int, epoch: int, train: bool):
        images = AugmentedImages(self.split(split), self.preprocess, self.augment if train else "none",
                                 self.seed, epoch, self.crop_scale)
        workers = default_num_workers(self.num_workers)
        loader = DataLoader(images, batch_size=batch_size, sampler=order.tolist(), num_workers=workers,
                            collate_fn=collate_images, prefetch_factor=4 if workers > 0 else None,
                            generator=torch.Generator().manual_seed(self.seed))
        for batch in loader:
            for position, reason in batch["skipped"]:  # warned once, not every epoch
                note_skipped(self.skipped, self.split(split), position, reason, self.strict)
            if batch["images"] is None:
                continue
            yield {"inputs": self.preprocess.normalize(batch["images"]).to(self.device),
                   "labels": batch["labels"].to(self.device), "positions": batch["positions"]}

    def skipped_rows(self) -> list[tuple[str, str, str]]:
        return [(split, s.item, s.reason) for split, items in self.skipped.items() for s in items.values()]
