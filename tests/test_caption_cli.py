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


@pytest.fixture(scope="module")
def scorer_clip_dir(tmp_path_factory):
    """A second tiny random CLIP (seed 1) to score CLIPScore: not the run's encoder."""
    from clipadapt.models.random_init import save_random_clip

    return save_random_clip(tmp_path_factory.mktemp("models") / "scorer-clip", preset="tiny", seed=1)


def _png_height(path) -> int:
    from PIL import Image

    with Image.open(path) as image:
        return image.height


def test_train_eval_predict(tiny_clip_dir, tiny_lm_dir, caption_folder, scorer_clip_dir, tmp_path):
    """One run, then everything done with it: eval (beam, another split, another CLIPScore model), predict
    (attention of one layer, of the mean, of every layer), and the bad input of each."""
    run = tmp_path / "run"
    trained = runner.invoke(app, ["caption", "train", "lora", *common(tiny_clip_dir, tiny_lm_dir, caption_folder),
                                  "--out", str(run), "--set", "train.log_with=tensorboard",
                                  "--set", f"eval.clipscore_model={scorer_clip_dir}",
                                  "--set", "run.attention_layer=all"])
    assert trained.exit_code == 0, trained.output
    assert "CIDEr" in trained.output and "CLIPScore" in trained.output and "lora" in trained.output
    record = json.loads((run / "metrics.json").read_text())
    assert f"{record['metrics']['cider']:.3f}" in trained.output
    assert record["clipscore"] == {"model": str(scorer_clip_dir), "requested": str(scorer_clip_dir), "own": False,
                                   "weight": 2.5, "prefix": "A photo depicts "}
    assert f"scored by {scorer_clip_dir}" in trained.output.replace("\n", "")
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
    assert summary["clipscore"]["model"] == str(scorer_clip_dir) and summary["rescored"] is None
    # bad decodings: one line, exit 2, nothing written; another decoding: files of its own
    written = sorted(p.name for p in run.iterdir())
    for setting, message in [
            ("decode.repetition_penalty=-1", "decode: repetition_penalty must be positive, got -1"),
            ("decode.length_penalty=-0.5", "decode.length_penalty must be >= 0, got -0.5"),
            ("decode.no_repeat_ngram_size=-3", "decode.no_repeat_ngram_size must be >= 0, got -3"),
            ("decode.min_new_tokens=9", "decode.min_new_tokens (9) must not exceed decode.max_new_tokens (5)"),
            ("decode.beam=2", "unknown config key 'decode.beam' (decode has: max_new_tokens, beams"),
            ("train.epochs=3", "re-decoding a run takes decode.* settings only, got 'train.epochs=3'")]:
        refused = runner.invoke(app, ["caption", "eval", str(run), "--set", setting])
        assert refused.exit_code == 2 and message in refused.output, (setting, refused.output)
        assert len(refused.output.strip().splitlines()) == 1 and "Traceback" not in refused.output
    assert sorted(p.name for p in run.iterdir()) == written
    redecoded = runner.invoke(app, ["caption", "eval", str(run), "--set", "decode.no_repeat_ngram_size=2"])
    assert redecoded.exit_code == 0, redecoded.output
    assert json.loads((run / "eval_test_norepeat2.json").read_text())["decode"]["no_repeat_ngram_size"] == 2
    assert "eval_test_norepeat2_predictions.json" in redecoded.output.replace("\n", "")
    assert json.loads((run / "eval_test_beam2.json").read_text()) == summary  # the other decoding's file stands

    # the saved test captions scored again by the same CLIP: training's numbers, nothing decoded
    again = runner.invoke(app, ["caption", "eval", str(run), "--clipscore-model", str(scorer_clip_dir)])
    assert again.exit_code == 0, again.output
    summary = json.loads((run / "eval_test_clipscore-scorer-clip.json").read_text())
    assert summary["metrics"] == record["metrics"] and summary["rescored"] == "predictions.json"
    assert (run / "eval_test_clipscore-scorer-clip_best_worst.png").is_file()

    # another split: its captions, metrics and best/worst figure, scored by the run's scorer
    val = runner.invoke(app, ["caption", "eval", str(run), "--split", "val"])
    assert val.exit_code == 0, val.output
    summary = json.loads((run / "eval_val.json").read_text())
    assert summary["split"] == "val" and summary["images"] == SMALL["val"][1]
    assert summary["clipscore"]["model"] == str(scorer_clip_dir) and not (run / "eval_test.json").exists()
    assert len(json.loads((run / "eval_val_predictions.json").read_text())) == SMALL["val"][1]
    assert (run / "eval_val_best_worst.png").is_file() and f"{summary['metrics']['cider']:.3f}" in val.output

    # attention: the mean over layers (one row of words), and every layer as a grid (a row per layer; the tiny LM
    # has 2); one layer is drawn as the mean is (tests/test_caption_training.py checks its maps)
    image = json.loads((run / "predictions.json").read_text())[0]["file"]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    heights = {}
    for layer in ("mean", "all"):
        predicted = runner.invoke(app, ["caption", "predict", str(run), image, str(broken), "--attention",
                                        "--layer", layer, "--out", str(tmp_path / layer)])
        assert predicted.exit_code == 0, predicted.output
        assert "skipped" in predicted.output and "broken.png" in predicted.output
        [figure] = (tmp_path / layer).glob("*-attention.png")
        heights[layer] = _png_height(figure)
    assert heights["all"] > 1.6 * heights["mean"]
    [in_run] = (run / "attention").glob("*.png")  # run.attention_layer=all: the run's figure is the grid too
    assert _png_height(in_run) == heights["all"]

    # bad input: one line, exit 2, nothing written
    listing = sorted(p.relative_to(run) for p in run.rglob("*"))
    for args, message in [
        (["eval", str(run), "--clipscore-model", str(tmp_path / "nowhere")],
         f"cannot load the CLIPScore model '{tmp_path / 'nowhere'}': model path"),
        (["eval", str(run), "--clipscore-model", "someone/no-such-clip"],
         "CLIPScore model 'someone/no-such-clip': someone/no-such-clip is not in the local hub cache, and the hub "
         "cannot be reached (offline); valid choices: "),
        (["eval", str(run), "--split", "dev"], "unknown split 'dev' of "),
        (["predict", str(run), image, "--attention", "--layer", "2", "--out", str(tmp_path / "bad")],
         "attention layer 2 is out of range; the decoder has 2 layers"),
        (["predict", str(run), image, "--attention", "--layer", "middle", "--out", str(tmp_path / "bad")],
         "unknown attention layer 'middle'; valid choices: mean, all"),
        (["predict", str(run), str(broken), "--strict", "--attention", "--out", str(tmp_path / "bad")],
         "cannot read image"),
    ]:
        result = runner.invoke(app, ["caption", *args])
        assert result.exit_code == 2, result.output
        assert message in result.output.replace("\n", "") and "Traceback" not in result.output
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == listing and not (tmp_path / "bad").exists()


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
    record = json.loads((out / "adapter-patch-prefix-seed0" / "metrics.json").read_text())
    assert f"{record['metrics']['cider']:.3f}" in report
    # offline, the default scorer (ViT-B/32) falls back to the run's own CLIP, and the tables say so
    assert record["clipscore"]["model"] == str(tiny_clip_dir) and "fallback" in record["clipscore"]
    assert "CLIPScore by" in report and f"{tiny_clip_dir} (fallback)" in report and "(fallback)" in result.output
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



