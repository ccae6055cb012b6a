from __future__ import annotations

import datasets as hfds
import numpy as np
import pytest

from clipadapt.data import DATASETS, DataConfig, load_dataset
from clipadapt.data.base import few_shot, stratified_split
from clipadapt.data.hub import KNOWN_HUB_DATASETS, official_classnames
from clipadapt.data.registry import clean_classname
from clipadapt.errors import ConfigError, DataError, UnknownNameError
from tests.helpers import coloured_image, make_image_folder


def _positions(split) -> set:
    return {(id(split.source), int(i)) for i in split.indices}


def _assert_disjoint(dataset):
    names = list(dataset.splits)
    for a in names:
        for b in names:
            if a < b and "all" not in (a, b):
                assert not (_positions(dataset.splits[a]) & _positions(dataset.splits[b])), (a, b)


def test_digits_splits_are_stratified_disjoint_and_seeded():
    dataset = load_dataset(DataConfig(dataset="digits"))
    sizes = {k: len(v) for k, v in dataset.splits.items()}
    assert sum(sizes.values()) == 1797 and sizes["test"] == 539
    _assert_disjoint(dataset)
    assert set(np.unique(dataset.split("val").labels)) == set(range(10))
    other_seed = load_dataset(DataConfig(dataset="digits", seed=1))
    assert np.array_equal(other_seed.split("test").indices, dataset.split("test").indices)  # test is fixed
    assert not np.array_equal(other_seed.split("val").indices, dataset.split("val").indices)
    image = dataset.split("test").load(0)
    assert image.mode == "RGB" and image.size == (32, 32)


def test_val_is_carved_from_train_never_from_test():
    labels = np.repeat(np.arange(4), 10)
    keep, held = stratified_split(labels, 0.1, seed=3)
    assert len(held) == 4 and set(labels[held]) == {0, 1, 2, 3}
    assert not set(keep) & set(held) and len(keep) + len(held) == 40
    dataset = load_dataset(DataConfig(dataset="digits"))
    test_before = dataset.split("test").indices.copy()
    assert not set(dataset.split("val").indices) & set(test_before)


def test_few_shot_draws_k_per_class_deterministically():
    labels = np.repeat(np.arange(5), [10, 3, 7, 8, 1])
    chosen = few_shot(labels, 4, seed=0)
    counts = np.bincount(labels[chosen], minlength=5)
    assert counts.tolist() == [4, 3, 4, 4, 1]
    assert np.array_equal(chosen, few_shot(labels, 4, seed=0))
    assert not np.array_equal(chosen, few_shot(labels, 4, seed=1))
    dataset = load_dataset(DataConfig(dataset="digits", shots=5))
    assert np.bincount(dataset.split("train").labels).tolist() == [5] * 10
    with pytest.raises(ConfigError, match="shots must be positive"):
        DataConfig(dataset="digits", shots=0)


def test_image_folder_without_split_folders(tmp_path):
    root = make_image_folder(tmp_path / "flat", per_class=10)
    dataset = load_dataset(DataConfig(dataset=f"imagefolder:{root}"))
    assert dataset.classnames == ["blue", "green", "red"]
    assert {k: len(v) for k, v in dataset.splits.items()} == {"train": 21, "val": 3, "test": 6, "all": 30}
    _assert_disjoint(dataset)
    assert dataset.split("test").load(0).mode == "RGB"


