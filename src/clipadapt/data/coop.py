"""The 11 datasets of CoOp's few-shot benchmark and the 4 ImageNet shifts, from the hub or from CoOp's own folders.

Every dataset lists CoOp's hand-crafted prompt (trainers/zsclip.py) as its last template set, the a-priori choice.
Class names are CoOp's: fixed lists where CoOp's come from public files (ImageNet and its shifts: the CLIP notebook's
names; FGVC-Aircraft: variants.txt), otherwise the hub dataset's ClassLabel names put through the transformation
CoOp's datasets/*.py apply to the raw names (year first for cars, reversed SUN397 paths, split CamelCase UCF101
actions, lower-case pet breeds), its renames (EuroSAT's NEW_CNAMES, Caltech101's) and its dropped classes (Caltech101's
BACKGROUND_Google and Faces_easy), matched by name whatever the case or punctuation, then "_" read as a space as CoOp's
prompts do. CoOp's split files hold the names it wrote; they cannot be read without downloading them, so for
Caltech101, Pets, Cars, Food101, SUN397, DTD and UCF101 the hub's names stand in (docs/datasets.md).

``--data-root DIR`` takes either a copy of the hub dataset (save_to_disk or parquet, read as the hub's) or DIR =
CoOp's folder for the dataset (e.g. ``eurosat/`` with ``2750/`` and ``split_zhou_EuroSAT.json``), read through
CoOp's split file in its order; ``--set data.split_file=PATH`` replaces that file.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from clipadapt.data import coop_folders
from clipadapt.data.base import ClassificationDataset, Split, make_splits, stratified_split
from clipadapt.data.hub import (
    HUB_SPLIT_NAMES,
    HUB_TEST_FRACTION,
    HUB_TEST_SEED,
    HubSource,
    _pick_column,
    _prompt_data,
    load_dataset_dict,
)
from clipadapt.data.registry import DataConfig, register_dataset
from clipadapt.errors import DataError


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _camel_words(name: str) -> str:
    """UCF101: 'ApplyEyeMakeup' -> 'Apply_Eye_Makeup' (datasets/ucf101.py)."""
    return name if ("_" in name or " " in name) else "_".join(re.findall("[A-Z][^A-Z]*", name)) or name


def _sun_path(name: str) -> str:
    """SUN397: '/a/apartment_building/outdoor' -> 'outdoor apartment_building' (datasets/sun397.py)."""
    if "/" not in name:
        return name
    parts = [p for p in name.strip("/").split("/") if p]
    return " ".join((parts[1:] if len(parts) > 1 and len(parts[0]) == 1 else parts)[::-1])


def _year_first(name: str) -> str:
    """Stanford Cars: 'AM General Hummer SUV 2000' -> '2000 AM General Hummer SUV' (datasets/stanford_cars.py)."""
    words = name.split(" ")
    return " ".join([words[-1], *words[:-1]]) if len(words) > 1 and re.fullmatch(r"(19|20)\d\d", words[-1]) else name


NAME_STYLES: dict[str, Callable[[str], str]] = {
    "plain": lambda n: n, "lower": str.lower, "camel": _camel_words, "sun": _sun_path, "cars": _year_first,
}


@dataclass(frozen=True)
class CoopSpec:
    """One benchmark dataset: its hub copy (id, columns, splits) and CoOp's folder, names and prompt."""

    repo: str
    label_column: str
    image_column: str | None  # None: the table's image column (clip-benchmark's WebDataset shards: jpg or webp)
    template_set: str
    folder: str  # CoOp's $DATA/<folder>
    image_dir: str  # the images inside it, as CoOp's split file paths are relative to them
    description: str
    confirmed: str  # where the hub id and columns were confirmed (public code reading them)
    split_file: str | None = None
    layout: str = "split_file"  # split_file, fgvc, imagenet, wnid_folders, numbered_folders
    names: str | None = None  # a list in coop_classnames.yaml; None: the hub's ClassLabel names, CoOp-fixed
    name_style: str = "plain"
    renames: dict[str, str] = field(default_factory=dict)
    ignored: tuple[str, ...] = ()
    hub_splits: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(HUB_SPLIT_NAMES))
    middle_frames: bool = False  # UCF101: the hub holds many frames per video; CoOp uses the middle one
    gated: bool = False
    templates: tuple[str, ...] = ()

    def coop_name(self, raw: str) -> str:
        """CoOp's name for a raw class name (hub label or split-file entry); idempotent on CoOp's own names."""
        name = NAME_STYLES[self.name_style](raw.strip())
        lookup = {_key(k): v for k, v in self.renames.items()} | {_key(v): v for v in self.renames.values()}
        name = lookup.get(_key(name), name)
        return re.sub(r"\s+", " ", name.replace("_", " ")).strip()

    def is_ignored(self, raw: str) -> bool:
        return _key(raw) in {_key(i) for i in self.ignored}


