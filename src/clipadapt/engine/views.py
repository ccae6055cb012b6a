"""Augmented feature views: N seeded random-resized-crop + flip views of every training image, encoded once.

The reference code of the cached-feature methods trains on augmented views rather than one clean feature per image
(GDA's statistics over 10 views, ProLIP a different one of 300 views per iteration, Tip-Adapter's keys the mean of
10 views, LP++ one view; CoOp and its kin train through random crops and flips). ``features.views=N`` gives those
methods N views of every training image: view ``v`` of the image at position ``p`` is
``TrainAugment(scale=train.crop_scale, flip=True)`` drawn from ``random.Random(f"views-{seed}-{v}-{p}")``, where
``seed`` is ``features.seed``, not the run's seed, so every method and seed that asks for the same views of the
same split reads the same entry. Evaluation (val, test) always runs on the clean images.

Views are cached under ``$CLIPADAPT_HOME/features/views/<key>/``, the key the feature cache's identity (model, split,
preprocessing, dtype, kind) plus ``views``, ``crop_scale``, ``flip`` and ``views_seed`` (the clean entries keep their
keys): ``views.npy`` (views, images of the split, dim) in **float16**, read memory-mapped, and ``meta.json``. Size:
ImageNet 16-shot x 300 views (ProLIP's) is 16000 images x 300 x 512 dims x 2 bytes = 4.9 GB (4.6 GiB; 7.4 GB of
ViT-B/16's 768-wide pooled features), which a method reads one view at a time (``FeatureViews.view``) where it does
not fit in memory. Each image is decoded once per ``VIEWS_PER_PASS`` views (decoding, not the tower, bounds the cost
of small models).
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from clipadapt.config import option
from clipadapt.data.base import Split
from clipadapt.data.transforms import TrainAugment
from clipadapt.engine.cachedir import lock_path, touch
from clipadapt.engine.features import (
    EncodedSplit,
    SkippedImage,
    SplitCache,
    SplitImages,
    check_feature_kind,
    collate_images,
    default_num_workers,
    report_skipped,
)
from clipadapt.errors import ConfigError, DataError
from clipadapt.io import _umask, atomic_write_json, staged_directory
from clipadapt.models.bundle import ClipBundle
from clipadapt.progress import progress_bar

log = logging.getLogger(__name__)
# how a method trained by the engine uses views (Method.view_use): the engine feeds epoch e with view e mod N
PER_EPOCH = "a view per epoch: epoch e trains on view e mod N"
# how full-batch methods use them (methods/full_batch.py)
PER_ITERATION = "a view per full-batch iteration: iteration t (from 1) on view t mod N"
CLEAN = "clean"  # features.views=clean: the cached clean features, no views (what every method ate before views)
VIEWS_PER_PASS = 10  # views cropped from one decoded image per pass over the split
STORE, META = "views.npy", "meta.json"


def check_crop_scale(scale, name: str = "train.crop_scale") -> tuple[float, float]:
    """``(min, max)`` of a random resized crop's area share: two numbers in (0, 1], min <= max."""
    values = list(scale) if isinstance(scale, list | tuple) else [scale]
    if len(values) != 2 or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values) or \
            not 0 < values[0] <= values[1] <= 1:
        raise ConfigError(f"{name} must be two numbers min,max with 0 < min <= max <= 1, got {scale}")
    return float(values[0]), float(values[1])


@dataclass
class FeaturesConfig:
    """The ``features:`` section: what feature methods train on."""

    views: int | str | None = option(None, help="augmented views of each training image that feature methods train "
                                                "on (random resized crop with train.crop_scale + flip, encoded once "
                                                "and cached; evaluation stays on clean images); 'clean': one clean "
                                                "feature per image, no views; default: the method's recipe (gda and "
                                                "tip-adapter 10, prolip 300, lp++ 1, see docs/methods.md)")
    seed: int = option(0, help="seed of the views (not the run's seed: every run asking for the same views of the "
                               "same images shares them)")

    def __post_init__(self) -> None:
        if self.views is None or self.views == CLEAN:
            return
        if isinstance(self.views, str | bool) or self.views <= 0:
            raise ConfigError(f"features.views must be a positive number of views or '{CLEAN}', got {self.views!r} "
                              f"(leave it unset for the method's recipe)")