def _setting_rows(output: str) -> dict[str, list[str]]:
    """``{"lora.r": ["8", "rank of the update"], ...}`` from the settings tables of a listing (COLUMNS=200)."""
    rows = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip("│ ").split("│")]
        if len(cells) == 3 and "." in cells[0] and " " not in cells[0]:
            rows[cells[0]] = cells[1:]
    return rows


def test_caption_methods_list_every_setting_with_its_default_and_help():
    result = runner.invoke(app, ["caption", "methods"])
    assert result.exit_code == 0, result.output
    rows = _setting_rows(result.output)
    assert rows["lora.r"] == ["8", "rank of the update"]
    assert rows["lora.weight_decay"] == ["0.0", "weight decay of what the method trains in the decoder (the bridge's: "
                                                "bridge.weight_decay)"]
    assert rows["prefix.lr"] == ["0.005", "learning rate of the prefix"]
    assert rows["prefix.length"] == ["10", "prefix key/value vectors per decoder layer (peft's num_virtual_tokens)"]
    assert rows["full.lr"] == ["0.0001", "learning rate of the decoder's weights"]
    assert rows["bridge_only.weight_decay"][0] == "0.0" and rows["adapter.bottleneck"][0] == "64"
    # the bridge trains in every method: its section is listed once, after the methods
    assert rows["bridge.kind"] == ["patch-prefix", "patch-prefix, cross-attention or mapper"]
    assert rows["bridge.lr"] == ["0.001", "learning rate of the bridge (and of the new cross-attention layers)"]
    assert rows["bridge.weight_decay"] == ["0.0", "weight decay of the bridge (the optimizer is the decoder method's)"]
    assert result.output.count("bridge.lr") == 1 and "train.select" not in rows
    assert "Shared sections: model.*, decoder.*, data.*, train.*, decode.*, eval.*, run.*" in result.output
    shared = _setting_rows(runner.invoke(app, ["caption", "methods", "lo*", "--shared"]).output)
    assert {key.split(".")[0] for key in shared} == {"lora", "bridge", "model", "decoder", "data", "train", "decode",
                                                    "eval", "run"}  # the pattern keeps lora alone
    assert shared["train.select"][0] == "loss" and shared["decode.no_repeat_ngram_size"][0] == "3"