EUROSAT_NAMES = {  # datasets/eurosat.py NEW_CNAMES
    "AnnualCrop": "Annual Crop Land", "Forest": "Forest", "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road", "Industrial": "Industrial Buildings", "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land", "Residential": "Residential Buildings", "River": "River",
    "SeaLake": "Sea or Lake",
}
CALTECH_NAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}
TEST_ONLY = {"test": ("test",)}
CLIP_BENCHMARK = "LAION-AI/CLIP_benchmark's wds datasets as read by public code (image column jpg/webp, label cls)"

COOP_DATASETS: dict[str, CoopSpec] = {
    "imagenet": CoopSpec(
        "ILSVRC/imagenet-1k", "label", "image", "coop-imagenet", "imagenet", "images",
        "ImageNet-1k (gated on the hub: accept its terms and log in; validation is the test split, as in CoOp)",
        "image/label, train/validation (test is unlabelled) in public training scripts", layout="imagenet",
        names="imagenet", hub_splits={"train": ("train",), "test": ("validation",)}, gated=True,
        templates=("clip", "coop-imagenet")),
    "caltech101": CoopSpec(
        "dpdl-benchmark/caltech101", "label", "image", "coop-caltech101", "caltech-101", "101_ObjectCategories",
        "Caltech101 without BACKGROUND_Google and Faces_easy (CoOp)",
        "image/label, train/test in public evaluation code", split_file="split_zhou_Caltech101.json",
        renames=CALTECH_NAMES, ignored=("BACKGROUND_Google", "Faces_easy")),
    "oxford_pets": CoopSpec(
        "timm/oxford-iiit-pet", "label", "image", "coop-oxford_pets", "oxford_pets", "images",
        "Oxford-IIIT Pets, 37 breeds", "image/label, train/test, 37 ClassLabel breeds in public code",
        split_file="split_zhou_OxfordPets.json", name_style="lower"),
    "stanford_cars": CoopSpec(
        "tanganke/stanford_cars", "label", "image", "coop-stanford_cars", "stanford_cars", "",
        "Stanford Cars, 196 models", "image/label, train/test, ClassLabel names in public code",
        split_file="split_zhou_StanfordCars.json", name_style="cars"),
    "food101": CoopSpec(
        "ethz/food101", "label", "image", "coop-food101", "food-101", "images",
        "Food-101 (the hub's validation split is the official test split)",
        "image/label; public code evaluates on 'validation'", split_file="split_zhou_Food101.json",
        hub_splits={"train": ("train",), "test": ("validation",)}),
    "fgvc_aircraft": CoopSpec(
        "clip-benchmark/wds_fgvc_aircraft", "cls", None, "coop-fgvc_aircraft", "fgvc_aircraft", "images",
        "FGVC-Aircraft, 100 variants", CLIP_BENCHMARK, layout="fgvc", names="fgvc_aircraft"),
    "sun397": CoopSpec(
        "tanganke/sun397", "label", "image", "coop-sun397", "sun397", "SUN397", "SUN397 scenes",
        "image/label, train/test in public code", split_file="split_zhou_SUN397.json", name_style="sun"),
    "dtd": CoopSpec(
        "tanganke/dtd", "label", "image", "coop-dtd", "dtd", "images", "Describable Textures, 47 textures",
        "image/label, train/test in public code", split_file="split_zhou_DescribableTextures.json"),
    "eurosat": CoopSpec(
        "tanganke/eurosat", "label", "image", "coop-eurosat", "eurosat", "2750", "EuroSAT RGB, 10 land uses",
        "image/label, train/test in public code", split_file="split_zhou_EuroSAT.json", renames=EUROSAT_NAMES),
    "ucf101": CoopSpec(
        "flwrlabs/ucf101", "label", "image", "coop-ucf101", "ucf101", "UCF-101-midframes",
        "UCF101 actions, the middle frame of each video (CoOp's UCF-101-midframes)",
        "image/label/clip_id/frame, train/test in public code", split_file="split_zhou_UCF101.json",
        name_style="camel", middle_frames=True),
    "imagenet-v2": CoopSpec(
        "clip-benchmark/wds_imagenetv2", "cls", None, "coop-imagenet", "imagenetv2",
        "imagenetv2-matched-frequency-format-val", "ImageNetV2 matched-frequency (test only)", CLIP_BENCHMARK,
        layout="numbered_folders", names="imagenet", hub_splits=TEST_ONLY, templates=("clip", "coop-imagenet")),
    "imagenet-sketch": CoopSpec(
        "clip-benchmark/wds_imagenet_sketch", "cls", None, "coop-imagenet", "imagenet-sketch", "images",
        "ImageNet-Sketch (test only)", CLIP_BENCHMARK, layout="wnid_folders", names="imagenet",
        hub_splits=TEST_ONLY, templates=("clip", "coop-imagenet")),
    "imagenet-a": CoopSpec(
        "clip-benchmark/wds_imagenet-a", "cls", None, "coop-imagenet", "imagenet-adversarial", "imagenet-a",
        "ImageNet-A, 200 ImageNet classes (test only)", CLIP_BENCHMARK, layout="wnid_folders",
        names="imagenet_a", hub_splits=TEST_ONLY, templates=("clip", "coop-imagenet")),
    "imagenet-r": CoopSpec(
        "clip-benchmark/wds_imagenet-r", "cls", None, "coop-imagenet", "imagenet-rendition", "imagenet-r",
        "ImageNet-R, 200 ImageNet classes (test only)", CLIP_BENCHMARK, layout="wnid_folders",
        names="imagenet_r", hub_splits=TEST_ONLY, templates=("clip", "coop-imagenet")),
}