def test_image_folder_with_split_folders_and_cleaned_names(tmp_path):
    root = tmp_path / "split"
    for split in ("train", "test"):
        for name in ("001.Black_footed_Albatross", "002.Laysan_Albatross"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(5):
                coloured_image((10 * i, 50, 90)).save(folder / f"{i}.png")
    dataset = load_dataset(DataConfig(dataset=f"imagefolder:{root}"))
    assert dataset.classnames == ["Black-footed Albatross", "Laysan Albatross"]
    assert {k: len(v) for k, v in dataset.splits.items()} == {"train": 8, "val": 2, "test": 10}


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(DataConfig(dataset=f"imagefolder:{tmp_path / 'nope'}"))
    with pytest.raises(DataError, match="no class folders"):
        load_dataset(DataConfig(dataset=f"imagefolder:{tmp_path}"))
    (tmp_path / "cats").mkdir()
    (tmp_path / "cats" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="no images found"):
        load_dataset(DataConfig(dataset=f"imagefolder:{tmp_path}"))


def test_unknown_dataset_lists_choices():
    with pytest.raises(UnknownNameError, match=r"unknown dataset 'imagenet-21k'; valid choices: .*cifar10.*"
                                               r"imagefolder:PATH"):
        load_dataset(DataConfig(dataset="imagenet-21k"))


def test_classes_override_renames_or_reorders(tmp_path):
    root = make_image_folder(tmp_path / "c", per_class=4)
    base = load_dataset(DataConfig(dataset=f"imagefolder:{root}"))
    reordered = load_dataset(DataConfig(dataset=f"imagefolder:{root}", classes=["red", "green", "blue"]))
    assert reordered.classnames == ["red", "green", "blue"]
    old = np.array(base.classnames)[base.split("all").labels]
    new = np.array(reordered.classnames)[reordered.split("all").labels]
    assert (old == new).all()  # each image keeps its class
    renamed = load_dataset(DataConfig(dataset=f"imagefolder:{root}", classes=["navy", "lime", "crimson"]))
    assert np.array_equal(renamed.split("all").labels, base.split("all").labels)
    with pytest.raises(ConfigError, match="gives 2 names but dataset .* has 3 classes"):
        load_dataset(DataConfig(dataset=f"imagefolder:{root}", classes=["a", "b"]))


def test_official_class_names():
    flowers = official_classnames("flowers102")
    assert len(flowers) == 102 and flowers[0] == "pink primrose" and flowers[-1] == "blackberry lily"
    cub = official_classnames("cub200")
    assert len(cub) == 200 and cub[0] == "Black-footed Albatross" and cub[-1] == "Common Yellowthroat"
    assert "Chuck-will's-widow" in cub and all("_" not in c for c in cub)
    assert len(official_classnames("cifar100")) == 100 and official_classnames("cifar10")[0] == "airplane"
    assert clean_classname("aquarium_fish") == "aquarium fish"


# -- hub datasets, from local copies in their real formats ---------------------------------------------------


def _hub_copy(path, image_column, label_columns, num_classes, splits, fmt):
    features = {image_column: hfds.Image()}
    for column in label_columns:
        features[column] = hfds.ClassLabel(num_classes=num_classes)
    parts = {}
    for split, n in splits.items():
        rows = {image_column: [coloured_image((20 * (i % 3), 100, 200), seed=i) for i in range(n)]}
        for column in label_columns:
            rows[column] = [i % 3 for i in range(n)]
        parts[split] = hfds.Dataset.from_dict(rows, features=hfds.Features(features))
    if fmt == "save_to_disk":
        hfds.DatasetDict(parts).save_to_disk(str(path))
    else:
        path.mkdir(parents=True)
        for split, part in parts.items():
            part.to_parquet(str(path / f"{split}-00000-of-00001.parquet"))
    return path


@pytest.mark.parametrize("name, fmt", [("flowers102", "save_to_disk"), ("cub200", "parquet"),
                                       ("cifar10", "parquet"), ("cifar100", "save_to_disk")])
def test_known_hub_datasets_load_from_local_copies(tmp_path, name, fmt):
    spec = KNOWN_HUB_DATASETS[name]
    labels = [spec.label_column] + (["coarse_label"] if name == "cifar100" else [])
    num_classes = len(official_classnames(spec.classnames_key))
    splits = {"train": 12, "validation": 6, "test": 9} if name == "flowers102" else {"train": 15, "test": 9}
    root = _hub_copy(tmp_path / name, spec.image_column, labels, num_classes, splits, fmt)
    dataset = load_dataset(DataConfig(dataset=name, root=str(root)))
    assert dataset.num_classes == num_classes and dataset.templates[0] == "simple"
    assert len(dataset.split("test")) == 9
    if name == "flowers102":
        assert len(dataset.split("train")) == 12 and len(dataset.split("val")) == 6  # official splits kept
    else:
        assert len(dataset.split("train")) + len(dataset.split("val")) == 15  # val carved out of train
    _assert_disjoint(dataset)
    assert dataset.split("test").load(1).mode == "RGB"
    assert dataset.split("test").labels.tolist() == [i % 3 for i in range(9)]


def test_generic_hf_dataset_with_string_labels_and_explicit_columns(tmp_path):
    rows = {"picture": [coloured_image((200, 10 * i, 10), seed=i) for i in range(12)],
            "kind": ["cat", "dog", "owl"] * 4, "other": list(range(12))}
    table = hfds.Dataset.from_dict(rows, features=hfds.Features(
        {"picture": hfds.Image(), "kind": hfds.Value("string"), "other": hfds.Value("int64")}))
    hfds.DatasetDict({"train": table}).save_to_disk(str(tmp_path / "copy"))
    dataset = load_dataset(DataConfig(dataset="hf:me/pets", root=str(tmp_path / "copy"),
                                      image_column="picture", label_column="kind"))
    assert dataset.classnames == ["cat", "dog", "owl"]
    assert set(dataset.splits) == {"train", "val", "test"}  # test carved (fixed), then val out of train
    with pytest.raises(DataError, match="no column 'nope'; columns: picture, kind, other"):
        load_dataset(DataConfig(dataset="hf:me/pets", root=str(tmp_path / "copy"), label_column="nope"))


def test_hub_dataset_without_network_explains_offline_use(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(hfds.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match=r"could not load hub dataset 'uoft-cs/cifar10'.*save_to_disk.*--data-root"):
        load_dataset(DataConfig(dataset="cifar10"))


def test_every_registered_dataset_is_covered():
    coop = {"imagenet", "caltech101", "oxford_pets", "stanford_cars", "food101", "fgvc_aircraft", "sun397", "dtd",
            "eurosat", "ucf101", "imagenet-v2", "imagenet-sketch", "imagenet-a", "imagenet-r"}  # test_coop_datasets.py
    assert set(DATASETS.names()) == {"cifar10", "cifar100", "cub200", "digits", "flowers102", "hf", "imagefolder",
                                     "world"} | coop
