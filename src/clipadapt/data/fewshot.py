"""K-shot subsets: drawn, recorded (``fewshot.json``) and reused (``data.fewshot_file``).

Two samplers (``data.sampler``; unset, it is ``coop`` for CoOp's datasets and for a ``data.split_file``, ``random``
otherwise: ``registry.resolve_sampler``):

* ``random``: a seeded, stratified draw of K training images per class (numpy); validation is kept whole (or drawn
  the same way with ``data.val_shots`` per class).
* ``coop``: the draw of CoOp's code (Zhou et al. 2022), Dassl's ``generate_fewshot_dataset`` as CoOp calls it, the
  one the few-shot benchmark's published numbers use: Python's ``random`` seeded with the run's seed, then per class,
  in the order the classes first appear in the split, ``random.sample(items, K)`` of the training items, then the
  same of the validation items with ``min(K, 4)`` (``data.val_shots`` replaces it: prolip-val's K, ProLIP's). A class
  with fewer items than asked keeps them all and draws nothing (Dassl's ``repeat=False``), so it consumes no random
  numbers and the next class draws as in Dassl. On the same split file (``data.split_file``) and seed it selects the
  same images as CoOp's code. References: KaiyangZhou/Dassl.pytorch@c61a1b570ac6333bd50fb5ae06aea59002fb20bb
  ``dassl/data/datasets/base_dataset.py:167-207`` (``repeat=False`` at 168, the branch at 195-201; classes in first
  appearance by ``split_dataset_by_label``'s defaultdict, 211-223); KaiyangZhou/CoOp@
  ff61507c790454bce7c5052c3ac39e60772f1f89 ``datasets/oxford_pets.py:44-45`` (train K, then val ``min(K, 4)``, no
  ``repeat`` argument; the same two lines in every dataset but ImageNet, which draws train only).

Base-to-novel (``data.subsample``, CoOp's ``subsample_classes``): the classes present in train, sorted by label,
are halved, ``base`` keeping the first ``ceil(n / 2)`` and ``new`` the rest; every split keeps only those classes and
they are relabelled from 0 in label order. As in CoOp's code this happens after the K-shot draw over all classes, so
a base run trains on exactly the base-class images of the all-class draw with the same seed.

Every run that samples writes the images it trained and validated on as ``fewshot.json``; ``data.fewshot_file``
reads such a file (or a published subset in the same form) back instead of drawing.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clipadapt.data.base import ClassificationDataset, RelabelledSource, Split, few_shot, read_json_file
from clipadapt.errors import ConfigError, DataError
from clipadapt.io import atomic_write_json

FEWSHOT_FILE = "fewshot.json"


def dassl_sample(labels: Sequence[int], shots: int, rng: random.Random, repeat: bool = False) -> list[int]:
    """Positions of ``shots`` items per label, as Dassl's ``generate_fewshot_dataset`` draws them from ``rng``
    (module docstring): a class with fewer items keeps them all and draws nothing, or with ``repeat`` draws ``shots``
    with repetition (``random.choices``; ProLIP's copy of the function defaults to it)."""
    by_label: dict[int, list[int]] = {}
    for position, label in enumerate(labels):
        by_label.setdefault(int(label), []).append(position)  # classes in order of first appearance
    chosen: list[int] = []
    for items in by_label.values():
        if len(items) >= shots:
            chosen.extend(rng.sample(items, shots))
        else:
            chosen.extend(rng.choices(items, k=shots) if repeat else items)
    return chosen


def coop_val_shots(shots: int, val_shots: int | None) -> int:
    """Validation images per class the coop sampler draws: ``data.val_shots``, else CoOp's ``min(K, 4)``."""
    return min(shots, 4) if val_shots is None else val_shots


def coop_subsets(train: Split, val: Split | None, shots: int, seed: int,
                 val_shots: int | None = None) -> tuple[Split, Split | None]:
    """CoOp's K-shot train and min(K, 4)-shot (or ``val_shots``) validation subsets (module docstring)."""
    rng = random.Random(seed)  # = random.seed(seed) in Dassl's set_random_seed, then the same calls
    train_subset = train.subset(np.asarray(dassl_sample(train.labels, shots, rng), dtype=np.int64), "train")
    if val is None:
        return train_subset, None
    val_positions = dassl_sample(val.labels, coop_val_shots(shots, val_shots), rng)
    return train_subset, val.subset(np.asarray(val_positions, dtype=np.int64), "val")


def random_subsets(train: Split, val: Split | None, shots: int, seed: int,
                   val_shots: int | None = None) -> tuple[Split, Split | None]:
    """K training images per class, numpy-seeded and stratified; validation kept whole, or ``val_shots`` per class
    drawn the same way."""
    if val is not None and val_shots is not None:
        val = val.subset(few_shot(val.labels, val_shots, seed), "val")
    return train.subset(few_shot(train.labels, shots, seed), "train"), val


SAMPLERS = {"random": random_subsets, "coop": coop_subsets}  # data.sampler -> (train, val, K, seed) -> subsets


def apply_shots(dataset: ClassificationDataset, shots: int, seed: int, sampler: str,
                val_shots: int | None = None) -> None:
    """Replace train (and for ``coop`` or a ``val_shots`` val) by their K-shot subsets, in place (``sampler``
    checked by DataConfig)."""
    train, val = SAMPLERS[sampler](dataset.split("train"), dataset.splits.get("val"), shots, seed, val_shots)
    dataset.splits["train"] = train
    if val is not None:
        dataset.splits["val"] = val
    drawn_val = coop_val_shots(shots, val_shots) if sampler == "coop" else val_shots
    dataset.info.update(shots=shots, sampler=sampler, seed=seed, val_shots=drawn_val)


SUBSAMPLES = ("all", "base", "new")  # data.subsample


def subsample_classes(labels: np.ndarray, subsample: str) -> list[int]:
    """The labels kept by CoOp's ``subsample_classes``: sorted labels present, first ``ceil(n/2)`` (base) or the
    rest (new)."""
    present = sorted({int(label) for label in labels})
    half = math.ceil(len(present) / 2)
    return present if subsample == "all" else present[:half] if subsample == "base" else present[half:]


def apply_subsample(dataset: ClassificationDataset, subsample: str) -> None:
    """Keep the base or new half of the classes in every split, relabelled from 0 (module docstring), in place."""
    if subsample == "all":
        return
    keep = subsample_classes(dataset.split("train").labels if "train" in dataset.splits
                             else np.arange(dataset.num_classes), subsample)
    if not keep:
        raise DataError(f"dataset '{dataset.name}' has no {subsample} classes (it has {dataset.num_classes})")
    mapping = np.full(dataset.num_classes, -1, dtype=np.int64)
    mapping[keep] = np.arange(len(keep))
    for name, split in dataset.splits.items():
        kept = np.flatnonzero(mapping[split.labels] >= 0)
        dataset.splits[name] = Split(RelabelledSource(split.source, mapping), split.indices[kept], split.name,
                                     split.carved_from)
    dataset.classnames = [dataset.classnames[label] for label in keep]
    dataset.info.update(subsample=subsample, subsample_labels=keep)


def fewshot_record(dataset: ClassificationDataset) -> dict[str, Any]:
    """What ``fewshot.json`` holds: the dataset, K, seed, sampler, and each sampled split's images as
    ``[item, label]`` (the item is a file path, or ``source[index]`` for generated data)."""
    splits = {name: [[split.describe(i), int(split.labels[i])] for i in range(len(split))]
              for name, split in dataset.splits.items() if name in ("train", "val")}
    return {"dataset": dataset.name, "shots": dataset.info.get("shots"), "seed": dataset.info.get("seed"),
            "sampler": dataset.info.get("sampler", "random"), "val_shots": dataset.info.get("val_shots"),
            "subsample": dataset.info.get("subsample", "all"),
            "classnames": list(dataset.classnames), **splits}


def write_fewshot_file(run_dir: str | Path, dataset: ClassificationDataset) -> Path | None:
    """``RUN/fewshot.json`` when the run sampled (or reused) a K-shot subset; nothing otherwise."""
    if dataset.info.get("shots") is None:
        return None
    path = Path(run_dir) / FEWSHOT_FILE
    atomic_write_json(path, fewshot_record(dataset))
    return path


def apply_fewshot_file(dataset: ClassificationDataset, path: str | Path) -> None:
    """Train and validate on exactly the images a ``fewshot.json`` names (matched by item and label)."""
    path = Path(path)
    record = read_json_file(path, "data.fewshot_file")
    if record.get("dataset") != dataset.name:
        raise ConfigError(f"data.fewshot_file '{path}' is for dataset '{record.get('dataset')}', not "
                          f"'{dataset.name}'")
    if record.get("subsample", "all") != dataset.info.get("subsample", "all"):
        raise ConfigError(f"data.fewshot_file '{path}' holds the {record.get('subsample', 'all')} classes of "
                          f"'{dataset.name}'; set data.subsample={record.get('subsample', 'all')}")
    for name in ("train", "val"):
        if name not in record:
            continue
        split = dataset.split(name)
        where = {(split.describe(i), int(split.labels[i])): i for i in range(len(split))}
        positions = []
        for item, label in record[name]:
            if (item, int(label)) not in where:
                raise DataError(f"data.fewshot_file '{path}' names {name} image '{item}' (label {label}), which "
                                f"the {name} split of '{dataset.name}' does not hold")
            positions.append(where[(item, int(label))])
        dataset.splits[name] = split.subset(np.asarray(positions, dtype=np.int64), name)
    dataset.info.update(shots=record.get("shots"), sampler=record.get("sampler", "random"), seed=record.get("seed"),
                        val_shots=record.get("val_shots"), fewshot_file=str(path))
