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


def dassl_generate_fewshot_dataset(data_source: list, num_shots: int, repeat: bool = False) -> list:
    """Dassl's generate_fewshot_dataset for one data source, with its split_dataset_by_label, as CoOp runs it
    (module-level random after random.seed(seed); CoOp passes no repeat): KaiyangZhou/Dassl.pytorch@
    c61a1b570ac6333bd50fb5ae06aea59002fb20bb dassl/data/datasets/base_dataset.py:167-207 and 211-223. An item is
    (position, label) for Dassl's Datum."""
    tracker = defaultdict(list)
    for item in data_source:
        tracker[item[1]].append(item)
    dataset = []
    for _label, items in tracker.items():
        if len(items) >= num_shots:
            sampled_items = random.sample(items, num_shots)
        else:
            if repeat:  # noqa: SIM108 (as Dassl writes it)
                sampled_items = random.choices(items, k=num_shots)
            else:
                sampled_items = items
        dataset.extend(sampled_items)
    return [position for position, _ in dataset]


def dassl_reference(labels: list[int], shots: int, repeat: bool = False) -> list[int]:
    return dassl_generate_fewshot_dataset(list(enumerate(labels)), shots, repeat)


def uneven_labels(seed: int) -> list[int]:
    """Seven classes of 1 to 9 items (several short of K), interleaved in a seeded order."""
    sizes = [5, 2, 9, 1, 4, 7, 3]
    labels = [label for label, size in enumerate(sizes) for _ in range(size)]
    random.Random(100 + seed).shuffle(labels)
    return labels


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 7])
@pytest.mark.parametrize("shots", [1, 2, 4, 8, 16])
def test_the_coop_draw_is_dassls_for_every_class_size(seed, shots):
    """Train K then val min(K, 4) (and prolip-val's K) from one stream, as CoOp's datasets/*.py call Dassl."""
    train_labels, val_labels = uneven_labels(seed), uneven_labels(seed + 50)
    for val_shots in (min(shots, 4), shots):
        random.seed(seed)
        expected_train = dassl_reference(train_labels, shots)
        expected_val = dassl_reference(val_labels, val_shots)
        rng = random.Random(seed)
        assert dassl_sample(train_labels, shots, rng) == expected_train
        assert dassl_sample(val_labels, val_shots, rng) == expected_val  # val drawn after train, the same stream
    random.seed(seed)  # ProLIP's copy of the function repeats short classes (repeat=True): still the same calls
    assert dassl_sample(train_labels, shots, random.Random(seed), repeat=True) == dassl_reference(
        train_labels, shots, repeat=True)


@pytest.mark.parametrize("seed", [0, 1, 2, 5])
def test_a_short_class_keeps_all_its_images_and_draws_nothing(seed):
    labels = [3, 1, 1, 3, 0, 2, 1, 0, 3, 3, 1, 0, 2, 0, 1, 3, 2]  # class 2 (3 items) is short of 4
    drawn = dassl_sample(labels, 4, random.Random(seed))
    by_class = defaultdict(list)
    for position in drawn:
        by_class[labels[position]].append(position)
    assert by_class[2] == [5, 12, 16]  # all of them, once, in split order (Dassl's repeat=False)
    assert all(len(positions) == 4 == len(set(positions)) for label, positions in by_class.items() if label != 2)
    rng = random.Random(seed)  # the classes in order of first appearance: 3, 1, 0, 2; class 2 consumes nothing
    tracker = defaultdict(list)
    for position, label in enumerate(labels):
        tracker[label].append(position)
    expected = [*rng.sample(tracker[3], 4), *rng.sample(tracker[1], 4), *rng.sample(tracker[0], 4), *tracker[2]]
    assert drawn == expected
    assert dassl_sample(labels, 4, random.Random(seed), repeat=True) != drawn  # the old draw repeated class 2


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


def split_file_run(model, method: str, root, out, *extra: str) -> tuple[dict, dict]:
    """A run on the CoOp split file (no data.sampler unless ``extra`` sets it): its config.yaml and fewshot.json."""
    import yaml

    run_training(load_experiment(method, None, [
        f"model.spec={model}", "model.device=cpu", f"data.dataset=imagefolder:{root}",
        f"data.split_file={root / 'split_zhou_test.json'}", "data.seed=3", "data.num_workers=0", f"run.out={out}",
        "run.samples=0", *extra]))
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert json.loads((out / "metrics.json").read_text())["config"]["data"] == config["data"]
    return config, json.loads((out / "fewshot.json").read_text())


