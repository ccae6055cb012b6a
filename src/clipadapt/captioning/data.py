"""Caption datasets: images with several reference captions each, split into train, val and test.

This module holds the data model (images, splits, refusals), the checks every entry passes, split carving and the
registry; the readers live beside it: ``caption_files.py`` (COCO and Karpathy files, world:captions) and
``hub_captions.py`` (hub datasets). The formats:

* ``coco:FILE.json``: a COCO captions file (``images`` with ``id`` and ``file_name``, ``annotations`` with
  ``image_id`` and ``caption``). Images whose record carries a ``split`` use it; otherwise val and test are carved
  from the file by seed.
* ``coco:FOLDER``: ``captions_train.json``, ``captions_val.json``, ``captions_test.json`` in one folder (any of
  them; a missing val or test is carved from train). ``world:captions`` is such a folder.
* ``karpathy:FILE.json``: Karpathy's split file (``dataset_coco.json``, ``dataset_flickr8k.json``, ...): images with
  ``filepath``/``filename``, ``split`` (train, val, test; ``restval`` counts as train) and ``sentences`` with
  ``raw`` text.
* ``flickr8k``, ``flickr30k``, ``coco-karpathy``: the hub datasets (through ``datasets``, or a local copy of one
  with ``data.root``); ``hf-captions:ORG/NAME`` any hub caption dataset whose columns can be told apart (see
  ``hub_captions.py``).

Image paths are relative to the annotation file's folder or to ``image_root``. Entries that would read outside it
(an absolute path, ``..``, a symlink pointing out), entries whose image is missing, annotations of an unknown image
id and empty captions are refused before any image is opened: counted by reason and listed in
``CaptionDataset.refused``, never read.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from clipadapt.config import option
from clipadapt.data.base import Split
from clipadapt.data.images import load_image
from clipadapt.errors import ConfigError, DataError, UnknownNameError
from clipadapt.registry import Registry

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}


@dataclass
class CaptionDataConfig:
    dataset: str = option("world:captions", help="coco:FILE.json, coco:FOLDER, karpathy:FILE.json or a name")
    image_root: str | None = option(None, help="folder the annotation's image paths are relative to "
                                               "(default: the annotation file's folder)")
    root: str | None = option(None, help="local copy of a hub caption dataset (save_to_disk folder or parquet files)")
    val_fraction: float = option(0.1, help="share of the images carved out as val where the data has no val split")
    test_fraction: float = option(0.1, help="share carved out as test where the data has no test split")
    seed: int = option(0, help="seed of the carving")
    max_images: int | None = option(None, help="use at most this many images per split (seeded), for quick runs")

    def __post_init__(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"caption_data.{name} must be in [0, 1), got {value}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ConfigError("caption_data.val_fraction + test_fraction must leave images for training")
        if self.max_images is not None and self.max_images <= 0:
            raise ConfigError(f"caption_data.max_images must be positive, got {self.max_images}")


@dataclass
class CaptionImage:
    """One image and its reference captions: a file (``path``), or row ``row`` of a hub table (``source``)."""

    image_id: str
    path: Path | None
    captions: list[str]
    row: int | None = None
    source: Any = None  # a clipadapt.data.hub.HubSource where the image lives in a hub table


@dataclass
class Refused:
    item: str
    reason: str


@dataclass
class CaptionSplit:
    """The images of one split and their captions. ``image_split()`` views it as the image ``Split`` the
    classification engine encodes (data loading, skipped-image accounting, the feature cache)."""

    name: str
    images: list[CaptionImage]

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> Image.Image:
        image = self.images[index]
        return load_image(image.path) if image.source is None else image.source.load(image.row)

    def describe(self, index: int) -> str:
        image = self.images[index]
        return str(image.path) if image.source is None else image.source.describe(image.row)

    @property
    def labels(self) -> np.ndarray:  # the image-source protocol; captions have no class labels
        return np.zeros(len(self.images), dtype=np.int64)

    def fingerprint(self) -> str:
        """Changes with the image files (path, size, modification time), not with the captions."""
        digest = hashlib.sha256(self.name.encode())
        for image in self.images:
            if image.source is not None:  # a hub table's fingerprint changes with its content
                digest.update(f"{image.image_id}\0{image.source.fingerprint()}\0{image.row}\n".encode())
                continue
            stat = image.path.stat()
            digest.update(f"{image.image_id}\0{image.path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return f"captions:{digest.hexdigest()[:16]}:n{len(self.images)}"

    def image_split(self) -> Split:
        return Split(self, np.arange(len(self.images)), self.name)

    def references(self) -> dict[str, list[str]]:
        return {image.image_id: image.captions for image in self.images}

    @property
    def num_captions(self) -> int:
        return sum(len(image.captions) for image in self.images)


@dataclass
class CaptionDataset:
    name: str
    splits: dict[str, CaptionSplit]
    refused: list[Refused] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def split(self, name: str) -> CaptionSplit:
        if name not in self.splits:
            raise ConfigError(f"unknown split '{name}' of {self.name}; valid choices: {', '.join(self.splits)}")
        return self.splits[name]

    def refused_counts(self) -> dict[str, int]:
        return dict(Counter(entry.reason for entry in self.refused))

    def summary(self) -> dict:
        """What metrics.json records about the data."""
        return {"dataset": self.name,
                "images": {name: len(split) for name, split in self.splits.items()},
                "captions": {name: split.num_captions for name, split in self.splits.items()},
                "refused": self.refused_counts(), **self.info}


# -- reading annotation files ---------------------------------------------------------------------------------


class EntryCollector:
    """Image records and captions of one annotation file, with every refusal counted."""

    def __init__(self, root: Path | None) -> None:
        self.root = root  # None: the images are not files (a hub table holds them)
        self.resolved_root = root.resolve() if root is not None else None
        self.refused: list[Refused] = []

    def refuse(self, item: str, reason: str) -> None:
        self.refused.append(Refused(item, reason))

    def image_path(self, relative: str) -> Path | None:
        """``root/relative`` if it is a file inside ``root``; refuses (and returns None) otherwise."""
        if not isinstance(relative, str) or not relative.strip():
            self.refuse(str(relative), "no image file name")
            return None
        if self.root is None:
            raise DataError("image files without an image folder (set data.image_root)")
        pure = PurePosixPath(relative.replace("\\", "/"))
        if pure.is_absolute() or Path(relative).is_absolute() or ".." in pure.parts:
            self.refuse(relative, "path leaves the image folder")
            return None
        path = self.root / Path(*pure.parts)
        if not path.resolve().is_relative_to(self.resolved_root):
            self.refuse(relative, "path leaves the image folder (symlink)")
            return None
        if not path.is_file():
            self.refuse(relative, "image file missing")
            return None
        return path

    def caption(self, item: str, text) -> str | None:
        if not isinstance(text, str) or not text.strip():
            self.refuse(item, "empty caption")
            return None
        return " ".join(text.split())


# -- splits ---------------------------------------------------------------------------------------------------


def _carve(images: list[CaptionImage], fraction: float, seed: int, salt: int) -> tuple[list, list]:
    """(rest, carved): ``fraction`` of the images, chosen by seed, at least one when there are two or more."""
    if fraction == 0 or len(images) < 2:
        return images, []
    count = min(len(images) - 1, max(1, round(fraction * len(images))))
    order = np.random.default_rng([seed, salt]).permutation(len(images))
    carved = set(order[:count].tolist())
    return ([im for i, im in enumerate(images) if i not in carved], [im for i, im in enumerate(images) if i in carved])


def make_splits(grouped: dict[str | None, list[CaptionImage]], config: CaptionDataConfig) -> dict[str, list]:
    """train/val/test from what the files give; whatever is missing is carved from train (never from test)."""
    unknown = sorted(str(s) for s in grouped if s is not None and s not in SPLITS)
    if unknown:
        raise DataError(f"unknown split name(s) {', '.join(unknown)} in the caption data; valid: {', '.join(SPLITS)}")
    splits = {name: list(grouped.get(name, [])) for name in SPLITS}
    splits["train"] += grouped.get(None, [])
    if not splits["test"]:
        splits["train"], splits["test"] = _carve(splits["train"], config.test_fraction, config.seed, 1)
    if not splits["val"]:
        splits["train"], splits["val"] = _carve(splits["train"], config.val_fraction, config.seed, 2)
    if config.max_images is not None:
        for name, images in splits.items():
            if len(images) > config.max_images:
                keep = np.sort(np.random.default_rng([config.seed, 3]).permutation(len(images))[:config.max_images])
                splits[name] = [images[i] for i in keep]
    return splits


def image_root(config: CaptionDataConfig, default: Path | None) -> Path | None:
    """``data.image_root`` or ``default``, checked to be a folder (None: the images are not files)."""
    root = Path(config.image_root) if config.image_root else default
    if root is not None and not root.is_dir():
        raise DataError(f"image root '{root}' is not a folder")
    return root


def caption_dataset_from(name: str, grouped, collector: EntryCollector, config: CaptionDataConfig,
                         info: dict) -> CaptionDataset:
    """The dataset of a reader's images grouped by split (None: to be carved), with the collector's refusals."""
    splits = make_splits(grouped, config)
    if not splits["train"]:
        raise DataError(f"{name} has no usable training images"
                        + (f" ({_refusal_text(collector.refused)})" if collector.refused else ""))
    dataset = CaptionDataset(name, {k: CaptionSplit(k, v) for k, v in splits.items() if v}, collector.refused,
                             {"image_root": str(collector.root) if collector.root else None, **info})
    if collector.refused:
        log.warning("%s: refused %s", name, _refusal_text(collector.refused))
    return dataset


def _refusal_text(refused: list[Refused]) -> str:
    counts = Counter(entry.reason for entry in refused)
    first = refused[0]
    return (", ".join(f"{n} x {reason}" for reason, n in counts.most_common())
            + f"; e.g. {first.item}: {first.reason}")


# -- the registry ---------------------------------------------------------------------------------------------


@dataclass
class CaptionDatasetEntry:
    factory: Callable[[CaptionDataConfig, str | None], CaptionDataset]
    takes_argument: bool
    usage: str


CAPTION_DATASETS: Registry[CaptionDatasetEntry] = Registry("caption dataset")


def register_caption_dataset(name: str, takes_argument: bool = False, usage: str = ""):
    def wrap(factory):
        doc = (factory.__doc__ or "").strip().splitlines()
        CAPTION_DATASETS.register(name, CaptionDatasetEntry(factory, takes_argument, usage or name),
                                  help=doc[0] if doc else "")
        return factory

    return wrap


def caption_dataset_usages() -> list[str]:
    return [entry.usage for _, entry in CAPTION_DATASETS.items()]


def load_caption_dataset(config: CaptionDataConfig) -> CaptionDataset:
    spec = config.dataset
    if spec in CAPTION_DATASETS and not CAPTION_DATASETS.get(spec).takes_argument:
        return CAPTION_DATASETS.get(spec).factory(config, None)
    scheme, sep, argument = spec.partition(":")
    if sep and scheme in CAPTION_DATASETS and CAPTION_DATASETS.get(scheme).takes_argument:
        if not argument:
            raise ConfigError(f"caption dataset '{spec}' needs an argument: {CAPTION_DATASETS.get(scheme).usage}")
        return CAPTION_DATASETS.get(scheme).factory(config, argument)
    raise UnknownNameError(f"unknown caption dataset '{spec}'; valid choices: {', '.join(caption_dataset_usages())}")
