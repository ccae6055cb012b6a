"""``imagefolder:PATH``: one folder per class, with optional train/val/test subfolders."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from clipadapt.data.base import ClassificationDataset, Split, make_splits, read_json_file, stratified_split
from clipadapt.data.images import IMAGE_EXTENSIONS, load_image
from clipadapt.data.registry import DataConfig, clean_classname, register_dataset
from clipadapt.errors import DataError

SPLIT_FOLDERS = {"train": ("train", "training"), "val": ("val", "valid", "validation"), "test": ("test", "testing")}
FOLDER_TEST_FRACTION = 0.2
FOLDER_TEST_SEED = 0


@dataclass
class FileSource:
    """Image files with labels."""

    paths: list[Path]
    labels: np.ndarray
    max_pixels: int | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> Image.Image:
        return load_image(self.paths[index], max_pixels=self.max_pixels)

    def describe(self, index: int) -> str:
        return str(self.paths[index])

    def file_path(self, index: int) -> Path:
        """The image's file (``data.base.image_overlap`` compares splits by file)."""
        return self.paths[index]

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for path, label in zip(self.paths, self.labels, strict=True):
            try:
                stat = path.stat()
                digest.update(f"{path}:{label}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
            except OSError:
                digest.update(f"{path}:{label}:missing\n".encode())
        return digest.hexdigest()[:16]


def _class_folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan(root: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    paths, labels = [], []
    for label, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith("."):
                paths.append(path)
                labels.append(label)
    return paths, labels


def read_split_file(path: str | Path, root: Path, max_pixels: int | None = None,
                    clean: Callable[[str], str] = clean_classname) -> tuple[list[str], dict[str, Split]]:
    """A CoOp split file (``{"train"|"val"|"test": [[path, label, classname], ...]}``, paths relative to ``root``):
    the class names by label (passed through ``clean``) and the splits, in the file's order (which CoOp's few-shot
    draw depends on). Each split is a source of its own; whether they share images is checked across them by file
    (``ClassificationDataset.check_held_out``)."""
    path = Path(path).expanduser()
    data = read_json_file(path, "split file")
    unknown = sorted(set(data) - {"train", "val", "test"}) if isinstance(data, dict) else ["(not a mapping)"]
    if unknown or not data:
        raise DataError(f"split file '{path}' must map train, val and test to [[path, label, classname], ...]; "
                        f"got {', '.join(unknown) or 'nothing'}")
    names: dict[int, str] = {}
    for split, entries in data.items():
        for entry in entries:
            if not isinstance(entry, list | tuple) or len(entry) != 3:
                raise DataError(f"split file '{path}': {split} entry {entry!r} is not [path, label, classname]")
            label, name = int(entry[1]), str(entry[2])
            if names.setdefault(label, name) != name:
                raise DataError(f"split file '{path}': label {label} is both '{names[label]}' and '{name}'")
    if sorted(names) != list(range(len(names))):
        raise DataError(f"split file '{path}': labels must be 0..{len(names) - 1}, got {sorted(names)[:10]}")
    splits = {}
    for split, entries in data.items():
        paths = [root / entry[0] for entry in entries]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise DataError(f"split file '{path}': {len(missing)} {split} images are missing under '{root}', "
                            f"e.g. {missing[0]}")
        source = FileSource(paths, np.asarray([int(e[1]) for e in entries], dtype=np.int64), max_pixels)
        splits[split] = Split(source, np.arange(len(paths)), split)
    return [clean(names[i]) for i in range(len(names))], splits


@register_dataset("imagefolder", takes_argument=True, usage="imagefolder:PATH")
def load_image_folder(config: DataConfig, argument: str | None) -> ClassificationDataset:
    """Your own images: PATH/<class>/*.jpg, or PATH/{train,val,test}/<class>/*.jpg, or a CoOp split file."""
    root = Path(argument or "").expanduser()
    if not root.exists():
        raise DataError(f"image folder '{root}' does not exist")
    if not root.is_dir():
        raise DataError(f"image folder '{root}' is not a directory")
    if config.split_file:
        classnames, splits = read_split_file(config.split_file, root, config.max_image_pixels)
        splits = make_splits(str(root), splits.get("train"), splits.get("test"), splits.get("val"),
                             val_fraction=config.val_fraction, seed=config.seed)
        return ClassificationDataset(name=f"imagefolder:{root}", classnames=classnames, splits=splits,
                                     templates=["simple"], info={"root": str(root.resolve()),
                                                                 "split_file": str(config.split_file)})
    present = {
        split: root / alias for split, aliases in SPLIT_FOLDERS.items() for alias in aliases if (root / alias).is_dir()
    }
    class_roots = list(present.values()) or [root]
    raw_classes = sorted({name for folder in class_roots for name in _class_folders(folder)})
    if not raw_classes:
        raise DataError(f"no class folders in '{root}': expected PATH/<class>/<image> "
                        f"(or PATH/train/<class>/<image>)")
    max_pixels = config.max_image_pixels
    splits: dict[str, Split] = {}
    for split, folder in present.items() or [("all", root)]:
        paths, labels = _scan(folder, raw_classes)
        if paths:
            source = FileSource(paths, np.asarray(labels, dtype=np.int64), max_pixels)
            splits[split] = Split(source, np.arange(len(paths)), split)
    if not splits:
        raise DataError(f"no images found in '{root}' (looked for {', '.join(IMAGE_EXTENSIONS)} files "
                        f"inside the class folders {', '.join(raw_classes[:5])})")
    if "all" in splits:  # no split folders: fixed stratified test split, then val out of train
        pool = splits.pop("all")
        train_pos, test_pos = stratified_split(pool.labels, FOLDER_TEST_FRACTION, FOLDER_TEST_SEED)
        splits = make_splits(str(root), pool.subset(train_pos, "train"), pool.subset(test_pos, "test"),
                             val_fraction=config.val_fraction, seed=config.seed)
        splits["all"] = pool
    elif "train" in splits:
        splits = make_splits(str(root), splits.get("train"), splits.get("test"), splits.get("val"),
                             val_fraction=config.val_fraction, seed=config.seed)
    return ClassificationDataset(
        name=f"imagefolder:{root}", classnames=[clean_classname(c) for c in raw_classes], splits=splits,
        templates=["simple"], info={"root": str(root.resolve()), "folders": raw_classes},
    )
