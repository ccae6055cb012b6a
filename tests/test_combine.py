"""WiSE-FT and ensembles of finished runs: their ends equal what they combine, errors are one line, output is a
normal run directory."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from clipadapt.classification.evaluation import load_run
from clipadapt.classification.training import run_training
from clipadapt.cli import app
from tests.helpers import make_image_folder
from tests.test_methods import experiment

runner = CliRunner()


@pytest.fixture(scope="module")
def shifted_folder(tmp_path_factory):
    """The same three colour classes, other images."""
    return make_image_folder(tmp_path_factory.mktemp("shift") / "colours", per_class=6, seed=7)


@pytest.fixture(scope="module")
def other_classes(tmp_path_factory):
    root = make_image_folder(tmp_path_factory.mktemp("other") / "colours", per_class=6)
    shutil.move(root / "red", root / "crimson")
    return root


@pytest.fixture(scope="module")
def trained(tiny_clip_dir, colour_folder, tmp_path_factory):
    """A finished run per method, trained once for the module."""
    root = tmp_path_factory.mktemp("runs")

    def train(name, *overrides):
        return run_training(experiment(name, tiny_clip_dir, colour_folder, root / name, "train.epochs=2",
                                       *overrides)).run_dir

    return {"full-ft": train("full-ft"), "lora": train("lora", "lora.dropout=0.0"), "linear-head": train("linear-head"),
            "linear-probe": train("linear-probe")}


def _test_logits(run_dir):
    from clipadapt.engine.inputs import TrainingData
    from clipadapt.engine.trainer import TrainConfig, Trainer, make_accelerator

    _, dataset, method = load_run(run_dir)
    data = TrainingData(dataset, method.bundle, eval_batch_size=64, num_workers=0, preprocess=method.preprocess)
    return Trainer(TrainConfig(), data, make_accelerator(torch.device("cpu"), "fp32")).evaluate(method, "test")


@pytest.mark.parametrize("name", ["full-ft", "lora"])
def test_wise_ends_are_zero_shot_and_the_run_bit_for_bit(name, trained, tiny_clip_dir, shifted_folder, tmp_path):
    from clipadapt.experiments.wise import _zero_shot_state

    experiment_, dataset, method = load_run(trained[name])
    end = method.trainable_state()
    start = _zero_shot_state(experiment_, dataset, method)
    at_zero, at_one = method.interpolate(start, end, 0.0), method.interpolate(start, end, 1.0)
    assert all(torch.equal(at_one[k], end[k]) for k in end)
    for key in end:  # lora keeps its trained A; every other weight is the zero-shot one
        assert torch.equal(at_zero[key], end[key] if "lora_A" in key else start[key]), key
    if name == "lora":
        assert all(not at_zero[k].any() for k in end if "lora_B" in k)

    result = runner.invoke(app, ["wise", str(trained[name]), "--alphas", "0,0.5,1", "--shift-dataset",
                                 f"imagefolder:{shifted_folder}", "--out", str(tmp_path / "wise")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "wise" / "wise.json").read_text())
    rows = {r["alpha"]: r for r in summary["rows"]}
    record = json.loads((trained[name] / "metrics.json").read_text())
    assert rows[1.0]["test_acc"] == record["metrics"]["acc1"]  # alpha 1 is the run
    fresh = make_fresh_accuracy(name, tiny_clip_dir, trained[name])
    assert rows[0.0]["test_acc"] == fresh  # alpha 0 is the untrained (zero-shot) model
    best = max(summary["rows"], key=lambda r: (r["val_acc"], -r["val_loss"], -abs(r["alpha"] - 0.5)))
    assert summary["chosen_alpha"] == best["alpha"] and all("shift_acc" in r for r in summary["rows"])
    written = json.loads((tmp_path / "wise" / "metrics.json").read_text())
    assert written["metrics"]["acc1"] == rows[best["alpha"]]["test_acc"] and written["wise"]["source"]
    assert (tmp_path / "wise" / "wise.png").stat().st_size > 5_000
    again = _test_logits(tmp_path / "wise")  # a normal run directory: it loads and evaluates as the record says
    assert again.metrics["acc1"] == written["metrics"]["acc1"]


def test_report_shows_the_wise_alpha_table_and_plot(trained, shifted_folder, tmp_path):
    wise = tmp_path / "wise"
    done = runner.invoke(app, ["wise", str(trained["lora"]), "--alphas", "0,0.5,1", "--shift-dataset",
                               f"imagefolder:{shifted_folder}", "--out", str(wise)])
    assert done.exit_code == 0, done.output
    summary = json.loads((wise / "wise.json").read_text())
    done = runner.invoke(app, ["report", str(wise), str(trained["lora"]), "--out", str(tmp_path / "rep")])
    assert done.exit_code == 0, done.output
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "#### WiSE-FT: lora WiSE" in report and "| alpha | val acc1 | test acc1 | imagefolder:" in report
    for row in summary["rows"]:
        cells = [f"{row['alpha']:g}", f"{row['val_acc']:.4f}", f"{row['test_acc']:.4f}", f"{row['shift_acc']:.4f}"]
        if row["alpha"] == summary["chosen_alpha"]:
            cells = [f"**{c}**" for c in cells]
        assert "| " + " | ".join(cells) + " |" in report
    figure = next((tmp_path / "rep" / "report_files").glob("*-wise.png"))
    assert figure.read_bytes() == (wise / "wise.png").read_bytes() and figure.name in report
    page = (tmp_path / "rep" / "report.html").read_text()
    assert f"<td><b>{summary['chosen_alpha']:g}</b></td>" in page and "**" not in page
    assert page.count("<img") == report.count("![")


def make_fresh_accuracy(name, tiny_clip_dir, run_dir) -> float:
    """Test accuracy of the method as built, before any training: the zero-shot model."""
    from clipadapt.classification.experiment import build_method
    from clipadapt.engine.inputs import TrainingData
    from clipadapt.engine.trainer import TrainConfig, Trainer, make_accelerator
    from clipadapt.models import load_model

    experiment_, dataset, _ = load_run(run_dir)
    method = build_method(experiment_, load_model(str(tiny_clip_dir)), dataset)
    data = TrainingData(dataset, method.bundle, eval_batch_size=64, num_workers=0, preprocess=method.preprocess)
    trainer = Trainer(TrainConfig(), data, make_accelerator(torch.device("cpu"), "fp32"))
    return trainer.evaluate(method, "test").metrics["acc1"]


@pytest.mark.parametrize("args, message", [
    (["--alphas", "0,1.5"], "alpha 1.5 is outside [0, 1]"),
    (["--shift-dataset", "OTHER"], "shift dataset imagefolder:"),
])
def test_wise_bad_input_is_one_line_and_writes_nothing(args, message, trained, other_classes, tmp_path):
    args = [a.replace("OTHER", f"imagefolder:{other_classes}") for a in args]
    result = runner.invoke(app, ["wise", str(trained["full-ft"]), *args, "--out", str(tmp_path / "never")])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "never").exists()


def test_wise_reads_a_local_copy_of_a_hub_shift_dataset(trained, tmp_path):
    """--shift-root: the shift as a hub dataset saved to disk (same class names, string labels)."""
    import datasets as hfds

    from tests.helpers import COLOURS, coloured_image

    names = sorted(COLOURS)
    rows = {"image": [coloured_image(COLOURS[names[i % 3]], seed=i) for i in range(12)],
            "label": [names[i % 3] for i in range(12)]}
    table = hfds.Dataset.from_dict(rows, features=hfds.Features({"image": hfds.Image(), "label": hfds.Value("string")}))
    hfds.DatasetDict({"test": table}).save_to_disk(str(tmp_path / "copy"))
    args = ["wise", str(trained["lora"]), "--alphas", "0,1", "--shift-dataset", "hf:me/shifted-colours"]
    done = runner.invoke(app, [*args, "--shift-root", str(tmp_path / "copy"), "--out", str(tmp_path / "wise")])
    assert done.exit_code == 0, done.output
    summary = json.loads((tmp_path / "wise" / "wise.json").read_text())
    assert summary["shift_dataset"] == "hf:me/shifted-colours" and all("shift_acc" in r for r in summary["rows"])
    alone = runner.invoke(app, ["wise", str(trained["lora"]), "--shift-root", str(tmp_path / "copy"), "--out",
                                str(tmp_path / "never")])
    assert alone.exit_code == 2 and "--shift-root is the local copy of --shift-dataset" in alone.output
    assert not (tmp_path / "never").exists()


def test_wise_refuses_runs_that_do_not_start_at_zero_shot(trained, tmp_path):
    result = runner.invoke(app, ["wise", str(trained["linear-probe"]), "--out", str(tmp_path / "never")])
    assert result.exit_code == 2 and "method 'linear-probe' does not start from the zero-shot model" in result.output
    assert not (tmp_path / "never").exists()


def test_an_ensemble_of_one_run_is_that_run(trained, colour_folder, tmp_path):
    from clipadapt.classification.predictors import load_predictor

    result = runner.invoke(app, ["ensemble", str(trained["lora"]), "--out", str(tmp_path / "one")])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "one" / "metrics.json").read_text())
    member = json.loads((trained["lora"] / "metrics.json").read_text())
    assert record["metrics"]["acc1"] == member["metrics"]["acc1"]
    ensemble, single = load_predictor(tmp_path / "one"), load_predictor(trained["lora"])
    pixels = torch.stack([single.preprocess(single.dataset.split("test").load(i)) for i in range(4)])
    torch.testing.assert_close(ensemble.probabilities(pixels), single.probabilities(pixels), rtol=0, atol=1e-6)


def test_ensemble_weights_on_validation_and_the_run_directory_works_everywhere(trained, tiny_clip_dir, colour_folder,
                                                                              tmp_path):
    runs = [str(trained[n]) for n in ("full-ft", "lora", "linear-head")]
    result = runner.invoke(app, ["ensemble", *runs, "--weights", "val", "--out", str(tmp_path / "ens")])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    assert len(saved["search"]) == 66  # tenths over three members
    best = max(saved["search"], key=lambda r: (r["val_acc"], -r["val_loss"]))
    assert best["val_acc"] == pytest.approx(json.loads(
        (tmp_path / "ens" / "metrics.json").read_text())["selection"]["val_acc"])
    assert sum(saved["weights"]) == pytest.approx(1.0)
    zero_shot = tmp_path / "zs"
    done = runner.invoke(app, ["zeroshot", "--model", str(tiny_clip_dir), "--dataset", f"imagefolder:{colour_folder}",
                               "--templates", "simple", "--out", str(zero_shot), "--set", "data.num_workers=0"])
    assert done.exit_code == 0, done.output
    reported = [str(tmp_path / "ens"), str(trained["lora"]), str(zero_shot)]
    for command in (["report", *reported, "--out", str(tmp_path / "rep")],
                    ["robustness", str(tmp_path / "ens"), "--sigmas", "0,0.2"]):
        done = runner.invoke(app, command)
        assert done.exit_code == 0, done.output
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "ensemble" in report and "### Combined runs" in report and "#### Ensemble: ensemble of 3" in report
    # its own row, not merged with zero-shot's (an ensemble's config has no method key)
    record = json.loads((tmp_path / "ens" / "metrics.json").read_text())
    assert f"| ensemble of 3 | 0 | {record['metrics']['acc1']:.4f} |" in report
    assert record["cost"]["peak_mem_mb"] > 0  # measured, like a training run's
    assert "| zeroshot (simple) | 0 |" in report
    for member in saved["members"]:  # each member's weight, and its own accuracies beside the ensemble's
        assert f"| {member['label']} | {member['weight']:.3f} | {member['val_acc']:.4f} | " \
               f"{member['test_acc']:.4f} |" in report
    robustness = json.loads((tmp_path / "ens" / "robustness.json").read_text())
    assert robustness["gaussian"]["accuracy"]["0"] == json.loads(
        (tmp_path / "ens" / "metrics.json").read_text())["metrics"]["acc1"]


def test_ensemble_refuses_runs_of_other_data(trained, tiny_clip_dir, other_classes, tmp_path):
    other = run_training(experiment("linear-head", tiny_clip_dir, other_classes, tmp_path / "other")).run_dir
    result = runner.invoke(app, ["ensemble", str(trained["lora"]), str(other), "--out", str(tmp_path / "never")])
    assert result.exit_code == 2 and "ensemble members must share the data" in result.output
    assert not (tmp_path / "never").exists()
    bad = runner.invoke(app, ["ensemble", str(trained["lora"]), "--weights", "best", "--out", str(tmp_path / "n")])
    assert bad.exit_code == 2 and "unknown --weights 'best'; valid choices: uniform, val" in bad.output


def test_simplex_grid_covers_the_simplex():
    from clipadapt.experiments.ensemble import simplex_grid

    grid = simplex_grid(3, 10)
    assert len(grid) == 66 and all(sum(p) == pytest.approx(1.0) for p in grid)
    assert (1.0, 0.0, 0.0) in grid and (0.0, 0.0, 1.0) in grid and len(set(grid)) == 66
    assert np.allclose(sorted(simplex_grid(2, 4)), [(0, 1), (0.25, 0.75), (0.5, 0.5), (0.75, 0.25), (1, 0)])


@pytest.fixture(scope="module")
def caption_run(tiny_clip_dir, tiny_lm_dir, tmp_path_factory):
    """A finished caption run on the tiny models (one epoch of bridge-only on a few generated scenes)."""
    from clipadapt.captioning.runs import load_caption_experiment, run_caption_training
    from clipadapt.world.caption_data import write_caption_dataset

    root = tmp_path_factory.mktemp("caption")
    data = write_caption_dataset(root / "data", {"train": (1, 4), "val": (2, 2), "test": (3, 2)}, resolution=32)
    return run_caption_training(load_caption_experiment("bridge-only", None, [
        f"model.spec={tiny_clip_dir}", f"decoder.spec={tiny_lm_dir}", f"data.dataset=coco:{data}", "train.epochs=1",
        "decode.max_new_tokens=3", "decode.tokenizer=simple", "run.attention_images=0",
        f"run.out={root / 'run'}"])).run_dir


@pytest.mark.parametrize("command", ["wise", "ensemble"])
def test_combining_a_caption_run_is_refused(command, caption_run, trained, tmp_path):
    import clipadapt
    from clipadapt.errors import ConfigError

    workflow = "WiSE-FT" if command == "wise" else "an ensemble"
    message = f"'{caption_run}' is a caption run; {workflow} needs classification runs"
    members = [str(caption_run)] if command == "wise" else [str(trained["lora"]), str(caption_run)]
    result = runner.invoke(app, [command, *members, "--out", str(tmp_path / "never")])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "never").exists()
    with pytest.raises(ConfigError, match=message.replace("'", "").split(";")[1].strip()):
        if command == "wise":
            clipadapt.wise(caption_run, out=tmp_path / "never")
        else:
            clipadapt.ensemble(members, out=tmp_path / "never")
    assert not (tmp_path / "never").exists()
