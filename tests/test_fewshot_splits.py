"""CoOp split files, CoOp's K-shot draw, fewshot.json and its reuse (the few-shot benchmark's data protocol)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections import defaultdict

import pytest

from clipadapt.classification.experiment import load_experiment
from clipadapt.classification.training import run_training
from clipadapt.data import DataConfig, load_dataset
from clipadapt.data.fewshot import dassl_sample, fewshot_record
from clipadapt.errors import ConfigError, DataError
from tests.helpers import make_image_folder


def dassl_reference(labels: list[int], shots: int) -> list[int]:
    """Dassl's generate_fewshot_dataset as CoOp runs it: module-level random after random.seed(seed)."""
    tracker = defaultdict(list)
    for position, label in enumerate(labels):
        tracker[label].append(position)
    dataset = []
    for _, items in tracker.items():
        dataset.extend(random.sample(items, shots) if len(items) >= shots else random.choices(items, k=shots))
    return dataset


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_coop_draw_is_dassls(seed):
    labels = [3, 1, 1, 3, 0, 2, 1, 0, 3, 3, 1, 0, 2, 0, 1, 3, 2]  # class 2 has fewer than 4: repeated draw
    random.seed(seed)
    expected_train, expected_val = dassl_reference(labels, 4), dassl_reference(labels[::-1], 2)
    rng = random.Random(seed)
    assert dassl_sample(labels, 4, rng) == expected_train
    assert dassl_sample(labels[::-1], 2, rng) == expected_val  # val drawn after train, from the same stream


@pytest.fixture(scope="module")
def split_folder(tmp_path_factory):
    """A folder with train/val/test and a CoOp split file over it (file order differs from the folder's)."""
    root = make_image_folder(tmp_path_factory.mktemp("data") / "coop", per_class=6, splits=("train", "val", "test"))
    classes = ["blue", "green", "red"]
    split = {name: [[f"{name}/{cls}/{path.name}", label, cls]
                    for cls, label in sorted(zip(classes, range(3), strict=True), key=lambda c: -c[1])
                    for path in sorted((root / name / cls).iterdir())]
             for name in ("train", "val", "test")}
    (root / "split_zhou_test.json").write_text(json.dumps(split))
    return root, split


def coop_config(root, **changes) -> DataConfig:
    return DataConfig(dataset=f"imagefolder:{root}", split_file=str(root / "split_zhou_test.json"), **changes)


def test_a_split_file_round_trips(split_folder):
    root, split = split_folder
    dataset = load_dataset(coop_config(root))
    assert dataset.classnames == ["blue", "green", "red"]
    for name, entries in split.items():
        part = dataset.split(name)
        assert [[part.describe(i), int(part.labels[i])] for i in range(len(part))] == [
            [str(root / path), label] for path, label, _ in entries]


def test_coop_shots_are_reproducible_across_processes_and_keep_val_apart(split_folder):
    root, split = split_folder
    code = ("from clipadapt.data import DataConfig, load_dataset; from clipadapt.data.fewshot import fewshot_record; "
            "import json, sys; d = load_dataset(DataConfig(dataset=sys.argv[1], split_file=sys.argv[2], shots=2, "
            "sampler='coop', seed=int(sys.argv[3]))); print(json.dumps(fewshot_record(d)))")
    args = [f"imagefolder:{root}", str(root / "split_zhou_test.json")]
    runs = [json.loads(subprocess.run([sys.executable, "-c", code, *args, seed], capture_output=True, text=True,
                                      check=True, timeout=120).stdout) for seed in ("1", "1", "2")]
    assert runs[0] == runs[1] and runs[0]["train"] != runs[2]["train"]
    here = fewshot_record(load_dataset(coop_config(root, shots=2, sampler="coop", seed=1)))
    assert here == runs[0] and len(here["train"]) == 6 and len(here["val"]) == 6  # 2 per class; val min(2, 4)
    test_items = {str(root / path) for path, _, _ in split["test"]}
    val_items = {str(root / path) for path, _, _ in split["val"]}
    assert {item for item, _ in here["val"]} <= val_items and not {item for item, _ in here["val"]} & test_items