@dataclass(frozen=True)
class ViewSpec:
    """Which views: how many, the crop's area share, flips, and the views' own seed."""

    count: int
    crop_scale: tuple[float, float] = (0.5, 1.0)
    flip: bool = True
    seed: int = 0

    def identity(self) -> dict:
        """What the cache key adds to the clean features' identity."""
        return {"views": self.count, "crop_scale": list(self.crop_scale), "flip": self.flip, "views_seed": self.seed}

    def record(self) -> dict:
        return {"views": self.count, "crop_scale": list(self.crop_scale), "flip": self.flip, "seed": self.seed}


@dataclass
class FeatureViews:
    """The views of a split's readable images: ``store[v, p]`` is view v of the image at position p (float16, often
    a memory map; rows of unreadable images stay zero and are not read)."""

    store: np.ndarray  # (views, len(split), dim) float16
    labels: np.ndarray  # (N,) of the readable images
    positions: np.ndarray  # (N,)
    spec: ViewSpec
    skipped: list[SkippedImage] = field(default_factory=list)
    encode_time_s: float = 0.0
    from_cache: bool = False

    def __len__(self) -> int:
        return int(self.store.shape[0])

    @property
    def dim(self) -> int:
        return int(self.store.shape[2])

    def view(self, index: int) -> torch.Tensor:
        """View ``index`` of every readable image, (N, dim) float32 (read from disk for a memory map)."""
        rows = self.store[index]
        rows = rows if len(self.positions) == rows.shape[0] else rows[self.positions]
        return torch.from_numpy(np.asarray(rows, dtype=np.float32))

    def stacked(self) -> tuple[torch.Tensor, np.ndarray]:
        """Every view of every image, ``(views x N, dim)`` (view-major) and their labels."""
        return torch.cat([self.view(v) for v in range(len(self))]), np.tile(self.labels, len(self))

    def mean(self) -> torch.Tensor:
        """The mean over views of each image's features, (N, dim) float32."""
        total = torch.zeros(len(self.labels), self.dim)
        for v in range(len(self)):
            total += self.view(v)
        return total / len(self)

    def encoded(self, index: int) -> EncodedSplit:
        """View ``index`` as an encoded split (the engine's feature batches)."""
        return EncodedSplit(self.view(index), self.labels, self.positions, self.skipped, self.encode_time_s,
                            self.from_cache)


class ViewedImages(SplitImages):
    """Each item: views ``first .. first + count - 1`` of one image, (count, 3, H, W) uint8, from one decoding."""

    def __init__(self, split: Split, preprocess, spec: ViewSpec, first: int, count: int) -> None:
        super().__init__(split, preprocess)
        self.spec, self.first, self.count = spec, first, count

    def pixels(self, image, position: int) -> torch.Tensor:
        return torch.stack([
            TrainAugment(self.transform, scale=self.spec.crop_scale, flip=self.spec.flip,
                         rng=random.Random(f"views-{self.spec.seed}-{view}-{position}")).to_uint8(image)
            for view in range(self.first, self.first + self.count)])


