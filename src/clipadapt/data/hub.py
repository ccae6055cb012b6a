"""Datasets from the Hugging Face hub (through ``datasets``), or from a local copy of one.

``flowers102``, ``cub200``, ``cifar10`` and ``cifar100`` come with their official class names (cleaned for
prompts) and the CLIP paper's templates; ``hf:ORG/NAME`` loads any image-classification dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from clipadapt.data.base import ClassificationDataset, Split, make_splits, stratified_split
from clipadapt.data.images import load_image
from clipadapt.data.registry import DataConfig, clean_classname, register_dataset
from clipadapt.errors import DataError

HUB_SPLIT_NAMES = {"train": ("train",), "val": ("validation", "valid", "val"), "test": ("test",)}
HUB_TEST_FRACTION = 0.2
HUB_TEST_SEED = 0
CUB_NAME_FIXES = {"Chuck-will Widow": "Chuck-will's-widow", "Whip-poor Will": "Whip-poor-will"}


def _prompt_data(name: str) -> dict:
    return yaml.safe_load(resources.files("clipadapt.data.prompts").joinpath(name).read_text())


def official_classnames(dataset: str) -> list[str]:
    if dataset == "cub200":
        text = resources.files("clipadapt.data.prompts").joinpath("cub200_raw.txt").read_text()
        names = [clean_classname(line) for line in text.splitlines() if line and not line.startswith("#")]
        return [CUB_NAME_FIXES.get(n, n) for n in names]
    return [str(c) for c in _prompt_data("classnames.yaml")[dataset]]


@dataclass
class HubDatasetSpec:
    """How to read one known hub dataset."""

    repo: str
    image_column: str
    label_column: str
    templates: list[str]
    classnames_key: str
    description: str = ""
    extra: dict = field(default_factory=dict)
    sampler: str = "random"  # data.sampler when unset: coop for the CoOp benchmark's own (Flowers102)


KNOWN_HUB_DATASETS = {
    "flowers102": HubDatasetSpec("dpdl-benchmark/oxford_flowers102", "image", "label", ["simple", "flowers"],
                                 "flowers102", "Oxford Flowers102 (official train/val/test)", sampler="coop"),
    "cub200": HubDatasetSpec("bentrevett/caltech-ucsd-birds-200-2011", "image", "label", ["simple", "birds"],
                             "cub200", "Caltech-UCSD Birds-200-2011 (official train/test)"),
    "cifar10": HubDatasetSpec("uoft-cs/cifar10", "img", "label", ["simple", "cifar"], "cifar10",
                              "CIFAR-10 (official train/test)"),
    "cifar100": HubDatasetSpec("uoft-cs/cifar100", "img", "fine_label", ["simple", "cifar"], "cifar100",
                               "CIFAR-100, fine labels (official train/test)"),
}


class HubSource:
    """One split of a ``datasets.Dataset``; images are decoded by clipadapt so bad files can be skipped."""

    def __init__(self, table, image_column: str, labels: np.ndarray, name: str, max_pixels: int | None) -> None:
        import datasets

        self.table = table.select_columns([image_column]).cast_column(image_column, datasets.Image(decode=False))
        self.image_column = image_column
        self.labels = labels
        self.name = name
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> Image.Image:
        return load_image(self.table[int(index)][self.image_column], max_pixels=self.max_pixels)

    def describe(self, index: int) -> str:
        return f"{self.name}[{index}]"

    def fingerprint(self) -> str:
        return f"{self.name}:{getattr(self.table, '_fingerprint', len(self))}"


def _offline_message(repo: str, reason: str) -> str:
    return (
        f"could not load hub dataset '{repo}' ({reason}). To work offline: where the hub is reachable run "
        f"python -c \"import datasets; datasets.load_dataset('{repo}').save_to_disk('DIR')\", copy DIR here "
        f"and pass --data-root DIR"
    )


def _load_local_copy(root: Path):
    import datasets

    if not root.exists():
        raise DataError(f"dataset copy '{root}' does not exist")
    if (root / "dataset_dict.json").is_file():
        return datasets.load_from_disk(str(root))
    if (root / "state.json").is_file():
        return datasets.DatasetDict({"train": datasets.load_from_disk(str(root))})
    files = [root] if root.is_file() else sorted(root.rglob("*.parquet"))
    if not files:
        raise DataError(f"'{root}' holds neither a save_to_disk copy (dataset_dict.json) nor parquet files")
    data_files: dict[str, list[str]] = {}
    for file in files:
        stem = file.name.lower()
        split = next((s for s in ("train", "validation", "valid", "val", "test") if stem.startswith(s)), "train")
        data_files.setdefault(split, []).append(str(file))
    return datasets.load_dataset("parquet", data_files=data_files)


# Transport failures of the HTTP stacks under datasets/huggingface_hub (httpx, requests, urllib3, aiohttp), matched
# by class name so that none of them has to be importable; builtin ConnectionError and TimeoutError also cover
# huggingface_hub's OfflineModeIsEnabled and datasets' "Couldn't reach ... on the Hub"
NETWORK_ERROR_NAMES = frozenset({"ConnectionError", "TimeoutError", "TransportError", "NetworkError", "ConnectError",
                                 "ConnectTimeout", "ReadTimeout", "Timeout", "MaxRetryError", "NewConnectionError",
                                 "ClientConnectionError", "gaierror"})


def network_failure(error: BaseException | None) -> BaseException | None:
    """``error``, or the error it was raised from (followed as a traceback shows them), that failed to reach the hub;
    None when there is none."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if any(c.__name__ in NETWORK_ERROR_NAMES for c in type(error).__mro__):
            return error
        if error.__cause__ is not None:
            error = error.__cause__
        else:
            error = None if error.__suppress_context__ else error.__context__
    return None


