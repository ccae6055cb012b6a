"""Forgetting (``eval.control``, classification/forgetting.py): zero-shot accuracy on a control dataset with the
frozen model before training and the run's adapted towers after it, recorded, reported, and refused when bad."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from clipadapt.classification import training
from clipadapt.classification.experiment import load_experiment
from clipadapt.classification.training import run_training
from clipadapt.classification.zeroshot import ZeroShotExperiment, run_zero_shot
from clipadapt.cli import app
from clipadapt.config import apply_overrides
from clipadapt.methods import METHODS, list_methods
from clipadapt.models import load_model
from tests.helpers import make_image_folder

runner = CliRunner()
# what the runs need to stay small on the tiny CLIP (as tests/test_selection_record.py)
SECTION_SETTINGS = {"maple": ["maple.depth=2"], "prolip": ["prolip.iterations=10", "prolip.lrs=[0.01,0.001]",
                                                           "prolip.lams=[0.0]"], "lp_pp": ["lp_pp.iterations=10"]}


@pytest.fixture(scope="module")
def control_folder(tmp_path_factory):
    """A control dataset with only a test split: other images than the training folder's."""
    return make_image_folder(tmp_path_factory.mktemp("control") / "control", per_class=8, splits=("test",), seed=7)


def settings(name, tiny_clip_dir, colour_folder, control_folder, out, *extra, tiny_resnet_dir=None):
    section = METHODS.get(name).section
    offline = [f"baseline.classifier={tiny_resnet_dir}"] if section == "baseline" else []
    return [f"model.spec={tiny_clip_dir}", "model.device=cpu", f"data.dataset=imagefolder:{colour_folder}",
            "data.num_workers=0", "train.epochs=2", "train.batch_size=8", f"run.out={out}", "run.samples=0",
            f"eval.control=imagefolder:{control_folder}", *offline, *SECTION_SETTINGS.get(section, []), *extra]


def train(name, *args, **kwargs):
    return run_training(load_experiment(name, None, settings(name, *args, **kwargs))).record


def test_before_is_the_frozen_models_zero_shot_and_a_head_keeps_it(tiny_clip_dir, colour_folder, control_folder,
                                                                   tmp_path):
    record = train("linear-probe", tiny_clip_dir, colour_folder, control_folder, tmp_path / "probe")
    control = record["control"]
    zero_shot = apply_overrides(ZeroShotExperiment(), [
        f"model.spec={tiny_clip_dir}", "model.device=cpu", f"data.dataset=imagefolder:{control_folder}",
        "data.num_workers=0", "zeroshot.templates=[simple]", f"run.out={tmp_path / 'zeroshot'}", "run.samples=0"])
    frozen = run_zero_shot(zero_shot).record["metrics"]
    assert control["dataset"] == f"imagefolder:{control_folder}" and control["split"] == "test"
    assert control["images"] == 24 and control["classes"] == 3
    assert control["before"] == frozen["acc1"] and control["before_metrics"] == frozen
    # a head on frozen features: the towers are the frozen model's, so after is before, computed once
    assert control["towers"] == "unchanged" and control["after"] == control["before"] and control["kept"] == 1.0
    assert control["agreement"] == 1.0
    saved = json.loads((tmp_path / "probe" / "metrics.json").read_text())
    assert saved["control"] == control


@pytest.mark.slow
@pytest.mark.parametrize("name, extra", [("lora", ["lora.lr=0.05", "train.epochs=4"]),
                                         ("full-ft", ["full_ft.lr=0.05", "full_ft.backbone_lr_scale=1",
                                                      "train.epochs=4"])])
def test_a_method_that_changes_the_towers_is_measured_after_training(name, extra, tiny_clip_dir, colour_folder,
                                                                    control_folder, tmp_path):
    record = train(name, tiny_clip_dir, colour_folder, control_folder, tmp_path / name, *extra)
    control = record["control"]
    assert control["towers"] == "adapted"
    # the control holds the training classes (other images): these towers learned them, and their zero-shot accuracy
    # there moved from 2 in 3 images to all 24 (on a control of other classes it would drop: docs/methods.md)
    assert control["before"] == pytest.approx(2 / 3) and control["after"] == 1.0
    assert control["after_loss"] < control["before_loss"] and control["agreement"] == pytest.approx(2 / 3)
    assert control["kept"] == round(control["after"] / control["before"], 6)
    assert control["after"] == control["after_metrics"]["acc1"]
    # the test split's own result is unaffected by the control (the same run without one)
    plain = run_training(load_experiment(name, None, settings(
        name, tiny_clip_dir, colour_folder, control_folder, tmp_path / f"{name}-plain", *extra, "eval.control=null")))
    assert plain.record["metrics"] == record["metrics"] and "control" not in plain.record


def _captured_method(monkeypatch) -> list:
    built = []

    def capture(*args, **kwargs):
        built.append(build(*args, **kwargs))
        return built[-1]

    build = training.build_method
    monkeypatch.setattr(training, "build_method", capture)
    return built


@torch.no_grad()
def _tower_outputs(bundle, pixels) -> tuple[torch.Tensor, torch.Tensor]:
    return bundle.encode_image(pixels).float(), bundle.encode_text(["a photo of a red.", "a blue thing"]).float()


