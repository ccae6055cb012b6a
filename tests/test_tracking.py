"""``train.log_with=tensorboard``: per-step and per-epoch scalars through Accelerate's tracker, read back."""

from __future__ import annotations

import csv

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # the dev extra has it
from typer.testing import CliRunner

from clipadapt.classification.training import run_training
from clipadapt.cli import app
from clipadapt.errors import ConfigError
from tests.test_methods import experiment


def scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run_dir / "logs"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def history(run_dir) -> list[dict[str, float]]:
    with open(run_dir / "history.csv") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def test_tensorboard_logs_steps_and_epochs_that_match_the_history(tiny_clip_dir, colour_folder, tmp_path):
    out = tmp_path / "run"
    rows = []  # the history rows as the engine made them (history.csv rounds)
    run_training(experiment("full-ft", tiny_clip_dir, colour_folder, out, "train.log_with=tensorboard"),
                 {"epoch_end": [lambda trainer, row: rows.append(row)]})
    logged = scalars(out)
    assert len(rows) == len(history(out)) == 3
    steps_per_epoch = len(logged["step/train_loss"]) // len(rows)
    assert steps_per_epoch > 1 and len(logged["step/train_loss"]) == steps_per_epoch * len(rows)
    assert [s for s, _ in logged["step/train_loss"]] == list(range(1, steps_per_epoch * len(rows) + 1))
    for tag in ("step/train_acc", "step/lr/head", "step/lr/backbone", "epoch/train_loss", "epoch/train_acc",
                "epoch/val_loss", "epoch/val_acc", "epoch/lr"):
        assert tag in logged, tag
    # the epoch rows are the history, logged at the epoch's last step
    for i, row in enumerate(rows):
        end = (i + 1) * steps_per_epoch
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
            assert logged[f"epoch/{key}"][i] == (end, pytest.approx(row[key], rel=1e-5, abs=1e-7))
        # the epoch's lr is the first group's lr after its last step
        assert logged["step/lr/head"][end - 1][1] == pytest.approx(row["lr"], rel=1e-6, abs=1e-9)
    # the steps' losses, weighted by their batch sizes (4, the last one the rest), average to the epoch's loss
    from clipadapt.data import DataConfig, load_dataset

    images = len(load_dataset(DataConfig(dataset=f"imagefolder:{colour_folder}")).split("train"))
    sizes = [4] * (steps_per_epoch - 1) + [images - 4 * (steps_per_epoch - 1)]
    for i, row in enumerate(rows):
        losses = [v for _, v in logged["step/train_loss"][i * steps_per_epoch:(i + 1) * steps_per_epoch]]
        mean = sum(v * n for v, n in zip(losses, sizes, strict=True)) / images
        assert mean == pytest.approx(row["train_loss"], rel=1e-4)
    # after one warmup step (10% of 12) the cosine schedule falls from full_ft.lr to zero; the backbone at a tenth
    lrs = [v for _, v in logged["step/lr/head"]]
    assert lrs[0] == pytest.approx(1e-4) and lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))
    backbone = [v for _, v in logged["step/lr/backbone"]]
    assert backbone == pytest.approx([v / 10 for v in lrs], rel=1e-5)
    # the saved config is the hyperparameters
    hparams = next((out / "logs").rglob("hparams.yml"))
    values = yaml.safe_load(hparams.read_text())
    assert values["train.log_with"] == "tensorboard" and values["method"] == "full-ft"
    assert values["run.out"] == str(out)


def test_resume_continues_the_step_axis(tiny_clip_dir, colour_folder, tmp_path):
    out = tmp_path / "run"

    def interrupt(trainer, row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    settings = ("train.log_with=tensorboard",)
    with pytest.raises(KeyboardInterrupt):
        run_training(experiment("linear-head", tiny_clip_dir, colour_folder, out, *settings),
                     {"epoch_end": [interrupt]})
    first = scalars(out)
    run_training(experiment("linear-head", tiny_clip_dir, colour_folder, out, "run.resume=true", *settings))
    logged = scalars(out)
    per_epoch = len(first["step/train_loss"])
    assert [s for s, _ in logged["epoch/val_acc"]] == [per_epoch, 2 * per_epoch, 3 * per_epoch]
    assert sorted({s for s, _ in logged["step/train_loss"]}) == list(range(1, 3 * per_epoch + 1))


def test_no_tracker_writes_no_logs(tiny_clip_dir, colour_folder, tmp_path):
    run_training(experiment("linear-head", tiny_clip_dir, colour_folder, tmp_path / "run"))
    assert not (tmp_path / "run" / "logs").exists()


def test_unknown_or_missing_tracker_is_refused_before_anything_is_written(tiny_clip_dir, colour_folder, tmp_path,
                                                                           monkeypatch):
    with pytest.raises(ConfigError, match="unknown train.log_with 'wandb'; valid choices: none, tensorboard"):
        experiment("linear-head", tiny_clip_dir, colour_folder, tmp_path / "a", "train.log_with=wandb")
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "is_tensorboard_available", lambda: False)
    out = tmp_path / "b"
    result = CliRunner().invoke(app, ["train", "linear-head", "--model", str(tiny_clip_dir), "--dataset",
                                      f"imagefolder:{colour_folder}", "--out", str(out), "--set",
                                      "train.log_with=tensorboard"])
    assert result.exit_code == 2
    assert "train.log_with=tensorboard needs the tensorboard package: pip install 'clipadapt[tensorboard]'" in \
        result.output
    assert "Traceback" not in result.output and not out.exists()
