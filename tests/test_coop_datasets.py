"""CoOp's benchmark datasets: hub copies with the hub's real columns and splits, CoOp's folders and split files, CoOp's
names and prompts. Offline: tiny generated images."""

from __future__ import annotations

import json

import datasets as hfds
import numpy as np
import pytest

from clipadapt.data import DATASETS, DataConfig, load_dataset
from clipadapt.data.coop import COOP_DATASETS, EUROSAT_NAMES, fixed_classnames, template_sets
from clipadapt.data.prompts import TEMPLATE_SETS
from clipadapt.errors import DataError
from tests.helpers import coloured_image

COOP_PROMPTS = {  # CUSTOM_TEMPLATES in KaiyangZhou/CoOp trainers/zsclip.py
    "oxford_pets": "a photo of a {}, a type of pet.", "flowers102": "a photo of a {}, a type of flower.",
    "fgvc_aircraft": "a photo of a {}, a type of aircraft.", "dtd": "{} texture.",
    "eurosat": "a centered satellite photo of {}.", "stanford_cars": "a photo of a {}.",
    "food101": "a photo of {}, a type of food.", "sun397": "a photo of a {}.", "caltech101": "a photo of a {}.",
    "ucf101": "a photo of a person doing {}.", "imagenet": "a photo of a {}.", "imagenet-sketch": "a photo of a {}.",
    "imagenet-v2": "a photo of a {}.", "imagenet-a": "a photo of a {}.", "imagenet-r": "a photo of a {}.",
}


def test_every_benchmark_dataset_is_registered_with_its_hub_id_and_ends_with_coops_prompt():
    assert set(COOP_PROMPTS) <= set(DATASETS.names())
    for name, prompt in COOP_PROMPTS.items():
        repo = COOP_DATASETS[name].repo if name in COOP_DATASETS else "dpdl-benchmark/oxford_flowers102"
        assert f"hub: {repo}" in DATASETS.help(name)
        last = template_sets(name)[-1] if name in COOP_DATASETS else "flowers"
        assert TEMPLATE_SETS.get(last).templates == [prompt], name
    assert "gated" in DATASETS.help("imagenet")


def test_fixed_name_lists():
    imagenet = fixed_classnames("imagenet")
    assert len(imagenet) == 1000 and imagenet[0] == "tench" and imagenet[-1] == "toilet paper"
    assert fixed_classnames("imagenet-v2") == imagenet == fixed_classnames("imagenet-sketch")
    subset_a, subset_r = fixed_classnames("imagenet-a"), fixed_classnames("imagenet-r")
    assert len(subset_a) == len(subset_r) == 200 and subset_a[0] == "stingray" and subset_r[0] == "goldfish"
    assert [imagenet.index(n) for n in subset_r] == sorted(imagenet.index(n) for n in subset_r)  # ImageNet's order
    aircraft = fixed_classnames("fgvc_aircraft")
    assert len(aircraft) == 100 and aircraft[:2] == ["707-320", "727-200"] and "F/A-18" in aircraft


def _table(image_column, label_feature, labels, extra=None):
    rows = {image_column: [coloured_image((30 * (i % 5), 90, 160), seed=i) for i in range(len(labels))],
            "label_tmp": labels, **(extra or {})}
    features = {image_column: hfds.Image(), "label_tmp": label_feature}
    for column, values in (extra or {}).items():
        features[column] = hfds.Value("string" if isinstance(values[0], str) else "int64")
    table = hfds.Dataset.from_dict(rows, features=hfds.Features(features))
    return table


def _save(path, parts, label_column, fmt):
    parts = {split: t.rename_column("label_tmp", label_column) for split, t in parts.items()}
    if fmt == "save_to_disk":
        hfds.DatasetDict(parts).save_to_disk(str(path))
    else:  # the hub repo's own layout: data/<split>-00000-of-00001.parquet
        (path / "data").mkdir(parents=True)
        for split, part in parts.items():
            part.to_parquet(str(path / "data" / f"{split}-00000-of-00001.parquet"))
    return str(path)


def test_eurosat_hub_copy_gets_coops_names_and_prompt(tmp_path):
    raw = list(EUROSAT_NAMES)  # the raw folder names; CoOp renames them
    feature = hfds.ClassLabel(names=raw)
    parts = {"train": _table("image", feature, [i % 10 for i in range(30)]),
             "test": _table("image", feature, [i % 10 for i in range(20)])}
    dataset = load_dataset(DataConfig(dataset="eurosat", root=_save(tmp_path / "e", parts, "label", "parquet")))
    assert dataset.classnames[:3] == ["Annual Crop Land", "Forest", "Herbaceous Vegetation Land"]
    assert dataset.classnames[-1] == "Sea or Lake" and dataset.templates == ["simple", "coop-eurosat"]
    assert dataset.default_template_set == "coop-eurosat"
    assert len(dataset.split("test")) == 20 and len(dataset.split("train")) + len(dataset.split("val")) == 30