@torch.inference_mode()
def encode_views(bundle: ClipBundle, split: Split, spec: ViewSpec, allocate, batch_size: int = 64,
                 num_workers: int = -1, strict: bool = False, kind: str = "projected") -> FeatureViews:
    """Encode ``spec.count`` views of every readable image of ``split`` into ``allocate(dim)`` (an array of shape
    (views, len(split), dim), float16), ``VIEWS_PER_PASS`` views per decoding; a progress bar counts view-images."""
    from torch.utils.data import DataLoader

    check_feature_kind(kind)
    encode = bundle.encode_image if kind == "projected" else bundle.encode_image_pooled
    preprocess = bundle.preprocess
    store, skipped, readable = None, {}, np.zeros(len(split), dtype=bool)
    labels = np.zeros(len(split), dtype=np.int64)
    workers = default_num_workers(num_workers)
    start = time.perf_counter()
    with progress_bar(f"encoding {spec.count} views of {split.name}", total=spec.count * len(split)) as advance:
        for first in range(0, spec.count, VIEWS_PER_PASS):
            count = min(VIEWS_PER_PASS, spec.count - first)
            loader = DataLoader(ViewedImages(split, preprocess, spec, first, count), collate_fn=collate_images,
                                batch_size=max(1, batch_size // count), num_workers=workers,
                                prefetch_factor=4 if workers > 0 else None,
                                generator=torch.Generator().manual_seed(0))
            for batch in loader:
                for position, reason in batch["skipped"]:
                    if position not in skipped:
                        skipped[position] = SkippedImage(position, split.describe(position), reason)
                        if strict:
                            report_skipped([skipped[position]], strict=True, split_name=split.name)
                if batch["images"] is not None:
                    images = batch["images"]  # (B, count, 3, H, W)
                    features = encode(preprocess.normalize(images.flatten(0, 1))).float().cpu()
                    features = features.view(len(images), count, -1).transpose(0, 1).numpy()
                    if store is None:
                        store = allocate(features.shape[-1])
                    positions = batch["positions"].numpy()
                    store[first:first + count, positions] = features.astype(np.float16)
                    readable[positions] = True
                    labels[positions] = batch["labels"].numpy()
                advance(count * (len(batch["labels"]) + len(batch["skipped"])))
    report_skipped(list(skipped.values()), strict, split.name)
    if store is None:
        raise DataError(f"no readable images in split '{split.name}' ({len(skipped)} skipped)")
    positions = np.flatnonzero(readable)
    return FeatureViews(store, labels[positions], positions, spec, list(skipped.values()),
                        time.perf_counter() - start)


class ViewCache(SplitCache):
    """One directory per (model, split, preprocessing, dtype, kind, views): ``views.npy`` (memory-mapped) and
    ``meta.json``; written in a staging directory and renamed into place, taken under a lock (one process encodes)."""

    version: ClassVar[int] = 1
    folder: ClassVar[str] = "views"
    description: ClassVar[str] = "feature views cache"

    def entry(self, bundle: ClipBundle, split: Split, spec: ViewSpec, kind: str) -> Path:
        return self.root / self.key(bundle, split, kind, extra=spec.identity())

    def load_views(self, bundle: ClipBundle, split: Split, spec: ViewSpec, kind: str) -> FeatureViews | None:
        entry = self.entry(bundle, split, spec, kind)
        if not (entry / META).is_file():
            return None
        try:
            meta = json.loads((entry / META).read_text())
            store = np.load(entry / STORE, mmap_mode="r")
            if store.shape[:2] != (spec.count, len(split)) or store.dtype != np.float16:
                raise ValueError(f"shape {store.shape}")
            found = FeatureViews(store, np.asarray(meta["labels"], dtype=np.int64),
                                 np.asarray(meta["positions"], dtype=np.int64), spec,
                                 [SkippedImage(**s) for s in meta["skipped"]], float(meta["encode_time_s"]),
                                 from_cache=True)
            touch(entry / META)  # its last use (engine.cachedir)
            return found
        except Exception:  # a corrupt entry is encoded again, never trusted
            log.warning("ignoring unreadable %s entry %s", self.description, entry)
            return None

    def through(self, bundle: ClipBundle, split: Split, spec: ViewSpec, strict: bool, encode,
                kind: str = "projected") -> FeatureViews:
        """The cached views, or ``encode(allocate)`` written straight into a memory map in a staging directory."""
        from filelock import FileLock

        entry = self.entry(bundle, split, spec, kind)
        entry.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(lock_path(entry))):
            hit = self.load_views(bundle, split, spec, kind)
            if hit is None:
                with staged_directory(entry, overwrite=True) as stage:
                    os.chmod(stage, 0o777 & ~_umask())  # a temporary directory is private; the cache is not
                    def allocate(dim: int) -> np.ndarray:
                        return np.lib.format.open_memmap(stage / STORE, mode="w+", dtype=np.float16,
                                                         shape=(spec.count, len(split), dim))

                    views = encode(allocate)
                    views.store.flush()
                    atomic_write_json(stage / META, {
                        "model": bundle.spec, "fingerprint": bundle.fingerprint, "split": split.name, "kind": kind,
                        **spec.record(), "labels": views.labels.tolist(), "positions": views.positions.tolist(),
                        "skipped": [s.__dict__ for s in views.skipped], "encode_time_s": views.encode_time_s})
                    del views  # the memory map is closed before its directory moves into place
                hit = self.load_views(bundle, split, spec, kind)
                if hit is None:
                    raise DataError(f"could not read back the {self.description} entry {entry}")
        report_skipped(hit.skipped, strict, split.name)
        return hit


def feature_views(bundle: ClipBundle, split: Split, spec: ViewSpec, batch_size: int = 64, num_workers: int = -1,
                  strict: bool = False, cache: ViewCache | None = None, kind: str = "projected") -> FeatureViews:
    """Cached ``encode_views``; without a cache the views are held in memory (float16)."""

    def encode(allocate) -> FeatureViews:
        return encode_views(bundle, split, spec, allocate, batch_size, num_workers, strict, kind)

    if cache is None:
        return encode(lambda dim: np.zeros((spec.count, len(split), dim), dtype=np.float16))
    return cache.through(bundle, split, spec, strict, encode, kind)

