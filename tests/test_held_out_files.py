"""Splits compared as a whole: a split file (or a folder) whose test split holds images of train or val, by path, by
link or as a byte-identical copy, is refused in one line naming them, with nothing written."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from typer.testing import CliRunner

from clipadapt.cli import app
from clipadapt.data import DataConfig, load_dataset
from clipadapt.data.base import image_overlap, shared_images
from clipadapt.errors import ConfigError
from tests.helpers import make_image_folder

runner = CliRunner()
CLASSES = ["blue", "green", "red"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """train/val/test with 4 images per class each (no two files alike)."""
    return make_image_folder(tmp_path_factory.mktemp("data") / "coop", per_class=4, splits=("train", "val", "test"))


def entries(root, split: str) -> list[list]:
    return [[f"{split}/{cls}/{path.name}", label, cls] for label, cls in enumerate(CLASSES)
            for path in sorted((root / split / cls).iterdir())]


def write_split_file(root, name: str, **splits) -> str:
    data = {split: entries(root, split) for split in ("train", "val", "test")}
    data.update(splits)
    path = root / name
    path.write_text(json.dumps(data))
    return str(path)


def train_args(root, split_file: str, out, *extra: str) -> list[str]:
    return ["train", "linear-head", "--model", "{model}", "--dataset", f"imagefolder:{root}", "--device", "cpu",
            "--epochs", "1", "--out", str(out), "--set", "data.num_workers=0", "--set",
            f"data.split_file={split_file}", *extra]


def invoke(args: list[str], tiny_clip_dir):
    return runner.invoke(app, [str(tiny_clip_dir) if a == "{model}" else a for a in args])


def test_a_split_file_whose_test_lists_val_images_is_refused(folder, tiny_clip_dir, tmp_path):
    val = entries(folder, "val")
    test = entries(folder, "test")[2:] + val[:2]  # two validation images listed again as test images
    split_file = write_split_file(folder, "leaky.json", test=test)
    out = tmp_path / "run"
    result = invoke(train_args(folder, split_file, out), tiny_clip_dir)
    assert result.exit_code == 2, result.output
    shared = ", ".join(str(folder / e[0]) for e in val[:2])
    assert result.output.strip().splitlines() == [
        f"error: data.split 'test' shares 2 images with val (e.g. {shared}); evaluate on a held-out split; valid "
        f"choices: none (list each image in one split of data.split_file '{split_file}')"]
    assert not out.exists()
    # zero-shot choosing its template set on val refuses it too; choosing nothing, it may evaluate it
    zero_shot = ["zeroshot", "--model", str(tiny_clip_dir), "--dataset", f"imagefolder:{folder}", "--device", "cpu",
                 "-t", "simple", "-t", "clip", "--set", f"data.split_file={split_file}", "--set", "data.num_workers=0"]
    refused = runner.invoke(app, [*zero_shot, "--out", str(tmp_path / "zs")])
    assert refused.exit_code == 2 and len(refused.output.strip().splitlines()) == 1
    assert f"data.split 'test' shares 2 images with val, which chooses the template set (e.g. {shared})" in \
        refused.output
    assert not (tmp_path / "zs").exists()
    chosen_nothing = runner.invoke(app, [*zero_shot, "--out", str(tmp_path / "none"), "--set",
                                         "zeroshot.select_on=none"])
    assert chosen_nothing.exit_code == 0, chosen_nothing.output


def test_the_same_file_through_a_link_and_a_byte_identical_copy_are_shared_images(folder, tiny_clip_dir, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(folder, root)
    os.symlink(root / "train", root / "linked")  # the same files under other paths
    shutil.copyfile(root / "train" / "red" / "train_1.jpg", root / "copy.jpg")  # another file, the same bytes
    test = entries(root, "test")[:-2] + [["linked/green/train_0.png", 1, "green"], ["copy.jpg", 2, "red"]]
    split_file = write_split_file(root, "linked.json", test=test)
    dataset = load_dataset(DataConfig(dataset=f"imagefolder:{root}", split_file=split_file))
    found = image_overlap(dataset.split("test"), dataset.split("train"))
    assert (found.count, found.examples) == (2, [str(root / "linked/green/train_0.png"), str(root / "copy.jpg")])
    assert shared_images(dataset.split("test"), dataset.split("val")) == 0
    assert dataset.held_out_splits() == []
    out = tmp_path / "run"
    result = invoke(train_args(root, split_file, out), tiny_clip_dir)
    assert result.exit_code == 2 and "data.split 'test' shares 2 images with train (e.g. " in result.output
    assert len(result.output.strip().splitlines()) == 1 and not out.exists()


def test_a_validation_split_holding_training_images_is_refused(folder, tiny_clip_dir, tmp_path):
    train = entries(folder, "train")
    split_file = write_split_file(folder, "val-in-train.json", val=entries(folder, "val")[1:] + train[:1])
    out = tmp_path / "run"
    result = invoke(train_args(folder, split_file, out), tiny_clip_dir)
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        f"error: the val split shares 1 images with train (e.g. {folder / train[0][0]}): validation would choose on "
        f"training images; list each image in one split of data.split_file '{split_file}'"]
    assert not out.exists()


def test_an_honest_split_file_trains(folder, tiny_clip_dir, tmp_path):
    split_file = write_split_file(folder, "honest.json")
    dataset = load_dataset(DataConfig(dataset=f"imagefolder:{folder}", split_file=split_file))
    assert dataset.held_out_splits() == ["test"]
    result = invoke(train_args(folder, split_file, tmp_path / "run"), tiny_clip_dir)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]["n"] == 12


def test_relabelled_splits_are_still_compared(tmp_path):
    """--classes in another order and data.subsample wrap every split's source separately: the splits of one folder
    still share its images (before, each wrapper counted as a source of its own and shared nothing)."""
    root = make_image_folder(tmp_path / "flat", per_class=8)
    for changes in ({"subsample": "base"}, {"classes": ["red", "green", "blue"]}):
        dataset = load_dataset(DataConfig(dataset=f"imagefolder:{root}", **changes))
        assert shared_images(dataset.split("all"), dataset.split("train")) > 0
        with pytest.raises(ConfigError, match=r"data.split 'all' shares \d+ images with train"):
            dataset.check_held_out("all")


def test_copies_are_compared_by_content_only_within_the_budget(folder, tmp_path, monkeypatch):
    import clipadapt.data.base as base

    root = tmp_path / "data"
    shutil.copytree(folder, root)
    shutil.copyfile(root / "val" / "blue" / "val_2.png", root / "copy.png")
    os.link(root / "val" / "red" / "val_3.jpg", root / "hard-link.jpg")
    (root / "empty-val.jpg").write_bytes(b"")  # two empty files: alike, but no image (the loader skips them)
    (root / "empty-test.jpg").write_bytes(b"")
    test = entries(root, "test") + [["copy.png", 0, "blue"], ["hard-link.jpg", 2, "red"], ["empty-test.jpg", 0, "blue"]]
    split_file = write_split_file(root, "copies.json", test=test,
                                  val=entries(root, "val") + [["empty-val.jpg", 0, "blue"]])
    for budget, count in ((base.CONTENT_HASH_BUDGET, 2), (0, 1)):  # over budget: the hard link is still the file
        monkeypatch.setattr(base, "CONTENT_HASH_BUDGET", budget)
        dataset = load_dataset(DataConfig(dataset=f"imagefolder:{root}", split_file=split_file))
        assert shared_images(dataset.split("test"), dataset.split("val")) == count
