"""Datasets as train/val/test splits of (image, label) with class names and recommended templates."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from clipadapt.data.images import load_image
from clipadapt.errors import ConfigError, DataError, UnknownNameError


class ImageSource(Protocol):
    """Indexable images with integer labels. ``load`` raises ``ImageLoadError`` for unreadable items."""

    labels: np.ndarray

    def __len__(self) -> int: ...

    def load(self, index: int) -> Image.Image: ...

    def describe(self, index: int) -> str: ...

    def fingerprint(self) -> str: ...


@dataclass
class InMemorySource:
    """Images held as arrays or PIL images (digits, generated data)."""

    images: list[Any]
    labels: np.ndarray
    name: str
    version: str = "1"

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> Image.Image:
        return load_image(self.images[index])

    def describe(self, index: int) -> str:
        return f"{self.name}[{index}]"

    def fingerprint(self) -> str:
        return f"{self.name}:v{self.version}:n{len(self)}"


@dataclass
class Split:
    """A view of an image source through an index array (subsets never copy images)."""

    source: ImageSource
    indices: np.ndarray
    name: str
    carved_from: str | None = None  # the split this one was carved out of (a val made from train by make_splits)

    def __post_init__(self) -> None:
        self.indices = np.asarray(self.indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self.source.labels)[self.indices]

    def load(self, i: int) -> Image.Image:
        return self.source.load(int(self.indices[i]))

    def describe(self, i: int) -> str:
        return self.source.describe(int(self.indices[i]))

    def subset(self, positions: np.ndarray, name: str | None = None) -> Split:
        return Split(self.source, self.indices[np.asarray(positions, dtype=np.int64)], name or self.name,
                     self.carved_from)

    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.source.fingerprint().encode())
        digest.update(self.name.encode())
        digest.update(self.indices.tobytes())
        return digest.hexdigest()[:16]


class RelabelledSource:
    """A source whose labels go through ``mapping`` (old label -> new label; -1 for classes dropped, which the
    splits over it no longer index): reordered class lists, base/new class halves."""

    def __init__(self, source: ImageSource, mapping: np.ndarray) -> None:
        self._source, self._mapping = source, np.asarray(mapping, dtype=np.int64)
        self.labels = self._mapping[np.asarray(source.labels)]

    def __len__(self) -> int:
        return len(self._source)

    def load(self, index: int) -> Image.Image:
        return self._source.load(index)

    def describe(self, index: int) -> str:
        return self._source.describe(index)

    def fingerprint(self) -> str:
        return self._source.fingerprint() + ":relabelled:" + ",".join(map(str, self._mapping))


@dataclass
class ClassificationDataset:
    """What every dataset loader returns."""

    name: str
    classnames: list[str]
    splits: dict[str, Split]
    templates: list[str] = field(default_factory=lambda: ["simple"])
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.classnames:
            raise DataError(f"dataset '{self.name}' has no classes")

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def default_template_set(self) -> str:
        """The a-priori template set: the dataset's own (listed last: ``flowers`` for flowers102), else ``simple``."""
        return self.templates[-1] if self.templates else "simple"

    def held_out_splits(self, used: tuple[str, ...] = ("train", "val")) -> list[str]:
        """The splits that share no image with the ``used`` ones (what may be evaluated)."""
        return [name for name, split in self.splits.items() if name not in used
                and not any(shared_images(split, self.splits[u]) for u in used if u in self.splits)]

    def check_held_out(self, name: str, used: tuple[str, ...] = ("train", "val")) -> None:
        """Refuse to evaluate a split that is one of, or shares images with, the splits used to train and select."""
        split = self.split(name)
        if name in used:
            problem = f"is used for {'training' if name == 'train' else 'model selection'}"
        else:
            shared = {u: shared_images(split, self.splits[u]) for u in used if u in self.splits}
            overlapping = [f"{count} images with {u}" for u, count in shared.items() if count]
            if not overlapping:
                return
            problem = f"shares {' and '.join(overlapping)}"
        raise ConfigError(f"data.split '{name}' {problem}; evaluate on a held-out split; valid choices: "
                          f"{', '.join(self.held_out_splits(used)) or 'none (add a test/ folder)'}")

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise UnknownNameError(
                f"dataset '{self.name}' has no split '{name}'; valid choices: {', '.join(self.splits)}"
            )
        return self.splits[name]


def read_json_file(path: str | Path, what: str) -> Any:
    """A user's JSON file (caption, split or few-shot file), with one-line errors naming ``what`` it is."""
    path = Path(path).expanduser()
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{what} '{path}' does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{what} '{path}' is not readable JSON: {error}") from None


def shared_images(a: Split, b: Split) -> int:
    """How many images two splits share: views of one source with common indices (splits of different sources,
    e.g. a hub dataset's official splits or separate split folders, share none)."""
    if a.source is not b.source:
        return 0
    return int(np.intersect1d(a.indices, b.indices).size)


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified partition of positions into (keep, held_out) with ``fraction`` held out per class.

    Every class with at least two items keeps at least one and holds out at least one.
    """
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for cls in np.unique(labels):
        positions = np.flatnonzero(labels == cls)
        positions = positions[rng.permutation(len(positions))]
        n_held = int(round(fraction * len(positions)))
        n_held = min(max(n_held, 1), len(positions) - 1) if len(positions) >= 2 else 0
        held.append(positions[:n_held])
        keep.append(positions[n_held:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def few_shot(labels: np.ndarray, shots: int, seed: int) -> np.ndarray:
    """Seeded, stratified ``shots``-per-class subset (all items of classes that have fewer)."""
    if shots <= 0:
        raise ValueError(f"shots must be positive, got {shots}")
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in np.unique(labels):
        positions = np.flatnonzero(labels == cls)
        chosen.append(np.sort(rng.choice(positions, size=min(shots, len(positions)), replace=False)))
    return np.sort(np.concatenate(chosen))


def make_splits(
    name: str,
    train: Split | None,
    test: Split | None,
    val: Split | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> dict[str, Split]:
    """Official splits where they exist; otherwise a seeded, stratified val carved out of train (never test)."""
    splits: dict[str, Split] = {}
    if train is not None:
        if val is None and val_fraction > 0:
            keep, held = stratified_split(train.labels, val_fraction, seed)
            val = Split(train.source, train.indices[held], "val", carved_from="train")
            train = train.subset(keep, "train")
        splits["train"] = train
    if val is not None:
        splits["val"] = Split(val.source, val.indices, "val", val.carved_from)
    if test is not None:
        splits["test"] = test
    if not splits:
        raise DataError(f"dataset '{name}' has no splits")
    return splits


def same_classes(name: str, classnames: list[str], other_name: str, other: list[str]) -> None:
    """One-line error naming the first difference between two class lists."""
    if classnames == other:
        return
    if len(classnames) != len(other):
        raise ConfigError(f"{other_name} has {len(other)} classes, {name} has {len(classnames)}: they must match")
    k = next(i for i, (a, b) in enumerate(zip(classnames, other, strict=True)) if a != b)
    raise ConfigError(f"{other_name} has other classes than {name}: class {k} is '{other[k]}', not "
                      f"'{classnames[k]}'")