def test_caltech101_hub_copy_drops_coops_ignored_classes_and_renames(tmp_path):
    names = ["accordion", "airplanes", "background_google", "faces", "faces_easy", "car_side"]
    feature = hfds.ClassLabel(names=names)
    parts = {split: _table("image", feature, list(range(6)) * n) for split, n in (("train", 4), ("test", 2))}
    dataset = load_dataset(DataConfig(dataset="caltech101", root=_save(tmp_path / "c", parts, "label",
                                                                       "save_to_disk")))
    assert dataset.classnames == ["accordion", "airplane", "face", "car side"]
    test = dataset.split("test")
    assert len(test) == 8 and test.labels.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]  # no dropped class is read
    assert test.load(1).mode == "RGB"


def test_imagenet_uses_validation_as_test_and_ignores_the_unlabelled_test_split(tmp_path):
    feature = hfds.ClassLabel(num_classes=1000)
    parts = {"train": _table("image", feature, [0, 1, 999] * 4), "validation": _table("image", feature, [5, 999]),
             "test": _table("image", feature, [-1, -1])}
    dataset = load_dataset(DataConfig(dataset="imagenet", root=_save(tmp_path / "i", parts, "label", "parquet")))
    assert set(dataset.splits) == {"train", "val", "test"} and dataset.split("test").labels.tolist() == [5, 999]
    assert dataset.classnames[999] == "toilet paper" and dataset.templates == ["clip", "coop-imagenet"]


def test_webdataset_shift_copy_reads_jpg_and_cls(tmp_path):
    parts = {"test": _table("jpg", hfds.Value("int64"), [0, 199, 7], extra={"__key__": ["a", "b", "c"]})}
    dataset = load_dataset(DataConfig(dataset="imagenet-r", root=_save(tmp_path / "r", parts, "cls", "parquet")))
    assert list(dataset.splits) == ["test"] and dataset.num_classes == 200
    assert dataset.split("test").labels.tolist() == [0, 199, 7] and dataset.info["image_column"] == "jpg"


def test_ucf101_hub_copy_keeps_the_middle_frame_of_each_video(tmp_path):
    feature = hfds.ClassLabel(names=["ApplyEyeMakeup", "YoYo"])
    clips = ["v1"] * 5 + ["v2"] * 2
    frames = [4, 0, 2, 1, 3, 1, 0]
    part = _table("image", feature, [0] * 5 + [1] * 2, extra={"clip_id": clips, "frame": frames})
    dataset = load_dataset(DataConfig(dataset="ucf101", val_fraction=0.0,
                                      root=_save(tmp_path / "u", {"train": part, "test": part}, "label", "parquet")))
    assert dataset.classnames == ["Apply Eye Makeup", "Yo Yo"]
    assert dataset.split("test").indices.tolist() == [2, 6]  # frame 2 of v1's 0..4, frame 0 of v2's 0..1


# -- CoOp's own folders -----------------------------------------------------------------------------------------


@pytest.fixture
def eurosat_folder(tmp_path):
    """CoOp's eurosat/: 2750/<class>/<image> and split_zhou_EuroSAT.json (its entries name CoOp's fixed classes)."""
    root = tmp_path / "eurosat"
    entries = {"train": [], "val": [], "test": []}
    for label, raw in enumerate(["AnnualCrop", "SeaLake", "River"]):
        (root / "2750" / raw).mkdir(parents=True)
        for i in range(3):
            path = f"{raw}/{raw}_{i + 1}.jpg"
            coloured_image((80 * label, 40 * i, 100), seed=i).save(root / "2750" / path)
            entries[("train", "val", "test")[i]].append([path, label, EUROSAT_NAMES[raw]])
    entries["train"].reverse()  # the file's order, not the folder's, is kept
    (root / "split_zhou_EuroSAT.json").write_text(json.dumps(entries))
    return root, entries


def test_coop_folder_loads_through_its_split_file_in_file_order(eurosat_folder):
    root, entries = eurosat_folder
    dataset = load_dataset(DataConfig(dataset="eurosat", root=str(root)))
    assert dataset.classnames == ["Annual Crop Land", "Sea or Lake", "River"]
    for split in ("train", "val", "test"):
        part = dataset.split(split)
        assert [(part.describe(i), int(part.labels[i])) for i in range(len(part))] == [
            (str(root / "2750" / path), label) for path, label, _ in entries[split]]
    assert dataset.default_template_set == "coop-eurosat"