@pytest.mark.slow
@pytest.mark.usefixtures("figures_built_not_rasterised")  # no figure is read here: test_methods.py reads them
@pytest.mark.parametrize("name", list_methods())
def test_changes_towers_says_what_training_did_to_the_towers(name, tiny_clip_dir, colour_folder, control_folder,
                                                             tiny_resnet_dir, tmp_path, monkeypatch):
    """Every registered method: a method that says it leaves the towers frozen computes the frozen model's features
    after training, bit for bit (so its control after == before without computing it twice); one that says it
    changes them computes other features, and its control is measured through them."""
    built = _captured_method(monkeypatch)
    extra = [f"{METHODS.get(name).section}.lr=0.01"] if "lr" in METHODS.get(name).config_class.__dataclass_fields__ \
        else []
    record = train(name, tiny_clip_dir, colour_folder, control_folder, tmp_path / "run", *extra,
                   tiny_resnet_dir=tiny_resnet_dir)
    method, control = built[-1], record["control"]
    if method.control_refusal is not None:  # not a CLIP model: nothing to measure, and the record says why
        assert control["before"] is None and control["after"] is None and control["reason"] == method.control_refusal
        return
    pixels = torch.randn(2, 3, *method.bundle.preprocess.config.crop, generator=torch.Generator().manual_seed(0))
    frozen = _tower_outputs(load_model(str(tiny_clip_dir), device="cpu"), pixels)
    with method.adapted_towers() as towers:
        adapted = _tower_outputs(towers, pixels)
    same = all(torch.equal(a, b) for a, b in zip(adapted, frozen, strict=True))
    assert same != method.changes_towers, f"{name}: changes_towers={method.changes_towers}"
    assert control["towers"] == ("adapted" if method.changes_towers else "unchanged")
    if not method.changes_towers:
        assert control["after_metrics"] == control["before_metrics"]


@pytest.mark.slow
def test_compare_shows_control_accuracy_kept(tiny_clip_dir, colour_folder, control_folder, tmp_path):
    out = tmp_path / "compare"
    result = runner.invoke(app, ["compare", "--model", str(tiny_clip_dir), "--dataset",
                                 f"imagefolder:{colour_folder}", "--methods", "linear-probe,bitfit", "--out", str(out),
                                 "--device", "cpu", "--set", "train.epochs=1", "--set", "data.num_workers=0",
                                 "--set", f"eval.control=imagefolder:{control_folder}", "--set", "run.samples=0"],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "control kept" in result.output
    report = (out / "report.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| model |"))
    assert header.rstrip(" |").endswith("control accuracy kept")
    rows = {line.split(" | ")[1]: line.rstrip(" |").rsplit(" | ", 1)[-1] for line in report.splitlines()
            if line.startswith("| ") and not line.startswith("| model |")}
    kept = json.loads((out / "tiny-clip" / "bitfit-seed0" / "metrics.json").read_text())["control"]["kept"]
    assert rows["linear-probe"] == "1.000" and rows["bitfit"] == f"{kept:.3f}"
    assert [v for k, v in rows.items() if k.startswith("zeroshot")] == ["-"]  # a zero-shot run trains nothing
    assert "control accuracy kept: zero-shot accuracy on the control dataset" in report


def test_train_prints_and_the_python_api_reads_the_control(tiny_clip_dir, colour_folder, control_folder, tmp_path):
    import clipadapt

    out = tmp_path / "bitfit"
    result = runner.invoke(app, ["train", "bitfit", "--model", str(tiny_clip_dir), "--dataset",
                                 f"imagefolder:{colour_folder}", "--epochs", "1", "--out", str(out), "--set",
                                 "data.num_workers=0", "--set", f"eval.control=imagefolder:{control_folder}"])
    assert result.exit_code == 0, result.output
    assert "control accuracy kept:" in result.output
    run = clipadapt.load_run(out)
    assert run.control == run.record["control"] and run.control["towers"] == "adapted"
    assert clipadapt.load_run(tmp_path / "bitfit").control["before"] > 0


@pytest.mark.parametrize("setting, message", [
    ("eval.control=no-such-data", "eval.control: unknown dataset 'no-such-data'; valid choices: "),
    ("eval.control_split=val", "has no split 'val'; valid choices: test"),
])
def test_a_bad_control_is_one_line_and_writes_nothing(setting, message, tiny_clip_dir, colour_folder,
                                                      control_folder, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "lora", "--model", str(tiny_clip_dir), "--dataset",
                                 f"imagefolder:{colour_folder}", "--out", str(out), "--set",
                                 f"eval.control=imagefolder:{control_folder}", "--set", setting])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.output
    assert not out.exists()


def test_a_control_folder_that_does_not_exist_fails_before_anything_is_written(tiny_clip_dir, colour_folder,
                                                                               tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "lora", "--model", str(tiny_clip_dir), "--dataset",
                                 f"imagefolder:{colour_folder}", "--out", str(out), "--set",
                                 f"eval.control=imagefolder:{tmp_path / 'missing'}"])
    assert result.exit_code == 2 and str(tmp_path / "missing") in result.output, result.output
    assert not out.exists()