def test_a_run_writes_its_images_and_a_fewshot_file_reuses_them(split_folder, tiny_clip_dir, tmp_path):
    root, _ = split_folder
    experiment = load_experiment("linear-probe", None, [
        f"model.spec={tiny_clip_dir}", "model.device=cpu", f"data.dataset=imagefolder:{root}",
        f"data.split_file={root / 'split_zhou_test.json'}", "data.shots=2", "data.sampler=coop", "data.seed=3",
        "data.num_workers=0", f"run.out={tmp_path / 'run'}", "run.samples=0"])
    run_training(experiment)
    written = json.loads((tmp_path / "run" / "fewshot.json").read_text())
    assert written["shots"] == 2 and written["seed"] == 3 and written["sampler"] == "coop"
    reused = load_dataset(coop_config(root, fewshot_file=str(tmp_path / "run" / "fewshot.json"), seed=9))
    assert fewshot_record(reused)["train"] == written["train"] and fewshot_record(reused)["val"] == written["val"]


def test_bad_split_and_fewshot_files_are_one_line_errors(split_folder, tmp_path):
    root, split = split_folder
    missing = dict(split, test=split["test"] + [["test/red/nowhere.png", 2, "red"]])
    (tmp_path / "missing.json").write_text(json.dumps(missing))
    with pytest.raises(DataError, match=r"1 test images are missing under .*nowhere.png"):
        load_dataset(DataConfig(dataset=f"imagefolder:{root}", split_file=str(tmp_path / "missing.json")))
    clash = dict(split, val=[[split["val"][0][0], 0, "purple"]])
    (tmp_path / "clash.json").write_text(json.dumps(clash))
    with pytest.raises(DataError, match="label 0 is both 'blue' and 'purple'"):
        load_dataset(DataConfig(dataset=f"imagefolder:{root}", split_file=str(tmp_path / "clash.json")))
    other = {"dataset": "imagefolder:/elsewhere", "shots": 1, "train": []}
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(ConfigError, match="is for dataset 'imagefolder:/elsewhere', not"):
        load_dataset(coop_config(root, fewshot_file=str(tmp_path / "other.json")))
    with pytest.raises(ConfigError, match="unknown data.sampler 'dassl'; valid choices: random, coop"):
        DataConfig(sampler="dassl")


def test_base_and_new_halves_are_coops_subsample_classes(split_folder):
    """CoOp's subsample_classes after its K-shot draw: base = first ceil(n/2) labels, new = the rest from 0."""
    root, split = split_folder
    full = load_dataset(coop_config(root, shots=2, sampler="coop", seed=1))
    base = load_dataset(coop_config(root, shots=2, sampler="coop", seed=1, subsample="base"))
    new = load_dataset(coop_config(root, shots=2, sampler="coop", seed=1, subsample="new"))
    assert full.classnames == ["blue", "green", "red"]
    assert base.classnames == ["blue", "green"] and new.classnames == ["red"]  # ceil(3 / 2) = 2 base classes
    for name in ("train", "val", "test"):
        whole = full.split(name)
        items = [(whole.describe(i), int(whole.labels[i])) for i in range(len(whole))]
        # base: the all-class draw's images of labels 0 and 1, labels kept; new: label 2 relabelled 0
        assert [(base.split(name).describe(i), int(base.split(name).labels[i]))
                for i in range(len(base.split(name)))] == [it for it in items if it[1] < 2]
        assert [(new.split(name).describe(i), int(new.split(name).labels[i]))
                for i in range(len(new.split(name)))] == [(p, 0) for p, label in items if label == 2]
    base_test = {base.split("test").describe(i) for i in range(len(base.split("test")))}
    assert not base_test & {new.split("test").describe(i) for i in range(len(new.split("test")))}
    with pytest.raises(ConfigError, match="unknown data.subsample 'novel'; valid choices: all, base, new"):
        DataConfig(subsample="novel")


def test_a_fewshot_file_of_base_classes_needs_the_same_half(split_folder, tmp_path):
    from clipadapt.data.fewshot import write_fewshot_file

    root, _ = split_folder
    base = load_dataset(coop_config(root, shots=2, sampler="coop", seed=3, subsample="base"))
    path = write_fewshot_file(tmp_path, base)
    again = load_dataset(coop_config(root, fewshot_file=str(path), subsample="base"))
    assert fewshot_record(again)["train"] == fewshot_record(base)["train"]
    with pytest.raises(ConfigError, match="holds the base classes.*set data.subsample=base"):
        load_dataset(coop_config(root, fewshot_file=str(path)))
