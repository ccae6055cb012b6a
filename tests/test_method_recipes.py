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


def experiment(name, tiny_clip_dir, colour_folder, out, *overrides):
    return load_experiment(name, None, [
        f"model.spec={tiny_clip_dir}", "model.device=cpu", f"data.dataset=imagefolder:{colour_folder}",
        "data.num_workers=0", "train.epochs=3", "train.batch_size=4", "train.patience=1", f"run.out={out}",
        "run.samples=4", *overrides])


def test_methods_declare_what_they_choose_on_validation():
    rows = {row["name"]: row for row in clipadapt.methods()}
    assert rows["linear-probe"]["chooses_on_val"] == ["C"]
    assert rows["tip-adapter"]["chooses_on_val"] == ["alpha", "beta"]
    assert rows["tip-adapter-f"]["chooses_on_val"] == ["epoch", "alpha", "beta"]
    assert rows["lora"]["chooses_on_val"] == ["epoch"]
    result = CliRunner().invoke(app, ["methods", "linear-probe"])
    assert "chooses on validation: C" in result.output


def test_val_free_training_keeps_the_last_epoch_and_records_no_choice(tiny_clip_dir, colour_folder, tmp_path):
    chosen = run_training(experiment("linear-head", tiny_clip_dir, colour_folder, tmp_path / "best",
                                     "linear_head.lr=1e-9"))  # nothing improves: early stopping after epoch 2
    record = chosen.record
    assert record["selection"]["on"] == "val" and record["selection"]["chose"] == ["epoch"]
    assert record["best_epoch"] == 1
    last = run_training(experiment("linear-head", tiny_clip_dir, colour_folder, tmp_path / "last",
                                   "linear_head.lr=1e-9", "train.keep=last"))
    assert last.record["selection"] == {"on": "none", "chose": []}
    assert last.record["best_epoch"] == 3  # every epoch ran (no early stopping) and the last one is kept
    with pytest.raises(ConfigError, match="unknown train.keep 'final'; valid choices: best, last"):
        load_experiment("linear-head", None, ["train.keep=final"])


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


def test_val_free_training_validates_only_for_the_curve(tiny_clip_dir, colour_folder, tmp_path):
    from clipadapt.engine.trainer import validates

    assert [e for e in range(30) if validates("last", e, 0, 30)] == [0, 2, 5, 8, 11, 14, 17, 20, 23, 26, 29]
    assert all(validates("best", e, 0, 30) for e in range(30))
    rows = []
    run_training(experiment("linear-head", tiny_clip_dir, colour_folder, tmp_path / "run", "train.keep=last",
                            "train.epochs=12", "train.patience=0"),
                 callbacks={"epoch_end": [lambda trainer, row: rows.append(row)]})
    validated = [row["epoch"] for row in rows if row["val_acc"] == row["val_acc"]]
    assert len(rows) == 12 and validated == [1, 2, 4, 6, 8, 10, 12]