def fixed_classnames(key: str) -> list[str] | None:
    """The class names of a dataset whose names are a fixed list, in the hub dataset's label order."""
    names = COOP_DATASETS[key].names
    if names is None:
        return None
    data = _prompt_data("coop_classnames.yaml")
    if names in ("imagenet_a", "imagenet_r"):  # ImageNet's names of the subset's classes, in ImageNet's order
        kept = set(data[f"{names}_wnids"])
        return [n for n, wnid in zip(data["imagenet"], data["imagenet_wnids"], strict=True) if wnid in kept]
    return [str(n) for n in data[names]]


def template_sets(key: str) -> list[str]:
    spec = COOP_DATASETS[key]
    return list(spec.templates) if spec.templates else (
        [spec.template_set] if _prompt_data("templates.yaml")[spec.template_set]["templates"] == ["a photo of a {}."]
        else ["simple", spec.template_set])


def coop_template_set(key: str) -> str:
    """The few-shot references' prompt for a CoOp dataset: CoOp's own (``dataset.template`` in
    mrflogs/ICLR24@560fe211700964c915442ff98dbe47dd09656a35 datasets/*.py, e.g. datasets/dtd.py:8), the seven templates
    on the ImageNet family (datasets/imagenet.py:180-186 there)."""
    spec = COOP_DATASETS[key]
    return "imagenet-7" if spec.template_set == "coop-imagenet" else spec.template_set


