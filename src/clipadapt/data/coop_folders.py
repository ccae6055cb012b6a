"""CoOp's own data folders (its DATASETS.md layout): split files, FGVC-Aircraft's lists and ImageNet's class folders.

Every reader returns (class names, splits) with the images in CoOp's order, so that ``data.sampler=coop`` draws the
subsets CoOp's code draws. Class names go through ``clean``: the dataset's CoOp name fix (data/coop.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from clipadapt.data.base import Split
from clipadapt.data.folder import FileSource, read_split_file
from clipadapt.data.images import IMAGE_EXTENSIONS
from clipadapt.errors import DataError

Clean = Callable[[str], str]


def split_file_path(given: str | None, root: Path, default: str | None) -> Path | None:
    """``data.split_file`` (as given, else relative to the CoOp folder), else the folder's own split file."""
    if given:
        path = Path(given).expanduser()
        return path if path.is_absolute() or path.exists() else root / path
    return root / default if default else None


def read_coop_split_file(root: Path, image_dir: str, split_path: Path, max_pixels: int | None,
                         clean: Clean) -> tuple[list[str], dict[str, Split]]:
    if not split_path.is_file():
        raise DataError(f"CoOp folder '{root}' has no split file '{split_path.name}' (CoOp's DATASETS.md links it; "
                        f"or pass --set data.split_file=PATH)")
    return read_split_file(split_path, root / image_dir, max_pixels, clean=clean)


def _files(paths: list[Path], labels: list[int], what: str, root: Path, max_pixels: int | None) -> FileSource:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"CoOp folder '{root}': {len(missing)} {what} images are missing, e.g. {missing[0]}")
    return FileSource(paths, np.asarray(labels, dtype=np.int64), max_pixels)


def read_fgvc_lists(root: Path, image_dir: str, max_pixels: int | None,
                    clean: Clean) -> tuple[list[str], dict[str, Split]]:
    """FGVC-Aircraft as CoOp reads it: variants.txt numbers the classes, images_variant_{train,val,test}.txt list
    ``<image id> <variant>`` lines."""
    variants_file = root / "variants.txt"
    if not variants_file.is_file():
        raise DataError(f"CoOp folder '{root}' has no variants.txt (FGVC-Aircraft's data/ folder, renamed "
                        f"fgvc_aircraft/, holds it)")
    variants = [line.strip() for line in variants_file.read_text().splitlines() if line.strip()]
    index = {name: i for i, name in enumerate(variants)}
    splits = {}
    for split in ("train", "val", "test"):
        listing = root / f"images_variant_{split}.txt"
        if not listing.is_file():
            raise DataError(f"CoOp folder '{root}' has no {listing.name}")
        paths, labels = [], []
        for line in listing.read_text().splitlines():
            if not line.strip():
                continue
            image_id, _, variant = line.strip().partition(" ")
            if variant not in index:
                raise DataError(f"{listing}: variant '{variant}' is not in variants.txt")
            paths.append(root / image_dir / f"{image_id}.jpg")
            labels.append(index[variant])
        source = _files(paths, labels, split, root, max_pixels)
        splits[split] = Split(source, np.arange(len(paths)), split)
    return [clean(v) for v in variants], splits


def read_classnames_txt(root: Path) -> dict[str, str]:
    """CoOp's classnames.txt: ``<folder> <class name>`` per line, in label order."""
    path = root / "classnames.txt"
    if not path.is_file():
        raise DataError(f"CoOp folder '{root}' has no classnames.txt (CoOp's DATASETS.md links ImageNet's; the "
                        f"shifts use a copy of it)")
    names = {}
    for line in path.read_text().splitlines():
        folder, _, name = line.strip().partition(" ")
        if folder:
            names[folder] = name.strip()
    return names


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))


def _class_folders(image_root: Path, root: Path) -> list[str]:
    if not image_root.is_dir():
        raise DataError(f"CoOp folder '{root}' has no image folder '{image_root.relative_to(root)}/'")
    return sorted(p.name for p in image_root.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_wnid_folders(root: Path, image_dir: str, max_pixels: int | None, clean: Clean,
                      number_by: str = "sorted") -> tuple[list[str], FileSource]:
    """Class folders named by WordNet id (ImageNet, -Sketch, -A, -R) or, with ``number_by="classnames"``, by label
    number in classnames.txt's order (ImageNetV2): labels as CoOp's readers number them."""
    names = read_classnames_txt(root)
    image_root = root / image_dir
    present = _class_folders(image_root, root)
    if number_by == "classnames":
        folders = [str(i) for i in range(len(names))]
        classnames = list(names.values())
    else:
        folders = present
        unknown = [f for f in folders if f not in names]
        if unknown:
            raise DataError(f"CoOp folder '{root}': class folder '{unknown[0]}' is not in classnames.txt")
        classnames = [names[f] for f in folders]
    paths, labels = [], []
    for label, folder in enumerate(folders):
        if not (image_root / folder).is_dir():
            raise DataError(f"CoOp folder '{root}': class folder '{image_dir}/{folder}' is missing")
        found = _images_in(image_root / folder)
        paths += found
        labels += [label] * len(found)
    if not paths:
        raise DataError(f"CoOp folder '{root}': no images in '{image_dir}/'")
    return [clean(n) for n in classnames], FileSource(paths, np.asarray(labels, dtype=np.int64), max_pixels)


def read_imagenet_folders(root: Path, image_dir: str, max_pixels: int | None,
                          clean: Clean) -> tuple[list[str], dict[str, Split]]:
    """CoOp's ImageNet: images/train and images/val (the test split, as in CoOp) with classnames.txt."""
    splits = {}
    classnames: list[str] = []
    for split, folder in (("train", "train"), ("test", "val")):
        names, source = read_wnid_folders(root, f"{image_dir}/{folder}", max_pixels, clean)
        if classnames and names != classnames:
            raise DataError(f"CoOp folder '{root}': {image_dir}/train and {image_dir}/val hold other classes")
        classnames = names
        splits[split] = Split(source, np.arange(len(source)), split)
    return classnames, splits
