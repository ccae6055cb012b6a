"""``clipadapt caption ...`` end to end on tiny random models: train, eval, predict, compare, report, bad input."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from clipadapt.cli import app

runner = CliRunner()
SMALL = {"train": (1, 10), "val": (2, 3), "test": (3, 3)}


@pytest.fixture(scope="module")
def caption_folder(tmp_path_factory):
    from clipadapt.world.caption_data import write_caption_dataset

    return write_caption_dataset(tmp_path_factory.mktemp("captions") / "world", SMALL, resolution=32)


def common(tiny_clip_dir, tiny_lm_dir, caption_folder):
    return ["--model", str(tiny_clip_dir), "--decoder", str(tiny_lm_dir), "--dataset", f"coco:{caption_folder}",
            "--set", "decode.max_new_tokens=5", "--set", "decode.tokenizer=simple", "--set", "run.attention_images=1",
            "--epochs", "1"]


def test_train_eval_predict(tiny_clip_dir, tiny_lm_dir, caption_folder, tmp_path):
    run = tmp_path / "run"
    trained = runner.invoke(app, ["caption", "train", "lora", *common(tiny_clip_dir, tiny_lm_dir, caption_folder),
                                  "--out", str(run), "--set", "train.log_with=tensorboard"])
    assert trained.exit_code == 0, trained.output
    assert "CIDEr" in trained.output and "CLIPScore" in trained.output and "lora" in trained.output
    record = json.loads((run / "metrics.json").read_text())
    assert f"{record['metrics']['cider']:.3f}" in trained.output
    # the caption engine's rows reach the tracker too (next-token accuracy per step, validation loss per epoch)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "logs"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"step/train_loss", "step/train_acc", "epoch/val_loss"} <= tags
    with open(run / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [e.value for e in events.Scalars("epoch/val_loss")] == pytest.approx(
        [float(r["val_loss"]) for r in rows], rel=1e-3)

    evaluated = runner.invoke(app, ["caption", "eval", str(run), "--beam", "2"])
    assert evaluated.exit_code == 0, evaluated.output
    summary = json.loads((run / "eval_test_beam2.json").read_text())
    assert summary["decode"]["beams"] == 2 and f"{summary['metrics']['bleu4']:.3f}" in evaluated.output

    image = json.loads((run / "predictions.json").read_text())[0]["file"]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    predicted = runner.invoke(app, ["caption", "predict", str(run), image, str(broken), "--attention",
                                    "--out", str(tmp_path / "figs")])
    assert predicted.exit_code == 0, predicted.output
    assert len(list((tmp_path / "figs").glob("*-attention.png"))) == 1
    assert "skipped" in predicted.output and "broken.png" in predicted.output
    strict = runner.invoke(app, ["caption", "predict", str(run), str(broken), "--strict", "--attention",
                                 "--out", str(tmp_path / "strict")])
    assert strict.exit_code == 2 and "cannot read image" in strict.output and not (tmp_path / "strict").exists()


def test_compare_writes_one_run_per_cell_and_a_report(tiny_clip_dir, tiny_lm_dir, caption_folder, tmp_path):
    out = tmp_path / "cmp"
    result = runner.invoke(app, ["caption", "compare", "--methods", "bridge-only,adapter", "--seeds", "0",
                                 *common(tiny_clip_dir, tiny_lm_dir, caption_folder), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir() if p.is_dir() and p.name != "report_files"} == {
        "bridge-only-patch-prefix-seed0", "adapter-patch-prefix-seed0"}
    report = (out / "report.md").read_text()
    for name in ("CIDEr", "RefCLIPScore", "bridge-only (patch-prefix)", "adapter (patch-prefix)", "best and worst"):
        assert name in report
    cider = json.loads((out / "adapter-patch-prefix-seed0" / "metrics.json").read_text())["metrics"]["cider"]
    assert f"{cider:.3f}" in report
    assert "<table" in (out / "report.html").read_text()
    # the generic report command recognises caption runs
    again = runner.invoke(app, ["report", str(out), "--out", str(tmp_path / "rep")])
    assert again.exit_code == 0, again.output
    assert "clipadapt caption report" in (tmp_path / "rep" / "report.md").read_text()
    refused = runner.invoke(app, ["caption", "compare", "--methods", "bridge-only,adapter",
                                *common(tiny_clip_dir, tiny_lm_dir, caption_folder), "--out", str(out)])
    assert refused.exit_code == 2 and "2 run directories already exist" in refused.output  # refused before training
    kept = runner.invoke(app, ["caption", "compare", "--methods", "bridge-only,adapter", "--skip-existing",
                               *common(tiny_clip_dir, tiny_lm_dir, caption_folder), "--out", str(out)])
    assert kept.exit_code == 0 and kept.output.count(": kept") == 2


@pytest.mark.parametrize("args, message", [
    (["caption", "train", "prefx"], "unknown caption method 'prefx'; valid choices: "),
    (["caption", "train", "lora", "--bridge", "patches"], "unknown bridge.kind 'patches'; valid choices: "),
    (["caption", "train", "lora", "--select", "bleu"], "unknown train.select 'bleu'; valid choices: loss, cider"),
    (["caption", "compare", "--bridges", "mapper,x"], "unknown bridge 'x'; valid choices: "),
    (["caption", "train", "lora", "--dataset", "cocoo:x.json"], "unknown caption dataset 'cocoo:x.json'"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "never")] if args[1] == "train" else args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "never").exists()


def test_a_decoder_that_is_not_a_causal_lm_is_refused(tiny_clip_dir, caption_folder, tmp_path):
    result = runner.invoke(app, ["caption", "train", "lora", "--model", str(tiny_clip_dir), "--decoder",
                                 str(tiny_clip_dir), "--dataset", f"coco:{caption_folder}", "--out",
                                 str(tmp_path / "run")])
    assert result.exit_code == 2 and "not a causal language model" in result.output
    assert not (tmp_path / "run").exists()


def test_caption_commands_refuse_classification_runs(tmp_path):
    (tmp_path / "config.yaml").write_text("method: lora\n")
    result = runner.invoke(app, ["caption", "eval", str(tmp_path)])
    assert result.exit_code == 2 and "is not a caption run" in result.output