def test_caption_methods_are_data_with_the_defaults_a_run_gets():
    import clipadapt
    from clipadapt.captioning.runs import load_caption_experiment
    from clipadapt.config import to_dict

    rows = {row["name"]: row for row in clipadapt.caption_methods()}
    assert sorted(rows) == ["adapter", "bridge-only", "full", "lora", "prefix"]
    assert rows["bridge-only"]["section"] == "bridge_only" and rows["lora"]["package"] is None
    assert rows["lora"]["settings"]["weight_decay"] == 0.0 and rows["prefix"]["settings"]["lr"] == 5e-3
    for name, row in rows.items():  # what is listed is what a run with no --set uses
        experiment = load_caption_experiment(name)
        assert row["settings"] == to_dict(getattr(experiment, row["section"])), name
    assert [row["name"] for row in clipadapt.caption_methods("*e*")] == ["adapter", "bridge-only", "prefix"]


def test_compare_gives_each_method_its_own_settings(tiny_clip_dir, tiny_lm_dir, caption_folder, tmp_path):
    """The demo's learning rates were chosen per method on validation: one compare carries them to that method's
    runs only (after the common settings, so they win)."""
    import yaml

    from clipadapt.errors import ConfigError
    from clipadapt.experiments.caption_compare import CaptionCompareConfig, run_caption_compare

    common_settings = [f"model.spec={tiny_clip_dir}", f"decoder.spec={tiny_lm_dir}",
                       f"data.dataset=coco:{caption_folder}", "decode.max_new_tokens=5", "decode.tokenizer=simple",
                       "run.attention_images=0", "train.epochs=1", "bridge.lr=1e-3"]
    config = CaptionCompareConfig(methods=["bridge-only", "lora"], overrides=common_settings,
                                  method_overrides={"bridge-only": ["bridge.lr=2e-2"], "lora": ["lora.r=2"]},
                                  out=str(tmp_path / "cmp"))
    assert len(run_caption_compare(config).runs) == 2
    saved = {m: yaml.safe_load((tmp_path / "cmp" / f"{m}-patch-prefix-seed0" / "config.yaml").read_text())
             for m in ("bridge-only", "lora")}
    assert saved["bridge-only"]["bridge"]["lr"] == 0.02 and saved["lora"]["bridge"]["lr"] == 0.001
    assert saved["lora"]["lora"]["r"] == 2
    with pytest.raises(ConfigError, match="settings given for caption method 'full', which is not compared; "
                                          "compared: bridge-only, lora"):
        CaptionCompareConfig(methods=["bridge-only", "lora"], method_overrides={"full": ["full.lr=1e-4"]})
