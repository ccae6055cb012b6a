"""What a method's recipe chooses on validation (declared, listed and recorded), val-free training
(``train.keep=last``), and the frozen head's prompt (``train.head_templates``)."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

import clipadapt
from clipadapt.classification.experiment import build_method, load_experiment
from clipadapt.classification.training import run_training
from clipadapt.cli import app
from clipadapt.data import DataConfig, load_dataset
from clipadapt.engine.zeroshot import build_zero_shot_head
from clipadapt.errors import ConfigError
from clipadapt.models import load_model
from tests.helpers import make_image_folder


def experiment(name, tiny_clip_dir, colour_folder, out, *overrides):
    return load_experiment(name, None, [
        f"model.spec={tiny_clip_dir}", "model.device=cpu", f"data.dataset=imagefolder:{colour_folder}",
        "data.num_workers=0", "train.epochs=3", "train.batch_size=4", "train.patience=1", f"run.out={out}",
        "run.samples=4", *overrides])


def test_methods_declare_what_they_choose_on_validation():
    rows = {row["name"]: row for row in clipadapt.methods()}
    assert rows["linear-probe"]["chooses_on_val"] == ["C"]
    assert rows["tip-adapter"]["chooses_on_val"] == ["alpha,beta"]
    assert rows["tip-adapter-f"]["chooses_on_val"] == ["epoch", "alpha,beta"]
    assert rows["lora"]["chooses_on_val"] == ["epoch"]
    assert rows["prolip-val"]["chooses_on_val"] == ["lr,lambda"]
    assert rows["2sfs"]["chooses_on_val"] == rows["clip-lora"]["chooses_on_val"] == []
    result = CliRunner().invoke(app, ["methods", "linear-probe"])
    assert "chooses on validation: C" in result.output


def test_val_free_training_keeps_the_last_epoch_and_records_no_choice(tiny_clip_dir, colour_folder, tmp_path):
    chosen = run_training(experiment("linear-head", tiny_clip_dir, colour_folder, tmp_path / "best",
                                     "linear_head.lr=1e-9"))  # nothing improves: early stopping after epoch 2
    record = chosen.record
    assert record["selection"]["on"] == "val" and record["selection"]["chose"] == ["epoch"]
    selection = record["selection"]
    assert selection["choices"] == [{"name": "epoch", "value": 1, "split": "val", "images": 3, "candidates": 2,
                                     "val_acc": selection["val_acc"], "val_loss": selection["val_loss"]}]
    assert record["selection"]["validation"] == {"split": "val", "images": 3, "carved_from": "train"}
    assert record["best_epoch"] == 1
    last = run_training(experiment("linear-head", tiny_clip_dir, colour_folder, tmp_path / "last",
                                   "linear_head.lr=1e-9", "train.keep=last"))
    assert {k: last.record["selection"][k] for k in ("on", "chose", "choices")} == {"on": "none", "chose": [],
                                                                                     "choices": []}
    assert last.record["best_epoch"] == 3  # every epoch ran (no early stopping) and the last one is kept
    with pytest.raises(ConfigError, match="unknown train.keep 'final'; valid choices: best, last"):
        load_experiment("linear-head", None, ["train.keep=final"])


def test_a_run_that_chooses_nothing_trains_on_every_training_image(tiny_clip_dir, colour_folder, tmp_path):
    """colour_folder has no val/: a run that chooses (keep=best) carves a sixth of train for validation; one that
    chooses nothing (keep=last) carves nothing: it trains on all 18 images and records that nothing was validated."""
    trained_on = {}

    def count(name):
        return {"epoch_end": [lambda trainer, row: trained_on.setdefault(name, len(trainer.data.split("train")))]}

    chooses = run_training(experiment("linear-head", tiny_clip_dir, colour_folder, tmp_path / "best"), count("best"))
    free = run_training(experiment("linear-head", tiny_clip_dir, colour_folder, tmp_path / "last", "train.keep=last"),
                        count("last"))
    assert len(list(colour_folder.rglob("*.*"))) == 24  # a flat folder: 6 carved as test (fixed), 18 for training
    assert trained_on == {"best": 15, "last": 18}
    assert chooses.record["selection"]["validation"] == {"split": "val", "images": 3, "carved_from": "train"}
    assert free.record["selection"]["validation"] == {
        "split": None, "reason": "the method chooses nothing and the dataset has no validation split: every "
                                 "training image trains, nothing is validated"}
    assert all("val_acc" not in row for row in csv_rows(free.run_dir / "history.csv"))  # nothing validated
    assert all(row["val_acc"] for row in csv_rows(chooses.run_dir / "history.csv"))


def test_with_a_val_split_a_val_free_run_still_draws_its_curve(tiny_clip_dir, tmp_path):
    folder = make_image_folder(tmp_path / "data", per_class=4, splits=("train", "val", "test"))
    free = run_training(experiment("linear-head", tiny_clip_dir, folder, tmp_path / "run", "train.keep=last"))
    assert free.record["selection"]["validation"] == {"split": "val", "images": 12, "used_for": "the validation "
                                                      "curve only: nothing is chosen on it"}
    assert all(row["val_acc"] != "" for row in csv_rows(free.run_dir / "history.csv"))


def test_head_templates_build_the_head_as_zero_shot_with_that_prompt(tiny_clip_dir, colour_folder):
    dataset = load_dataset(DataConfig(dataset=f"imagefolder:{colour_folder}", num_workers=0))
    bundle = load_model(str(tiny_clip_dir))
    template = "This is a photo of a {}"
    method = build_method(load_experiment("linear-head", None, [f"train.head_templates={template}"]), bundle, dataset)
    expected = build_zero_shot_head(bundle, dataset.classnames, [template])
    assert torch.allclose(method.head.weight, expected.float(), atol=1e-6)
    default = build_method(load_experiment("linear-head", None, []), bundle, dataset)
    assert not torch.allclose(default.head.weight, expected.float(), atol=1e-3)  # the prompt changed the head
    coop_like = build_method(load_experiment("clip-adapter", None, ["train.head_templates=simple"]), bundle, dataset)
    simple = build_zero_shot_head(bundle, dataset.classnames, ["a photo of a {}."])
    assert torch.allclose(coop_like.head.weight, simple.float(), atol=1e-6)


def test_an_unknown_head_template_is_one_line(tiny_clip_dir, colour_folder, tmp_path):
    result = CliRunner().invoke(app, ["train", "linear-head", "--model", str(tiny_clip_dir), "--dataset",
                                      f"imagefolder:{colour_folder}", "--set", "train.head_templates=nosuch",
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "unknown template set 'nosuch'; valid choices:" in result.output
    assert not (tmp_path / "run").exists()


def test_an_iteration_budget_stops_part_way_through_an_epoch(tiny_clip_dir, colour_folder, tmp_path):
    rows = []
    run_training(experiment("linear-head", tiny_clip_dir, colour_folder, tmp_path / "run", "train.steps=5",
                            "train.epochs=50", "train.patience=0"),
                 callbacks={"epoch_end": [lambda trainer, row: rows.append(row)]})
    dataset = load_dataset(DataConfig(dataset=f"imagefolder:{colour_folder}", num_workers=0))
    per_epoch = -(-len(dataset.split("train")) // 4)
    assert per_epoch < 5 and len(rows) == -(-5 // per_epoch)  # epochs enough for 5 steps, not train.epochs
    assert rows[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # the cosine schedule ends exactly at step 5
    with pytest.raises(ConfigError, match="train.steps must be positive"):
        load_experiment("linear-head", None, ["train.steps=0"])


def test_val_free_training_validates_only_for_the_curve(tiny_clip_dir, tmp_path):
    from clipadapt.engine.trainer import validates

    assert [e for e in range(30) if validates("last", e, 0, 30)] == [0, 2, 5, 8, 11, 14, 17, 20, 23, 26, 29]
    assert all(validates("best", e, 0, 30) for e in range(30))
    folder = make_image_folder(tmp_path / "data", per_class=4, splits=("train", "val", "test"))
    rows = []
    run_training(experiment("linear-head", tiny_clip_dir, folder, tmp_path / "run", "train.keep=last",
                            "train.epochs=12", "train.patience=0"),
                 callbacks={"epoch_end": [lambda trainer, row: rows.append(row)]})
    validated = [row["epoch"] for row in rows if row["val_acc"] == row["val_acc"]]
    assert len(rows) == 12 and validated == [1, 2, 4, 6, 8, 10, 12]


def csv_rows(path) -> list[dict]:
    import csv

    with open(path) as f:
        return list(csv.DictReader(f))