def _first_line(error: BaseException, limit: int) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__


def load_dataset_dict(repo: str, root: str | None):
    if root:
        return _load_local_copy(Path(root).expanduser())
    import datasets

    try:
        return datasets.load_dataset(repo)
    except Exception as e:
        network = network_failure(e)
        if network is not None:  # the offline advice helps only when the hub could not be reached
            raise DataError(_offline_message(repo, _first_line(network, 120))) from None
        # anything else (no such dataset, a gated one, a bad config) keeps its own message
        raise DataError(f"could not load hub dataset '{repo}': {_first_line(e, 300)}") from e


def _pick_column(features, wanted: str | None, kind: str, available: list[str], repo: str) -> str:
    import datasets

    if wanted:
        if wanted not in available:
            raise DataError(f"dataset '{repo}' has no column '{wanted}'; columns: {', '.join(available)}")
        return wanted
    feature_type = datasets.Image if kind == "image" else datasets.ClassLabel
    for name in available:
        if isinstance(features[name], feature_type):
            return name
    for name in (("image", "img") if kind == "image" else ("label", "labels", "fine_label")):
        if name in available:
            return name
    flag = "--image-column" if kind == "image" else "--label-column"
    raise DataError(f"cannot tell which column of '{repo}' holds the {kind}s; pass {flag} "
                    f"(columns: {', '.join(available)})")


def build_hub_dataset(
    repo: str,
    config: DataConfig,
    name: str,
    image_column: str | None = None,
    label_column: str | None = None,
    classnames: list[str] | None = None,
    templates: list[str] | None = None,
) -> ClassificationDataset:
    import datasets

    table = load_dataset_dict(repo, config.root)
    available_splits = list(table.keys())
    first = table[available_splits[0]]
    columns = list(first.column_names)
    image_col = _pick_column(first.features, config.image_column or image_column, "image", columns, repo)
    label_col = _pick_column(first.features, config.label_column or label_column, "label", columns, repo)
    label_feature = first.features[label_col]

    string_labels = None
    if not isinstance(label_feature, datasets.ClassLabel) and label_feature.dtype == "string":
        string_labels = sorted({str(v) for split in table.values() for v in split[label_col]})
    if classnames is None:
        if isinstance(label_feature, datasets.ClassLabel):
            classnames = [clean_classname(n) for n in label_feature.names]
        elif string_labels is not None:
            classnames = [clean_classname(n) for n in string_labels]
        else:
            n = int(max(max(split[label_col]) for split in table.values())) + 1
            classnames = [str(i) for i in range(n)]
    if isinstance(label_feature, datasets.ClassLabel) and len(label_feature.names) != len(classnames):
        raise DataError(f"dataset '{repo}' has {len(label_feature.names)} classes, expected {len(classnames)}")

    found: dict[str, Split] = {}
    for split, aliases in HUB_SPLIT_NAMES.items():
        hub_name = next((a for a in aliases if a in table), None)
        if hub_name is None:
            continue
        part = table[hub_name]
        raw = part[label_col]
        if string_labels is not None:
            index = {s: i for i, s in enumerate(string_labels)}
            labels = np.array([index[str(v)] for v in raw], dtype=np.int64)
        else:
            labels = np.asarray(raw, dtype=np.int64)
        source = HubSource(part, image_col, labels, f"{repo}/{hub_name}", config.max_image_pixels)
        found[split] = Split(source, np.arange(len(labels)), split)
    if not found:
        raise DataError(f"dataset '{repo}' has none of the splits train/validation/test "
                        f"(it has: {', '.join(available_splits)})")
    if "test" not in found and "train" in found:  # carve a fixed test split; val never comes from test
        pool = found.pop("train")
        keep, held = stratified_split(pool.labels, HUB_TEST_FRACTION, HUB_TEST_SEED)
        found["train"], found["test"] = pool.subset(keep, "train"), pool.subset(held, "test")
    splits = make_splits(name, found.get("train"), found.get("test"), found.get("val"),
                         val_fraction=config.val_fraction, seed=config.seed)
    return ClassificationDataset(
        name=name, classnames=classnames, splits=splits, templates=templates or ["simple"],
        info={"repo": repo, "image_column": image_col, "label_column": label_col,
              "local_copy": config.root},
    )


def _register_known(key: str, spec: HubDatasetSpec) -> None:
    def factory(config: DataConfig, argument: str | None = None) -> ClassificationDataset:
        return build_hub_dataset(spec.repo, config, key, spec.image_column, spec.label_column,
                                 official_classnames(spec.classnames_key), spec.templates)

    register_dataset(key, usage=key, help=f"{spec.description}; hub: {spec.repo}", sampler=spec.sampler)(factory)


for _key, _spec in KNOWN_HUB_DATASETS.items():
    _register_known(_key, _spec)


@register_dataset("hf", takes_argument=True, usage="hf:ORG/NAME")
def load_hf_dataset(config: DataConfig, argument: str | None) -> ClassificationDataset:
    """Any hub image-classification dataset; columns auto-detected or set with --image-column/--label-column."""
    return build_hub_dataset(str(argument), config, f"hf:{argument}")
