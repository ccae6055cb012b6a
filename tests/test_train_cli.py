"""`clipadapt methods | train | eval` from the command line: results, bad input, multi-process launch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from clipadapt.cli import app

runner = CliRunner()


def train_args(method, tiny_clip_dir, colour_folder, out, *extra):
    return ["train", method, "--model", str(tiny_clip_dir), "--dataset", f"imagefolder:{colour_folder}",
            "--epochs", "2", "--out", str(out), "--set", "data.num_workers=0", *extra]


def test_methods_lists_fields_and_defaults():
    result = runner.invoke(app, ["methods"])
    assert result.exit_code == 0
    for text in ("linear-probe", "lora.r", "lora.targets", "full_ft.backbone_lr_scale", "full_ft.lp_ft",
                 "bitfit.lr", "linear_head.head", "linear_probe.steps_per_decade"):
        assert text in result.output


def test_train_then_eval(tiny_clip_dir, colour_folder, tmp_path):
    out = tmp_path / "run[lr-1e-3]"  # brackets in a path are printed as they are, not read as rich markup
    result = runner.invoke(app, train_args("bitfit", tiny_clip_dir, colour_folder, out, "--seed", "3"))
    assert result.exit_code == 0, result.output
    assert "trainable params" in result.output and str(out) in result.output
    record = json.loads((out / "metrics.json").read_text())
    assert record["seed"] == 3 and record["config"]["data"]["seed"] == 3
    evaluated = runner.invoke(app, ["eval", str(out), "--split", "test"])
    assert evaluated.exit_code == 0, evaluated.output
    again = json.loads((out / "eval_test.json").read_text())
    assert again["metrics"] == record["metrics"]
    assert runner.invoke(app, ["eval", str(out), "--split", "val"]).exit_code == 0
    assert (out / "eval_val.json").is_file()


@pytest.mark.parametrize("override, message", [
    ("lora.r=0", "r must be positive, got 0"),
    ("lora.lr=0", "lr must be positive"),
    ("lora.lr=-1e-3", "lr must be positive"),
    ("train.epochs=0", "epochs must be positive"),
    ("lora.rank=4", "unknown config key 'lora.rank' (lora has: lr, weight_decay, optimizer, momentum, head, r, alpha"),
    ("train.epoch=3", "unknown config key 'train.epoch' (train has: epochs"),
    ("lora.targets=[qkv]", "LoRA target 'qkv' matches no module of the vision tower of '{model}' (clip model); "
                           "available module names: fc1, fc2, k_proj, out_proj, patch_embedding, q_proj, v_proj"),
    ("lora.head=mlp", "unknown lora.head 'mlp'; valid choices: zeroshot, linear, text"),
    ("train.augment=mixup", "unknown train.augment 'mixup'; valid choices: none, flip, crop-flip"),
])
def test_bad_hyperparameters_are_one_line_errors(override, message, tiny_clip_dir, colour_folder, tmp_path,
                                                monkeypatch):
    from clipadapt.cli.common import err

    monkeypatch.setattr(err, "width", 40)  # narrower than every message (the LoRA one names a long model path)
    out = tmp_path / "run"
    result = runner.invoke(app, train_args("lora", tiny_clip_dir, colour_folder, out, "--set", override))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()  # one line, whatever the terminal's width: never wrapped
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert message.replace("{model}", str(tiny_clip_dir)) in lines[0]
    assert "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.parametrize("method, override, message", [
    ("visual-prompt", "visual_prompt.prompt_size=113", "visual_prompt.prompt_size must be between 1 and 112 (half "
                                                       "of the 224 px image), got 113"),
    ("vpt", "vpt.tokens=-4", "vpt.tokens must be >= 0, got -4"),
    ("vpt", "vpt.layer=12", "vpt.layer=12 is beyond the model's depth: its vision tower has 2 layers, so vpt.layer "
                            "must be between 0 and 1"),
    ("vpt", "vpt.depth=wide", "unknown vpt.depth 'wide'; valid choices: shallow, deep"),
    ("vision-prefix", "vision_prefix.length=-1", "vision_prefix.length must be >= 0, got -1"),
    ("vision-prefix", "vision_prefix.layer=2", "vision_prefix.layer=2 is beyond the model's depth"),
    ("coop", "coop.n_ctx=75", "coop context of 75 tokens is longer than the text encoder allows: the prompt of "
                              "'green' needs 83 of at most 77 tokens; use n_ctx <= 69"),
    ("coop", "coop.optimizer=adam", "unknown coop.optimizer 'adam'; valid choices: adamw, sgd"),
])
def test_prompt_method_limits_are_one_line_errors(method, override, message, tiny_clip_dir, colour_folder,
                                                  tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, train_args(method, tiny_clip_dir, colour_folder, out, "--set", override))
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_coop_words_command(tiny_clip_dir, colour_folder, tmp_path):
    out = tmp_path / "coop"
    trained = runner.invoke(app, train_args("coop", tiny_clip_dir, colour_folder, out, "--set", "coop.init=a red",
                                            "--set", "coop.lr=1e-6"))
    assert trained.exit_code == 0, trained.output
    result = runner.invoke(app, ["coop-words", str(out), "--top", "2"])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if line.startswith("│")]
    assert len(rows) == 4  # "a red" is 4 tokens for the test's character tokenizer: a, r, e, d
    words = [row.split("│")[2].strip() for row in rows]
    assert [w.split(" ")[0] for w in words] == ["a", "r", "e", "d"]  # barely trained: still the phrase's tokens
    assert all(w.split(" ")[1].startswith("(0.00") for w in words)
    wrong = runner.invoke(app, ["coop-words", str(tmp_path)])
    assert wrong.exit_code == 2 and "not a run directory" in wrong.output


def test_unknown_method(tmp_path):
    result = runner.invoke(app, ["train", "lorra"])
    assert result.exit_code == 2
    from clipadapt.methods import list_methods

    assert {"lora", "clip-lora", "2sfs", "gda", "lp++", "prolip"} <= set(list_methods())
    assert (f"unknown method 'lorra'; valid choices: {', '.join(list_methods())}"
            ) in result.output.replace("\n", " ").replace("  ", " ")


def test_existing_directory_is_not_overwritten(tiny_clip_dir, colour_folder, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = runner.invoke(app, train_args("linear-head", tiny_clip_dir, colour_folder, out))
    assert result.exit_code == 2 and "already exists; pass --resume" in result.output
    assert (out / "notes.txt").read_text() == "mine" and len(list(out.iterdir())) == 1
    result = runner.invoke(app, train_args("linear-head", tiny_clip_dir, colour_folder, out, "--overwrite"))
    assert result.exit_code == 0 and not (out / "notes.txt").exists()


def test_resume_refuses_another_config_or_a_finished_run(tiny_clip_dir, colour_folder, tmp_path):
    out = tmp_path / "run"
    assert runner.invoke(app, train_args("lora", tiny_clip_dir, colour_folder, out)).exit_code == 0
    finished = runner.invoke(app, train_args("lora", tiny_clip_dir, colour_folder, out, "--resume"))
    assert finished.exit_code == 2 and "already complete" in finished.output

    (out / "metrics.json").unlink()  # now it looks interrupted
    other = runner.invoke(app, train_args("lora", tiny_clip_dir, colour_folder, out, "--resume", "--set", "lora.r=4"))
    assert other.exit_code == 2 and "different config: lora.r: 8 -> 4" in other.output
    other_model = runner.invoke(app, ["train", "lora", "--model", "random:tiny", "--out", str(out), "--resume"])
    assert other_model.exit_code == 2 and "model.spec:" in other_model.output


def test_weights_from_another_model_are_refused(tiny_clip_dir, colour_folder, tmp_path):
    from clipadapt.models.random_init import save_random_clip

    out = tmp_path / "run"
    assert runner.invoke(app, train_args("linear-head", tiny_clip_dir, colour_folder, out)).exit_code == 0
    other = save_random_clip(tmp_path / "other-model", "tiny", seed=1)
    config = yaml.safe_load((out / "config.yaml").read_text())
    config["model"]["spec"] = str(other)
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    result = runner.invoke(app, ["eval", str(out)])
    assert result.exit_code == 2 and "was trained on model local:" in result.output


def test_resume_from_the_cli_continues_an_interrupted_run(tiny_clip_dir, colour_folder, tmp_path):
    from clipadapt.classification.experiment import load_experiment
    from clipadapt.classification.training import run_training

    out = tmp_path / "run"

    def stop(trainer, row):
        raise KeyboardInterrupt

    experiment = load_experiment("linear-head", None, [
        f"model.spec={tiny_clip_dir}", f"data.dataset=imagefolder:{colour_folder}", "data.num_workers=0",
        "train.epochs=2", f"run.out={out}"])
    with pytest.raises(KeyboardInterrupt):
        run_training(experiment, {"epoch_end": [stop]})
    assert (out / "checkpoints/latest.json").is_file()
    saved = yaml.safe_load((out / "config.yaml").read_text())
    del saved["train"]["keep"], saved["train"]["head_templates"]  # as a version before these settings wrote it
    (out / "config.yaml").write_text(yaml.safe_dump(saved))
    changed = runner.invoke(app, ["train", "linear-head", "--out", str(out), "--resume", "--set", "train.keep=last"])
    assert changed.exit_code == 2 and "train.keep: 'best' -> 'last'" in changed.output  # absent = the default
    result = runner.invoke(app, ["train", "linear-head", "--out", str(out), "--resume"])
    assert result.exit_code == 0, result.output
    history = (out / "history.csv").read_text().splitlines()
    assert len(history) == 3  # header + both epochs, the first from before the interruption


@pytest.mark.slow
@pytest.mark.parametrize("method, saved", [("lora", "weights/adapter/adapter_model.safetensors"),  # pixels, peft
                                           ("coop", "weights/trainable.safetensors")])  # features, our module
def test_accelerate_launch_two_processes(method, saved, tiny_clip_dir, colour_folder, tmp_path):
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    out = tmp_path / "ddp"
    # accelerate's --cpu flag means MPI for several processes; --multi_gpu starts torchrun workers, which fall
    # back to gloo on a machine without GPUs
    command = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "clipadapt",
               *train_args(method, tiny_clip_dir, colour_folder, out, "--device", "cpu")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((out / "metrics.json").read_text())
    assert record["processes"] == 2
    assert record["metrics"]["n"] == 6 and (out / saved).is_file()
    assert done.stdout.count("trainable params") == 1  # only the main process prints


@pytest.mark.parametrize("in_config", [False, True])
def test_an_interrupted_run_names_the_directory_to_resume(in_config, tiny_clip_dir, colour_folder, tmp_path,
                                                          monkeypatch):
    """The hint names the run's own directory, also when it comes from --config rather than --out."""
    from clipadapt.engine.trainer import Trainer

    def interrupted(self, method):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "fit", interrupted)
    out = tmp_path / "from-config" if in_config else tmp_path / "from-flag"
    args = ["train", "linear-head", "--model", str(tiny_clip_dir), "--dataset", f"imagefolder:{colour_folder}",
            "--device", "cpu", "--set", "data.num_workers=0"]
    if in_config:
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({"method": "linear-head", "run": {"out": str(out)}}))
        args += ["--config", str(config)]
    else:
        args += ["--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 130
    assert f"continue with: clipadapt train linear-head --out {out} --resume" in " ".join(result.output.split())
    assert (out / "config.yaml").is_file() and not (out / "metrics.json").exists()
