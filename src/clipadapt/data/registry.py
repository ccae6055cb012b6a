"""Dataset registry, the data config, and ``load_dataset(config)``."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass

from clipadapt.config import option
from clipadapt.data.base import ClassificationDataset, RelabelledSource, Split
from clipadapt.data.fewshot import (
    SAMPLERS,
    SUBSAMPLES,
    apply_fewshot_file,
    apply_shots,
    apply_subsample,
    coop_val_shots,
)
from clipadapt.errors import ConfigError, DataError, UnknownNameError
from clipadapt.registry import Registry


@dataclass
class DataConfig:
    dataset: str = option("digits", help="dataset spec: a registered name, imagefolder:PATH or hf:ORG/NAME")
    split: str = option("test", help="split to evaluate: train, val or test")
    root: str | None = option(None, help="local copy of a hub dataset (save_to_disk folder or parquet files)")
    image_column: str | None = option(None, help="image column of a hub dataset (default: auto-detect)")
    label_column: str | None = option(None, help="label column of a hub dataset (default: auto-detect)")
    classes: list[str] | None = option(None, help="class names to use instead of the dataset's own")
    shots: int | None = option(None, help="K training images per class (seeded, stratified)")
    sampler: str | None = option(None, help="how K-shot subsets are drawn: random (numpy, train only) or coop "
                                            "(CoOp's code: train K and val min(K, 4) per class, Python's random "
                                            "with data.seed); unset: coop for CoOp's datasets and a "
                                            "data.split_file, random otherwise (a run records which)")
    val_shots: int | None = option(None, help="validation images per class drawn with the training shots (unset: "
                                              "the sampler's own, coop min(K, 4) or the method's reference, e.g. "
                                              "K for prolip-val; random keeps val whole)")
    fewshot_file: str | None = option(None, help="a fewshot.json (an earlier run's, or published) whose train and "
                                                 "val images are used instead of drawing")
    subsample: str = option("all", help="classes kept, as CoOp's base-to-novel protocol splits them: all, base (the "
                                        "first half by label, ceil(n/2)) or new (the rest, relabelled from 0)")
    split_file: str | None = option(None, help="a CoOp split file ({train|val|test: [[path, label, classname]]}) "
                                               "for imagefolder:ROOT, paths relative to ROOT")
    val_fraction: float = option(0.1, help="share of train held out as val when there is no val split")
    seed: int = option(0, help="seed for val carving and few-shot sampling")
    batch_size: int = option(64, help="images per batch when encoding")
    num_workers: int = option(-1, help="image decoding processes (-1: one per spare CPU core, at most 4)")
    strict: bool = option(False, help="abort on the first unreadable image instead of skipping it")
    max_image_pixels: int | None = option(None, help="refuse images with more pixels (default: PIL's limit)")

    def __post_init__(self) -> None:
        if self.shots is not None and self.shots <= 0:
            raise ConfigError(f"data.shots must be positive, got {self.shots}")
        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise ConfigError(f"unknown data.sampler '{self.sampler}'; valid choices: {', '.join(SAMPLERS)}")
        if self.val_shots is not None and self.val_shots <= 0:
            raise ConfigError(f"data.val_shots must be positive, got {self.val_shots}")
        if self.subsample not in SUBSAMPLES:
            raise ConfigError(f"unknown data.subsample '{self.subsample}'; valid choices: {', '.join(SUBSAMPLES)}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.batch_size <= 0:
            raise ConfigError(f"data.batch_size must be positive, got {self.batch_size}")
        if self.classes is not None and len(self.classes) == 0:
            raise ConfigError("data.classes is empty: give at least one class name")


@dataclass
class DatasetEntry:
    factory: Callable[[DataConfig, str | None], ClassificationDataset]
    takes_argument: bool = False
    usage: str = ""
    sampler: str = "random"  # data.sampler when unset (CoOp's datasets: coop)


DATASETS: Registry[DatasetEntry] = Registry("dataset")


def register_dataset(name: str, takes_argument: bool = False, usage: str = "", help: str = "",
                     sampler: str = "random"):
    """Decorator: ``@register_dataset("cifar10")`` or ``@register_dataset("imagefolder", takes_argument=True)``;
    ``sampler`` is how its K-shot subsets are drawn where data.sampler is unset (CoOp's datasets: ``coop``)."""

    def wrap(factory):
        MISSING_DOC = (factory.__doc__ or "").strip().splitlines()
        DATASETS.register(name, DatasetEntry(factory, takes_argument, usage or name, sampler),
                          help=help or (MISSING_DOC[0] if MISSING_DOC else ""))
        return factory

    return wrap


def dataset_usages() -> list[str]:
    return [entry.usage for _, entry in DATASETS.items()]


def _resolve(spec: str) -> tuple[DatasetEntry, str | None]:
    if spec in DATASETS and not DATASETS.get(spec).takes_argument:
        return DATASETS.get(spec), None
    scheme, sep, argument = spec.partition(":")
    if sep and scheme in DATASETS and DATASETS.get(scheme).takes_argument:
        if not argument:
            raise ConfigError(f"dataset '{spec}' needs an argument: {DATASETS.get(scheme).usage}")
        return DATASETS.get(scheme), argument
    raise UnknownNameError(f"unknown dataset '{spec}'; valid choices: {', '.join(dataset_usages())}")


def check_dataset_spec(spec: str) -> None:
    """A one-line error with the valid choices for a spec no registered dataset reads (nothing is loaded)."""
    _resolve(spec)


def resolve_sampler(config: DataConfig) -> str:
    """``data.sampler`` as given, else ``coop`` for a CoOp split file (``data.split_file``) or a dataset registered
    with it (CoOp's benchmark datasets), else ``random`` (issue 29: CoOp's data draws as CoOp's code by default)."""
    if config.sampler is not None:
        return config.sampler
    return "coop" if config.split_file else _resolve(config.dataset)[0].sampler


def resolved_data(config: DataConfig, val_shots: Callable[[int], int] | None = None) -> DataConfig:
    """``config`` with its sampler resolved and, for K shots under ``coop`` without ``data.val_shots``, the
    validation shots ``val_shots(K)`` of the method's reference where they are not CoOp's ``min(K, 4)`` (left unset,
    as runs of earlier versions recorded it): what a run records as the data it used."""
    if config.fewshot_file is not None:  # nothing is drawn: the file's images (and its sampler, fewshot.json)
        return config
    sampler = resolve_sampler(config)
    if config.shots is not None and sampler == "coop" and config.val_shots is None and val_shots is not None:
        wanted = val_shots(config.shots)
        if wanted != coop_val_shots(config.shots, None):
            return dataclasses.replace(config, sampler=sampler, val_shots=wanted)
    return dataclasses.replace(config, sampler=sampler)


def load_dataset(config: DataConfig) -> ClassificationDataset:
    """Build the dataset named by ``config.dataset``, apply class-name overrides and few-shot sampling."""
    entry, argument = _resolve(config.dataset)
    dataset = entry.factory(config, argument)
    if config.classes is not None:
        dataset = _with_classes(dataset, [c.strip() for c in config.classes])
    if config.fewshot_file is not None:  # a recorded subset names its images after any class subsampling
        apply_subsample(dataset, config.subsample)
        apply_fewshot_file(dataset, config.fewshot_file)
    else:  # CoOp draws K shots over all classes, then keeps the base or new half
        if config.shots is not None:
            apply_shots(dataset, config.shots, config.seed, resolve_sampler(config), config.val_shots)
        apply_subsample(dataset, config.subsample)
    return dataset


def _with_classes(dataset: ClassificationDataset, classes: list[str]) -> ClassificationDataset:
    """Rename classes in order, or reorder them when the same names are given in another order."""
    if any(not c for c in classes):
        raise ConfigError("class names must not be empty")
    if len(set(classes)) != len(classes):
        raise ConfigError(f"class names must be unique, got {', '.join(classes)}")
    if len(classes) != dataset.num_classes:
        raise ConfigError(
            f"--classes gives {len(classes)} names but dataset '{dataset.name}' has {dataset.num_classes} "
            f"classes: {', '.join(dataset.classnames[:20])}{' ...' if dataset.num_classes > 20 else ''}"
        )
    lowered = [c.lower() for c in dataset.classnames]
    if sorted(c.lower() for c in classes) == sorted(lowered) and [c.lower() for c in classes] != lowered:
        import numpy as np

        new_index = {c.lower(): i for i, c in enumerate(classes)}
        mapping = np.array([new_index[c] for c in lowered])
        for name, split in dataset.splits.items():
            dataset.splits[name] = Split(RelabelledSource(split.source, mapping), split.indices, split.name,
                                         split.carved_from)
    dataset.classnames = list(classes)
    return dataset


_PREFIX = re.compile(r"^\d+[._\- ]+")


def clean_classname(raw: str) -> str:
    """'001.Black_footed_Albatross' -> 'Black-footed Albatross'; 'aquarium_fish' -> 'aquarium fish'."""
    name = _PREFIX.sub("", raw.strip())
    name = re.sub(r"_(?=[a-z])", "-", name) if re.search(r"[A-Z]", name) else name.replace("_", " ")
    return re.sub(r"\s+", " ", name.replace("_", " ")).strip()


def require(condition: bool, message: str) -> None:
    if not condition:
        raise DataError(message)
