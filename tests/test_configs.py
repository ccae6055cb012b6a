"""The example configs in configs/: each loads through its command's loader with exactly the values it states, and
one trains from the command line (with offline stand-ins for its model and data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from clipadapt.captioning.runs import load_caption_experiment
from clipadapt.classification.experiment import load_experiment
from clipadapt.cli import app
from clipadapt.config import to_dict

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def _leaves(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_there_are_examples_for_both_tasks():
    tasks = {yaml.safe_load(path.read_text()).get("task", "classification") for path in CONFIGS}
    assert len(CONFIGS) >= 4 and tasks == {"classification", "captioning"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_with_the_values_it_states(path):
    raw = yaml.safe_load(path.read_text())
    load = load_caption_experiment if raw.get("task") == "captioning" else load_experiment
    resolved = _leaves(to_dict(load(raw["method"], path)))
    for key, value in _leaves(raw).items():
        assert resolved[key] == value, key
    usage = f"clipadapt {'caption train' if raw.get('task') == 'captioning' else 'train'} {raw['method']} " \
            f"--config configs/{path.name}"
    assert usage in path.read_text(), "the file's header shows how to run it"


def test_world_config_trains_from_the_command_line(tiny_clip_dir, colour_folder, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "train", "lora", "--config", str(CONFIGS[0].parent / "world-lora.yaml"), "--model", str(tiny_clip_dir),
        "--dataset", f"imagefolder:{colour_folder}", "--shots", "4", "--epochs", "1", "--out", str(out),
        "--set", "data.num_workers=0"])
    assert result.exit_code == 0, result.output
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["lora"]["targets"] == ["q_proj", "v_proj"] and config["train"]["patience"] == 3  # from the file
    assert config["train"]["epochs"] == 1 and config["model"]["spec"] == str(tiny_clip_dir)  # the flags win
    assert json.loads((out / "metrics.json").read_text())["method"] == "lora"
