"""Batched image encoding with skipped-image accounting and an on-disk feature cache.

Features are cached under ``$CLIPADAPT_HOME/features`` keyed by the model's fingerprint, the split's
fingerprint (source and exact indices) and the preprocessing, so trying ten template sets, or a linear
probe after zero-shot, encodes the images once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset

from clipadapt.data.base import Split
from clipadapt.data.images import ImageLoadError
from clipadapt.engine.cachedir import lock_path, touch
from clipadapt.errors import DataError
from clipadapt.io import atomic_path
from clipadapt.models.bundle import ClipBundle
from clipadapt.paths import feature_cache_dir
from clipadapt.progress import progress_bar

log = logging.getLogger(__name__)
CACHE_VERSION = 1
# what a feature method eats: "projected" (the model's image embedding, L2-normalised) or "pooled" (the image tower's
# pooled output before its final projection, unnormalised: for methods that train that projection)
FEATURE_KINDS = ("projected", "pooled")


class SplitImages(Dataset):
    """Decodes and resizes images of a split into uint8 tensors; failures are returned, not raised."""

    def __init__(self, split: Split, transform) -> None:
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split)

    def pixels(self, image, position: int) -> torch.Tensor:
        return self.transform.to_uint8(image)

    def __getitem__(self, position: int):
        try:
            image = self.split.load(position)
            return self.pixels(image, position), int(self.split.labels[position]), position, None
        except ImageLoadError as e:
            return None, -1, position, str(e)


def collate_images(items):
    good = [it for it in items if it[0] is not None]
    skipped = [(it[2], it[3]) for it in items if it[0] is None]
    if good:
        images = torch.stack([it[0] for it in good])
        labels = torch.tensor([it[1] for it in good], dtype=torch.long)
        positions = torch.tensor([it[2] for it in good], dtype=torch.long)
    else:
        images, labels, positions = None, torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    return {"images": images, "labels": labels, "positions": positions, "skipped": skipped}


def default_num_workers(requested: int = -1) -> int:
    if requested >= 0:
        return requested
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def image_loader(split: Split, transform, batch_size: int, num_workers: int = -1, shuffle: bool = False,
                 generator: torch.Generator | None = None) -> DataLoader:
    workers = default_num_workers(num_workers)
    return DataLoader(
        SplitImages(split, transform), batch_size=batch_size, shuffle=shuffle, num_workers=workers,
        collate_fn=collate_images, persistent_workers=False,
        # its own generator even unshuffled: a loader otherwise draws its seed from the global RNG, and encoding a
        # split would change the dropout of the training that follows
        generator=generator if generator is not None else torch.Generator().manual_seed(0),
        prefetch_factor=4 if workers > 0 else None,
    )


@dataclass
class SkippedImage:
    position: int
    item: str
    reason: str


@dataclass
class EncodedSplit:
    """Image features of the readable images of a split (normalised embeddings, or pooled pre-projection outputs)."""

    features: torch.Tensor  # (N, D) float32, L2-normalised for the "projected" kind
    labels: np.ndarray  # (N,)
    positions: np.ndarray  # (N,) positions in the split
    skipped: list[SkippedImage] = field(default_factory=list)
    encode_time_s: float = 0.0
    from_cache: bool = False

    @property
    def images_per_s(self) -> float:
        return len(self.labels) / self.encode_time_s if self.encode_time_s > 0 else float("nan")


def report_skipped(skipped: list[SkippedImage], strict: bool, split_name: str) -> None:
    if not skipped:
        return
    if strict:
        first = skipped[0]
        raise DataError(f"unreadable image {first.item}: {first.reason} (--strict)")
    log.warning("skipped %d unreadable image(s) in split '%s', e.g. %s: %s",
                len(skipped), split_name, skipped[0].item, skipped[0].reason)


def readable_batches(split: Split, preprocess, batch_size: int, num_workers: int, strict: bool,
                     skipped: list[SkippedImage], description: str) -> Iterator[tuple[torch.Tensor, dict]]:
    """``(pixels, batch)`` for every batch of readable images of ``split``, normalised for the model; unreadable
    images are appended to ``skipped`` (with ``strict`` the first one raises), and the progress bar counts both."""
    loader = image_loader(split, preprocess, batch_size, num_workers)
    with progress_bar(description, total=len(split)) as advance:
        for batch in loader:
            for position, reason in batch["skipped"]:
                skipped.append(SkippedImage(position, split.describe(position), reason))
                if strict:
                    report_skipped(skipped, strict=True, split_name=split.name)
            if batch["images"] is not None:
                yield preprocess.normalize(batch["images"]), batch
            advance(len(batch["labels"]) + len(batch["skipped"]))
    report_skipped(skipped, strict, split.name)


def check_feature_kind(kind: str) -> None:
    if kind not in FEATURE_KINDS:
        raise ValueError(f"unknown feature kind '{kind}'; valid choices: {', '.join(FEATURE_KINDS)}")


@torch.inference_mode()
def encode_images(bundle: ClipBundle, split: Split, batch_size: int = 64, num_workers: int = -1,
                  strict: bool = False, description: str = "encoding", kind: str = "projected") -> EncodedSplit:
    """Encode every readable image of ``split`` with the bundle's image tower: normalised embeddings
    (``projected``) or the pooled outputs before the final projection (``pooled``)."""
    check_feature_kind(kind)
    encode = bundle.encode_image if kind == "projected" else bundle.encode_image_pooled
    features, labels, positions, skipped = [], [], [], []
    start = time.perf_counter()
    for pixels, batch in readable_batches(split, bundle.preprocess, batch_size, num_workers, strict, skipped,
                                          description):
        features.append(encode(pixels).float().cpu())
        labels.append(batch["labels"].numpy())
        positions.append(batch["positions"].numpy())
    elapsed = time.perf_counter() - start
    if not features:
        raise DataError(f"no readable images in split '{split.name}' ({len(skipped)} skipped)")
    return EncodedSplit(torch.cat(features), np.concatenate(labels), np.concatenate(positions), skipped, elapsed)


class SplitCache:
    """safetensors files, one per encoded split, written atomically and keyed by model x split x preprocessing x
    dtype (and the subclass's ``version``); an unreadable entry is recomputed, never trusted. Subclasses say what
    the tensors are (``to_file``, ``from_file``)."""

    version: ClassVar[int] = 1
    folder: ClassVar[str] = ""  # under the feature cache directory
    description: ClassVar[str] = "feature cache"

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else feature_cache_dir() / self.folder

    def key(self, bundle: ClipBundle, split: Split, kind: str = "projected", extra: dict | None = None) -> str:
        """``extra``: what a derived entry adds to the identity (augmented views: engine/views.py)."""
        identity = {
            "version": self.version,
            "model": bundle.fingerprint,
            "split": split.fingerprint(),
            "preprocess": bundle.preprocess.config.to_dict(),
            "dtype": str(bundle.dtype),
        }
        if kind != "projected":  # named only for other kinds, so that existing entries keep their keys
            identity["kind"] = kind
        identity.update(extra or {})
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]

    def path(self, bundle: ClipBundle, split: Split, kind: str = "projected") -> Path:
        return self.root / f"{self.key(bundle, split, kind)}.safetensors"

    def load(self, bundle: ClipBundle, split: Split, kind: str = "projected"):
        path = self.path(bundle, split, kind)
        if not path.is_file():
            return None
        try:
            from safetensors import safe_open

            tensors = load_file(str(path))
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            skipped = [SkippedImage(**s) for s in json.loads(meta.get("skipped", "[]"))]
            found = self.from_file(tensors, meta, skipped, float(meta.get("encode_time_s", 0.0)))
            touch(path)  # its last use, for `clipadapt cache --max-size` (least recently used go first)
            return found
        except Exception:  # a corrupt cache entry is recomputed, never trusted
            log.warning("ignoring unreadable %s entry %s", self.description, path)
            return None

    def save(self, bundle: ClipBundle, split: Split, encoded, kind: str = "projected") -> Path:
        path = self.path(bundle, split, kind)
        tensors, extra = self.to_file(encoded)
        meta = {"model": bundle.spec, "fingerprint": bundle.fingerprint, "split": split.name,
                "skipped": json.dumps([s.__dict__ for s in encoded.skipped]),
                "encode_time_s": f"{encoded.encode_time_s:.6f}", **extra}
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
        return path

    def to_file(self, encoded) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """The tensors of an encoded split and any metadata of its own."""
        raise NotImplementedError

    def from_file(self, tensors: dict[str, torch.Tensor], meta: dict[str, str], skipped: list[SkippedImage],
                  encode_time_s: float):
        raise NotImplementedError

    def through(self, bundle: ClipBundle, split: Split, strict: bool, encode: Callable[[], Any],
                kind: str = "projected"):
        """The cached encoding of ``split``, or ``encode()`` saved for next time.

        Processes that need the same entry at once (cells of a benchmark on one machine or a shared filesystem)
        take a lock file beside it: one encodes, the others wait and read what it wrote.
        """
        from filelock import FileLock

        hit = self._hit(bundle, split, strict, kind)
        if hit is not None:
            return hit
        path = self.path(bundle, split, kind)
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(lock_path(path))):
            hit = self._hit(bundle, split, strict, kind)  # written while this process waited
            if hit is not None:
                return hit
            encoded = encode()
            self.save(bundle, split, encoded, kind)
        return encoded

    def _hit(self, bundle: ClipBundle, split: Split, strict: bool, kind: str = "projected"):
        hit = self.load(bundle, split, kind)
        if hit is not None:
            report_skipped(hit.skipped, strict, split.name)
        return hit


class FeatureCache(SplitCache):
    """Encoded image features of classification splits."""

    version = CACHE_VERSION

    def to_file(self, encoded: EncodedSplit) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        return {"features": encoded.features,
                "labels": torch.from_numpy(np.ascontiguousarray(encoded.labels)),
                "positions": torch.from_numpy(np.ascontiguousarray(encoded.positions))}, {}

    def from_file(self, tensors, meta, skipped, encode_time_s) -> EncodedSplit:
        return EncodedSplit(tensors["features"], tensors["labels"].numpy(), tensors["positions"].numpy(),
                            skipped, encode_time_s, from_cache=True)


def encode_split(bundle: ClipBundle, split: Split, batch_size: int = 64, num_workers: int = -1,
                 strict: bool = False, cache: FeatureCache | None = None, kind: str = "projected") -> EncodedSplit:
    """Cached ``encode_images``: a second call with the same model, split, preprocessing and kind reads the file."""
    check_feature_kind(kind)

    def encode() -> EncodedSplit:
        return encode_images(bundle, split, batch_size, num_workers, strict, description=f"encoding {split.name}",
                             kind=kind)

    return cache.through(bundle, split, strict, encode, kind) if cache is not None else encode()