def test_a_run_writes_its_images_and_a_fewshot_file_reuses_them(split_folder, tiny_clip_dir, tmp_path):
    """A CoOp split file without data.sampler draws with coop and the run records it."""
    root, _ = split_folder
    config, written = split_file_run(tiny_clip_dir, "linear-probe", root, tmp_path / "run", "data.shots=2")
    assert config["data"]["sampler"] == "coop" and config["data"]["val_shots"] is None  # CoOp's min(K, 4)
    assert written["shots"] == 2 and written["seed"] == 3 and written["sampler"] == "coop"
    assert written == fewshot_record(load_dataset(coop_config(root, shots=2, sampler="coop", seed=3)))
    reused = load_dataset(coop_config(root, fewshot_file=str(tmp_path / "run" / "fewshot.json"), seed=9))
    assert fewshot_record(reused)["train"] == written["train"] and fewshot_record(reused)["val"] == written["val"]


def test_prolip_val_asks_for_k_validation_shots_the_others_for_coops(split_folder):
    from clipadapt.data.registry import resolved_data
    from clipadapt.methods import METHODS

    root, _ = split_folder
    drawn = {}
    for method, per_class in (("prolip-val", 5), ("prolip", 4), ("linear-probe", 4), ("coop", 4)):
        data = resolved_data(coop_config(root, shots=5, seed=3), METHODS.get(method).method_class.validation_shots)
        dataset = load_dataset(data)
        assert sorted(dataset.split("val").labels.tolist()) == [0] * per_class + [1] * per_class + [2] * per_class
        drawn[method] = fewshot_record(dataset)
    assert len({json.dumps(record["train"]) for record in drawn.values()}) == 1  # val is drawn after train
    first = drawn["linear-probe"]["val"][0][1]  # the split file's first class: the same stream state for both
    assert [item for item, label in drawn["linear-probe"]["val"] if label == first] == [
        item for item, label in drawn["prolip-val"]["val"] if label == first][:4]  # sample(items, 5)[:4]


@pytest.mark.slow
def test_prolip_val_validates_on_k_shots_and_an_explicit_sampler_wins(split_folder, tiny_clip_dir, tmp_path):
    """prolip-val's val is K per class (ProLIP's main.py), the other methods' CoOp's min(K, 4), on the same training
    images; data.sampler=random given keeps its own draw (val whole) and says so."""
    root, split = split_folder
    grid = ["prolip.lrs=[0.001]", "prolip.lams=[0.1,0.0]", "prolip.iterations=3"]
    prolip, prolip_shots = split_file_run(tiny_clip_dir, "prolip-val", root, tmp_path / "prolip", "data.shots=5",
                                          *grid)
    probe, probe_shots = split_file_run(tiny_clip_dir, "linear-probe", root, tmp_path / "probe", "data.shots=5")
    assert prolip["data"]["sampler"] == probe["data"]["sampler"] == "coop"
    assert prolip["data"]["val_shots"] == 5 and probe["data"]["val_shots"] is None
    assert (prolip_shots["val_shots"], probe_shots["val_shots"]) == (5, 4)
    for written, per_class in ((prolip_shots, 5), (probe_shots, 4)):
        assert sorted(label for _, label in written["val"]) == sorted([0, 1, 2] * per_class)
    assert prolip_shots["train"] == probe_shots["train"] and len(probe_shots["train"]) == 15
    given, given_shots = split_file_run(tiny_clip_dir, "linear-probe", root, tmp_path / "random", "data.shots=5",
                                        "data.sampler=random")
    assert given["data"]["sampler"] == given_shots["sampler"] == "random" and given_shots["val_shots"] is None
    assert len(given_shots["val"]) == len(split["val"]) == 18  # the random sampler keeps val whole


def test_coops_datasets_draw_with_coop_and_the_others_keep_random():
    from clipadapt.data.coop import COOP_DATASETS
    from clipadapt.data.registry import resolve_sampler, resolved_data

    for name in [*COOP_DATASETS, "flowers102"]:
        assert resolve_sampler(DataConfig(dataset=name)) == "coop", name
        assert resolve_sampler(DataConfig(dataset=name, sampler="random")) == "random"
    for name in ("world:shapes-novel", "world:colour", "digits", "cub200", "cifar10", "imagefolder:/x", "hf:a/b"):
        assert resolve_sampler(DataConfig(dataset=name)) == "random", name
    assert resolve_sampler(DataConfig(dataset="imagefolder:/x", split_file="split.json")) == "coop"
    world = resolved_data(DataConfig(dataset="world:shapes", shots=8), lambda k: k)
    assert (world.sampler, world.val_shots) == ("random", None)  # a method's val shots only under coop
    pets = resolved_data(DataConfig(dataset="oxford_pets", shots=8), lambda k: k)
    assert (pets.sampler, pets.val_shots) == ("coop", 8)
    assert resolved_data(DataConfig(dataset="oxford_pets", shots=8, val_shots=2), lambda k: k).val_shots == 2
    with pytest.raises(ConfigError, match="data.val_shots must be positive, got 0"):
        DataConfig(val_shots=0)


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
