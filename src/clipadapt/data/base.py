"""Datasets as train/val/test splits of (image, label) with class names and recommended templates."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
from PIL import Image

from clipadapt.data.images import load_image
from clipadapt.errors import ConfigError, DataError, UnknownNameError

log = logging.getLogger(__name__)
CONTENT_HASH_BUDGET = 64 * 2**20  # bytes read, per pair of splits, to compare files of equal size by content
SHARED_EXAMPLES = 3  # shared images named in a refusal


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
    _files: list[_File] | None = field(default=None, init=False, repr=False, compare=False)  # image_overlap's

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

    @property
    def base(self) -> ImageSource:
        """The images underneath (splits relabelled one by one still view the same images)."""
        return base_source(self._source)

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
    # the few-shot references' classifier prompt (``train.head_templates=coop``): CoOp's hand-crafted template of the
    # dataset, the seven ImageNet templates on the ImageNet family; None: ``default_template_set``
    coop_templates: str | None = None

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

    @property
    def coop_template_set(self) -> str:
        """The template set (or one template) the few-shot references build their text classifier from."""
        return self.coop_templates or self.default_template_set

    def held_out_splits(self, used: tuple[str, ...] = ("train", "val")) -> list[str]:
        """The splits that share no image with the ``used`` ones (what may be evaluated)."""
        return [name for name, split in self.splits.items() if name not in used
                and not any(shared_images(split, self.splits[u]) for u in used if u in self.splits)]

    def check_held_out(self, name: str, used: tuple[str, ...] = ("train", "val")) -> None:
        """Refuse to evaluate a split that is one of, or shares images with, the splits used to train and select
        (compared across the whole dataset: ``image_overlap``), and a validation split that holds training images."""
        split = self.split(name)
        if name in used:
            problem = f"is used for {'training' if name == 'train' else 'model selection'}"
        else:
            shared = {u: image_overlap(split, self.splits[u]) for u in used if u in self.splits}
            overlapping = {u: found for u, found in shared.items() if found}
            if not overlapping:
                self._check_validation_held_out(used)
                return
            examples = list(dict.fromkeys(e for found in overlapping.values() for e in found.examples))
            problem = (f"shares {' and '.join(f'{found.count} images with {u}' for u, found in overlapping.items())}"
                       f" ({_examples(examples, sum(found.count for found in overlapping.values()))})")
        raise ConfigError(f"data.split '{name}' {problem}; evaluate on a held-out split; valid choices: "
                          f"{', '.join(self.held_out_splits(used)) or self._no_held_out()}")

    def _check_validation_held_out(self, used: tuple[str, ...]) -> None:
        if "val" not in used or "train" not in used or not {"train", "val"} <= set(self.splits):
            return
        shared = image_overlap(self.splits["val"], self.splits["train"])
        if shared:
            raise ConfigError(f"the val split shares {shared.count} images with train "
                              f"({_examples(shared.examples, shared.count)}): validation would choose on training "
                              f"images; {self._one_split_each()}")

    def _no_held_out(self) -> str:
        if self.info.get("split_file") or "test" in self.splits:
            return f"none ({self._one_split_each()})"
        return "none (add a test/ folder)"

    def _one_split_each(self) -> str:
        if self.info.get("split_file"):
            return f"list each image in one split of data.split_file '{self.info['split_file']}'"
        return "keep each image in one split of the dataset"

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


def base_source(source: ImageSource) -> ImageSource:
    """The images under any relabelling (``RelabelledSource.base``)."""
    return getattr(source, "base", source)


class _File(NamedTuple):
    """One image file of a split: what it is called, which file it is (device, inode: every path and link to it),
    and its size and modification time (for the content hash)."""

    item: str
    path: str
    identity: tuple[int, int]
    size: int
    mtime_ns: int


@dataclass
class SharedImages:
    """The images of one split that another holds too: ``count``, and the first few by name (``examples``)."""

    count: int = 0
    examples: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.count > 0

    def named(self) -> str:
        """``e.g. a, b, c, ...``: the first few, for a refusal."""
        return _examples(self.examples, self.count)


def shared_images(a: Split, b: Split) -> int:
    """How many images of ``a`` are also in ``b`` (``image_overlap``)."""
    return image_overlap(a, b).count


def image_overlap(a: Split, b: Split, examples: int = SHARED_EXAMPLES) -> SharedImages:
    """The images of ``a`` that ``b`` holds too, across sources: where both splits are image files (an image folder,
    a split file), the same file under any path (links included) or a byte-identical copy (compared by content
    where the other split has a file of the same size, while the bytes to read stay under CONTENT_HASH_BUDGET);
    otherwise common indices of one source (splits of separate in-memory or hub sources share none)."""
    files_a, files_b = _split_files(a), _split_files(b)
    if files_a is None or files_b is None:
        source = base_source(a.source)
        if source is not base_source(b.source):
            return SharedImages()
        common = np.intersect1d(a.indices, b.indices)
        return SharedImages(int(common.size), [source.describe(int(i)) for i in common[:examples]])
    in_b = {f.identity for f in files_b}
    shared = {f.identity for f in files_a if f.identity in in_b}
    shared |= _same_content([f for f in files_a if f.identity not in shared],
                            [f for f in files_b if f.identity not in shared])
    named = list(dict.fromkeys(f.item for f in files_a if f.identity in shared))
    return SharedImages(len(shared), named[:examples])


def _split_files(split: Split) -> list[_File] | None:
    """The split's image files (read once per split), or None where its images are not files."""
    source = base_source(split.source)
    file_path = getattr(source, "file_path", None)
    if file_path is None:
        return None
    if split._files is None:
        files = []
        for index in split.indices:
            path = str(file_path(int(index)))
            try:
                stat = os.stat(path)
            except OSError:
                continue  # a missing file is the loader's to report
            files.append(_File(source.describe(int(index)), path, (stat.st_dev, stat.st_ino), stat.st_size,
                               stat.st_mtime_ns))
        split._files = files
    return split._files


def _same_content(files_a: list[_File], files_b: list[_File]) -> set[tuple[int, int]]:
    """Identities of the files of ``files_a`` whose bytes equal a file of ``files_b``: only files of a size both
    hold are read, and none when that is more than CONTENT_HASH_BUDGET bytes."""
    sizes = ({f.size for f in files_a} & {f.size for f in files_b}) - {0}  # empty files hold no image to share
    if not sizes:
        return set()
    todo = {f.identity: f for f in [*files_a, *files_b] if f.size in sizes}
    total = sum(f.size for f in todo.values())
    if total > CONTENT_HASH_BUDGET:
        log.info("splits not compared by content: %d files of equal sizes (%.0f MB) to read", len(todo), total / 2**20)
        return set()
    digests_b = {_digest(f.path, f.size, f.mtime_ns) for f in files_b if f.size in sizes}
    return {f.identity for f in files_a if f.size in sizes and _digest(f.path, f.size, f.mtime_ns) in digests_b}


@functools.lru_cache(maxsize=8192)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file's bytes (cached while its size and modification time stay)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return f"unreadable:{path}"
    return digest.hexdigest()


def _examples(names: list[str], count: int) -> str:
    shown = names[:SHARED_EXAMPLES]
    return "e.g. " + ", ".join(shown) + (", ..." if count > len(shown) else "")


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