def _label_map(key: str, spec: CoopSpec, feature, label_col: str) -> tuple[np.ndarray | None, list[str]]:
    """(hub label -> our label, -1 for dropped classes; None when the same) and our class names."""
    import datasets

    fixed = fixed_classnames(key)
    if fixed is not None:
        if isinstance(feature, datasets.ClassLabel) and len(feature.names) != len(fixed):
            raise DataError(f"dataset '{spec.repo}' has {len(feature.names)} classes, expected {len(fixed)}")
        return None, fixed
    if not isinstance(feature, datasets.ClassLabel):
        raise DataError(f"column '{label_col}' of '{spec.repo}' holds no class names (not a ClassLabel); "
                        f"pass --label-column with the dataset's class label column")
    mapping, classnames = np.full(len(feature.names), -1, dtype=np.int64), []
    for i, raw in enumerate(feature.names):
        if not spec.is_ignored(raw):
            mapping[i] = len(classnames)
            classnames.append(spec.coop_name(raw))
    return (None if len(classnames) == len(feature.names) else mapping), classnames


def _middle_frame_rows(part) -> np.ndarray | None:
    """One row per video: its middle frame (as CoOp's UCF-101-midframes); None when the table has no frame columns."""
    if not {"clip_id", "frame"} <= set(part.column_names):
        return None
    frames: dict[str, list[tuple[int, int]]] = {}
    for row, (clip, frame) in enumerate(zip(part["clip_id"], part["frame"], strict=True)):
        frames.setdefault(str(clip), []).append((int(frame), row))
    return np.array(sorted(sorted(rows)[(len(rows) - 1) // 2][1] for rows in frames.values()), dtype=np.int64)


def _from_hub(key: str, spec: CoopSpec, config: DataConfig) -> ClassificationDataset:
    try:
        table = load_dataset_dict(spec.repo, config.root)
    except DataError as error:
        if spec.gated and not config.root:
            raise DataError(f"{error} (ImageNet is gated on the hub: accept its terms on the dataset page and log in "
                            f"with `hf auth login`, or pass --data-root with CoOp's {spec.folder}/ folder)") from None
        raise
    first = table[next(iter(table))]
    columns = list(first.column_names)
    image_col = _pick_column(first.features, config.image_column or spec.image_column, "image", columns, spec.repo)
    label_col = _pick_column(first.features, config.label_column or spec.label_column, "label", columns, spec.repo)
    mapping, classnames = _label_map(key, spec, first.features[label_col], label_col)
    found: dict[str, Split] = {}
    for split, aliases in spec.hub_splits.items():
        hub_name = next((a for a in aliases if a in table), None)
        if hub_name is None:
            continue
        part = table[hub_name]
        labels = np.asarray(part[label_col], dtype=np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= (len(mapping) if mapping is not None
                                                                  else len(classnames))):
            raise DataError(f"dataset '{spec.repo}' split '{hub_name}' has labels outside 0..{len(classnames) - 1} "
                            f"(e.g. {int(labels.min())}); is it unlabelled?")
        if mapping is not None:
            labels = mapping[labels]
        rows = np.flatnonzero(labels >= 0)
        if spec.middle_frames and (middle := _middle_frame_rows(part)) is not None:
            rows = np.intersect1d(rows, middle)
        source = HubSource(part, image_col, labels, f"{spec.repo}/{hub_name}", config.max_image_pixels)
        found[split] = Split(source, rows, split)
    if not found:
        wanted = ", ".join(a for aliases in spec.hub_splits.values() for a in aliases)
        raise DataError(f"dataset '{spec.repo}' has none of the splits {wanted} (it has: {', '.join(table)})")
    if "test" not in found and "train" in found:  # a fixed test split; val never comes from test
        pool = found.pop("train")
        keep, held = stratified_split(pool.labels, HUB_TEST_FRACTION, HUB_TEST_SEED)
        found["train"], found["test"] = pool.subset(keep, "train"), pool.subset(held, "test")
    splits = make_splits(key, found.get("train"), found.get("test"), found.get("val"),
                         val_fraction=config.val_fraction, seed=config.seed)
    return ClassificationDataset(name=key, classnames=classnames, splits=splits, templates=template_sets(key),
                                 coop_templates=coop_template_set(key),
                                 info={"repo": spec.repo, "image_column": image_col, "label_column": label_col,
                                       "local_copy": config.root})


def is_hub_copy(root: Path) -> bool:
    """A save_to_disk folder or parquet files (what the hub path reads), as opposed to one of CoOp's folders."""
    return root.is_file() or any((root / marker).is_file() for marker in ("dataset_dict.json", "state.json")) or any(
        next(folder.glob("*.parquet"), None) is not None for folder in (root, root / "data") if folder.is_dir())


def _from_coop_folder(key: str, spec: CoopSpec, config: DataConfig, root: Path) -> ClassificationDataset:
    clean, pixels = spec.coop_name, config.max_image_pixels
    split_path = coop_folders.split_file_path(config.split_file, root, spec.split_file)
    if split_path is not None:
        classnames, found = coop_folders.read_coop_split_file(root, spec.image_dir, split_path, pixels, clean)
    elif spec.layout == "fgvc":
        classnames, found = coop_folders.read_fgvc_lists(root, spec.image_dir, pixels, clean)
    elif spec.layout == "imagenet":
        classnames, found = coop_folders.read_imagenet_folders(root, spec.image_dir, pixels, clean)
    else:
        number_by = "classnames" if spec.layout == "numbered_folders" else "sorted"
        classnames, source = coop_folders.read_wnid_folders(root, spec.image_dir, pixels, clean, number_by)
        found = {"test": Split(source, np.arange(len(source)), "test")}
    splits = make_splits(key, found.get("train"), found.get("test"), found.get("val"),
                         val_fraction=config.val_fraction, seed=config.seed)
    info = {"coop_folder": str(root.resolve()), "split_file": str(split_path) if split_path else None}
    return ClassificationDataset(name=key, classnames=classnames, splits=splits, templates=template_sets(key),
                                 coop_templates=coop_template_set(key),
                                 info=info)


def load_coop_dataset(key: str, config: DataConfig, argument: str | None = None) -> ClassificationDataset:
    spec = COOP_DATASETS[key]
    if config.root:
        root = Path(config.root).expanduser()
        if not root.exists():
            raise DataError(f"--data-root '{root}' does not exist (expected CoOp's {spec.folder}/ folder or a "
                            f"save_to_disk/parquet copy of {spec.repo})")
        if not is_hub_copy(root):
            return _from_coop_folder(key, spec, config, root)
    if config.split_file:
        raise DataError(f"data.split_file for '{key}' needs --data-root DIR, CoOp's {spec.folder}/ folder (the "
                        f"split file's paths are relative to DIR/{spec.image_dir or '.'})")
    return _from_hub(key, spec, config)


def _layout(spec: CoopSpec) -> str:
    images = f"{spec.image_dir}/ + " if spec.image_dir else "(cars_train/, cars_test/) + "
    parts = {"split_file": f"{images}{spec.split_file}", "fgvc": "images/ + variants.txt + "
             "images_variant_{train,val,test}.txt", "imagenet": "images/{train,val}/ + classnames.txt"}
    return f"{spec.folder}/" + (parts.get(spec.layout) or f"{spec.image_dir}/ + classnames.txt")


for _key_name, _spec in COOP_DATASETS.items():
    register_dataset(_key_name, usage=_key_name,
                     help=f"CoOp benchmark: {_spec.description}; hub: {_spec.repo}; "
                          f"--data-root: a hub copy or {_layout(_spec)}",
                     sampler="coop")(partial(load_coop_dataset, _key_name))
