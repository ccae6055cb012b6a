"""The configs in configs/: each loads and validates offline through its command's loader with exactly the values it
states, its header's commands are real commands with real options and settings, an unknown key is refused in one
line, and a train and a compare file run from the command line (with offline stand-ins for their model and data)."""

from __future__ import annotations

import itertools
import json
import re
import shlex
from pathlib import Path

import pytest
import typer.main
import yaml
from typer.testing import CliRunner

from clipadapt.captioning.methods import CAPTION_METHODS
from clipadapt.captioning.runs import load_caption_experiment
from clipadapt.classification.experiment import load_experiment
from clipadapt.classification.zeroshot import ZeroShotExperiment
from clipadapt.cli import app
from clipadapt.config import load_config, to_dict
from clipadapt.experiments.compare import CompareFile, load_compare_config, planned_experiments
from clipadapt.experiments.sweep import parse_sweep

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
COMMAND_LINE = "#   clipadapt "  # a header line that is a command


def _leaves(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _commands(path: Path) -> list[list[str]]:
    """The header's command lines, as argument lists without ``clipadapt``."""
    return [shlex.split(line[len(COMMAND_LINE):]) for line in path.read_text().splitlines()
            if line.startswith(COMMAND_LINE)]


def _kind(path: Path) -> str:
    """Which command the file is for: its header's first command (train, caption train, zeroshot, compare)."""
    args = _commands(path)[0]
    return "caption train" if args[:2] == ["caption", "train"] else args[0]


def _load(path: Path):
    """The file through the loader its command uses (no model or dataset is loaded)."""
    raw = yaml.safe_load(path.read_text())
    kind = _kind(path)
    if kind == "train":
        return load_experiment(raw["method"], path)
    if kind == "caption train":
        return load_caption_experiment(raw["method"], path)
    if kind == "zeroshot":
        return load_config(ZeroShotExperiment, path)
    assert kind == "compare", kind
    return load_compare_config(path, {}, [])


def test_there_are_configs_for_every_command():
    assert {_kind(path) for path in CONFIGS} == {"train", "caption train", "zeroshot", "compare"}


def test_the_reports_experiments_are_shipped():
    names = {path.stem for path in CONFIGS}
    for dataset in ("flowers102", "cub200"):
        assert {f"{dataset}-zeroshot", f"{dataset}-linear-probe", f"{dataset}-lora"} <= names
    for dataset in ("cifar10", "cifar100"):
        assert {f"{dataset}-{name}" for name in ("visual-prompt-padding", "visual-prompt-fixed-patch", "vpt-deep",
                                                 "baseline", "baseline-flip")} <= names
    assert {"coco-caption-prefix", "coco-caption-adapter", "coco-caption-lora", "cifar100-compare"} <= names


def test_docs_list_every_config_with_its_command():
    text = (CONFIGS[0].parents[1] / "docs" / "configs.md").read_text()
    for path in CONFIGS:
        command = "clipadapt " + " ".join(_commands(path)[0])
        generic = re.sub(r"cifar100?-", "DATASET-", command)  # the CIFAR rows stand for both datasets
        assert f"`{command}`" in text or f"`{generic}`" in text, path.name


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_with_the_values_it_states(path):
    raw = yaml.safe_load(path.read_text())
    loaded = _load(path)
    if _kind(path) == "compare":
        resolved = {key: value for key, value in to_dict(loaded).items()}
        for key, value in raw.items():
            if key != "settings":
                assert resolved[key] == value, key
        for experiment in planned_experiments(loaded):  # each run has the settings of the sections it has
            mine = to_dict(experiment)
            for key, value in _leaves(raw["settings"]).items():
                section, _, name = key.partition(".")
                if section in mine:
                    assert mine[section][name] == value, (experiment.method if hasattr(experiment, "method")
                                                          else "zeroshot", key)
        usage = f"clipadapt compare --config configs/{path.name}"
    else:
        resolved = _leaves(to_dict(loaded))
        for key, value in _leaves(raw).items():
            assert resolved[key] == value, key
        method = f" {raw['method']}" if "method" in raw else ""
        usage = f"clipadapt {_kind(path)}{method} --config configs/{path.name}"
    assert usage in path.read_text(), "the file's header shows how to run it"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_header_commands_are_real_commands_with_real_settings(path):
    """Each command line of the header names a command of the CLI, a registered method, options the command has,
    and --set / --sweep values that every run they make accepts."""
    root = typer.main.get_command(app)
    commands = _commands(path)
    assert commands, "the header gives the command"
    for args in commands:
        command, rest = root, list(args)
        while hasattr(command, "commands"):  # a group: the next word is its subcommand
            assert rest[0] in command.commands, f"no command '{rest[0]}' in {args}"
            command, rest = command.commands[rest.pop(0)], rest
        options = {name for param in command.params for name in param.opts if name.startswith("-")}
        raw = yaml.safe_load(path.read_text())
        if "method" in raw:
            method, rest = rest[0], rest[1:]
            assert method == raw["method"], "the command trains the file's method"
        items: dict[str, list[str]] = {"--set": [], "--sweep": []}
        for word, value in zip(rest, rest[1:] + [""], strict=True):
            if word.startswith("-"):
                assert word in options, f"'{word}' is not an option of {args[:2]}"
                items.setdefault(word, []).append(value)
        assert items["--config"] == [f"configs/{path.name}"]
        if _kind(path) == "train":
            axes = parse_sweep(items["--sweep"])
            cells = [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]
            assert len(cells) == (9 if "vpt-deep" in path.name else 1)
            for cell in cells:
                load_experiment(raw["method"], path, items["--set"] + [f"{k}={v}" for k, v in cell.items()])
        elif _kind(path) == "caption train":
            assert raw["method"] in CAPTION_METHODS.names()
            load_caption_experiment(raw["method"], path, items["--set"])
        else:
            assert not items["--set"] and not items["--sweep"]


def _with_unknown_key(path: Path, tmp_path: Path, where: str | None) -> Path:
    raw = yaml.safe_load(path.read_text())
    if where is None:
        raw["epochz"] = 3
    else:
        node = raw
        for key in where.split("."):
            node = node.setdefault(key, {})
        node["epochz"] = 3
    bad = tmp_path / path.name
    bad.write_text(yaml.safe_dump(raw))
    return bad


@pytest.mark.parametrize("name, command, where, valid", [
    ("world-lora.yaml", ["train", "lora"], None, "valid keys: method, model, data, train, features, run, eval, lora"),
    ("world-lora.yaml", ["train", "lora"], "train", "valid keys: epochs, steps, batch_size"),
    ("flowers102-zeroshot.yaml", ["zeroshot"], "zeroshot", "valid keys: templates, select_on, text_batch_size"),
    ("world-captions-lora.yaml", ["caption", "train", "lora"], "decode", "valid keys: max_new_tokens"),
    ("cifar100-compare.yaml", ["compare"], None, "valid keys: models, dataset, methods, seeds"),
    ("cifar100-compare.yaml", ["compare"], "settings.train", "(train has: epochs, steps, batch_size"),
])
def test_an_unknown_key_is_one_line_exit_2_and_nothing_written(name, command, where, valid, tmp_path):
    bad = _with_unknown_key(Path(CONFIGS[0].parent / name), tmp_path, where)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [*command, "--config", str(bad), "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "epochz" in lines[0] and valid in lines[0], lines[0]
    assert not out.exists() and not list(tmp_path.glob(".*"))


def test_a_compare_file_names_only_what_a_comparison_takes(tmp_path):
    bad = tmp_path / "compare.yaml"
    bad.write_text("models: [world:tiny]\ndataset: world:shapes\nsettings: [train.epochs=2]\n")
    with pytest.raises(Exception, match="settings must be a mapping"):
        load_compare_config(bad, {}, [])
    bad.write_text("models: [world:tiny]\ndataset: world:shapes\nmethods: [lora]\nsettings: {vpt: {tokens: 4}}\n")
    with pytest.raises(Exception, match="unknown section 'vpt'; valid sections:"):
        load_compare_config(bad, {}, [])
    assert {"models", "dataset", "settings"} <= {name for name in CompareFile.__dataclass_fields__}


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


def test_compare_file_runs_from_the_command_line_and_flags_win(tiny_clip_dir, colour_folder, tmp_path):
    config = tmp_path / "compare.yaml"
    config.write_text(yaml.safe_dump({
        "models": [str(tiny_clip_dir)], "dataset": f"imagefolder:{colour_folder}", "methods": ["linear-head"],
        "seeds": [0, 1], "templates": ["simple"], "out": str(tmp_path / "from-file"),
        "settings": {"train": {"epochs": 1, "warmup": 0.2, "patience": 0}, "data": {"num_workers": 0},
                     "linear_head": {"lr": 0.01}}}))
    out = tmp_path / "cmp"
    result = CliRunner().invoke(app, ["compare", "--config", str(config), "--seeds", "3", "--out", str(out),
                                      "--set", "train.patience=2"])
    assert result.exit_code == 0, result.output
    model_dir = next(out.iterdir()) if out.is_dir() else None
    assert model_dir is not None and sorted(p.name for p in model_dir.iterdir() if p.is_dir()) == [
        "linear-head-seed3", "zeroshot"]  # --seeds and --out win over the file's
    run = yaml.safe_load((model_dir / "linear-head-seed3" / "config.yaml").read_text())
    assert (run["train"]["epochs"], run["train"]["warmup"], run["linear_head"]["lr"]) == (1, 0.2, 0.01)  # the file
    assert run["train"]["patience"] == 2  # --set after the file's settings
    zeroshot = yaml.safe_load((model_dir / "zeroshot" / "config.yaml").read_text())
    assert zeroshot["zeroshot"]["templates"] == ["simple"] and not (tmp_path / "from-file").exists()