def test_raw_split_file_names_get_coops_fixes_and_split_file_overrides(eurosat_folder, tmp_path):
    root, entries = eurosat_folder
    raw = {split: [[p, label, p.split("/")[0]] for p, label, _ in items] for split, items in entries.items()}
    other = tmp_path / "mine.json"
    other.write_text(json.dumps({"train": raw["train"][:2], "val": raw["val"], "test": raw["test"]}))
    dataset = load_dataset(DataConfig(dataset="eurosat", root=str(root), split_file=str(other)))
    assert dataset.classnames == ["Annual Crop Land", "Sea or Lake", "River"] and len(dataset.split("train")) == 2
    with pytest.raises(DataError, match="data.split_file for 'eurosat' needs --data-root DIR, CoOp's eurosat/"):
        load_dataset(DataConfig(dataset="eurosat", split_file=str(other)))


def test_coop_folder_errors_name_the_problem(eurosat_folder):
    root, _ = eurosat_folder
    (root / "2750" / "River" / "River_3.jpg").unlink()
    with pytest.raises(DataError, match=r"1 test images are missing under .*2750.*River_3.jpg"):
        load_dataset(DataConfig(dataset="eurosat", root=str(root)))
    (root / "split_zhou_EuroSAT.json").unlink()
    with pytest.raises(DataError, match=r"CoOp folder '.*eurosat' has no split file 'split_zhou_EuroSAT.json'"):
        load_dataset(DataConfig(dataset="eurosat", root=str(root)))
    with pytest.raises(DataError, match="does not exist .*CoOp's eurosat/ folder or a save_to_disk"):
        load_dataset(DataConfig(dataset="eurosat", root=str(root / "nope")))


def test_stanford_cars_split_file_paths_are_relative_to_the_folder_itself(tmp_path):
    root = tmp_path / "stanford_cars"
    entries = {}
    for split, folder in (("train", "cars_train"), ("val", "cars_train"), ("test", "cars_test")):
        (root / folder).mkdir(parents=True, exist_ok=True)
        entries[split] = []
        for label, name in enumerate(["2012 Tesla Model S Sedan", "2007 Audi S4 Sedan"]):
            path = f"{folder}/{split}{label}.jpg"
            coloured_image((100, 50 * label, 0)).save(root / path)
            entries[split].append([path, label, name])
    (root / "split_zhou_StanfordCars.json").write_text(json.dumps(entries))
    dataset = load_dataset(DataConfig(dataset="stanford_cars", root=str(root)))
    assert dataset.classnames == ["2012 Tesla Model S Sedan", "2007 Audi S4 Sedan"]  # the year is kept
    assert dataset.split("test").describe(0) == str(root / "cars_test" / "test0.jpg")


def test_fgvc_aircraft_folder_reads_coops_variant_lists(tmp_path):
    root = tmp_path / "fgvc_aircraft"
    (root / "images").mkdir(parents=True)
    (root / "variants.txt").write_text("707-320\nF/A-18\n")
    for split, ids in (("train", ["0001", "0002"]), ("val", ["0003"]), ("test", ["0004", "0005"])):
        lines = [f"{i} {'F/A-18' if int(i) % 2 else '707-320'}" for i in ids]
        (root / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
        for i in ids:
            coloured_image((int(i) * 40, 10, 10)).save(root / "images" / f"{i}.jpg")
    dataset = load_dataset(DataConfig(dataset="fgvc_aircraft", root=str(root)))
    assert dataset.classnames == ["707-320", "F/A-18"] and dataset.split("test").labels.tolist() == [0, 1]
    assert dataset.split("train").labels.tolist() == [1, 0] and dataset.templates[-1] == "coop-fgvc_aircraft"


def test_imagenet_a_folder_numbers_its_class_folders_as_coop_does(tmp_path):
    root = tmp_path / "imagenet-adversarial"
    (root / "imagenet-a").mkdir(parents=True)
    (root / "imagenet-a" / "README.txt").write_text("not a class")
    (root / "classnames.txt").write_text("n01498041 stingray\nn01531178 goldfinch\nn01534433 junco\n")
    for wnid in ("n01534433", "n01498041"):
        (root / "imagenet-a" / wnid).mkdir()
        coloured_image((10, 200, 10)).save(root / "imagenet-a" / wnid / "a.jpg")
    dataset = load_dataset(DataConfig(dataset="imagenet-a", root=str(root)))
    assert dataset.classnames == ["stingray", "junco"] and list(dataset.splits) == ["test"]
    assert np.array_equal(dataset.split("test").labels, [0, 1])
