from __future__ import annotations

import json
import shutil

import pytest
import yaml
from typer.testing import CliRunner

from clipadapt.cli import app
from tests.helpers import make_image_folder, write_bad_images

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def folder_with_bad_images(tmp_path, colour_folder):
    root = tmp_path / "with-bad"
    shutil.copytree(colour_folder, root)
    bad = write_bad_images(root / "red")
    return root, bad


def test_listing_commands():
    models = invoke("models")
    assert models.exit_code == 0 and "ViT-B/32" in models.output and "random:tiny" in models.output
    datasets = invoke("datasets")
    assert datasets.exit_code == 0 and "imagefolder:PATH" in datasets.output and "flowers102" in datasets.output
    templates = invoke("templates")
    assert templates.exit_code == 0 and "clip" in templates.output and "80" in templates.output
    one = invoke("templates", "flowers")
    assert one.output.strip() == "a photo of a {}, a type of flower."


def test_zeroshot_on_image_folder_writes_a_complete_run(tmp_path, tiny_clip_dir, colour_folder):
    out = tmp_path / "run"
    result = invoke("zeroshot", "--model", tiny_clip_dir, "--dataset", f"imagefolder:{colour_folder}",
                    "-t", "simple", "-t", "clip", "-t", "an image mostly coloured {}.", "--out", out)
    assert result.exit_code == 0, result.output
    assert "template set" in result.output and "an image mostly coloured" in result.output
    for name in ("config.yaml", "metrics.json", "confusion.png", "per_class.csv", "predictions.png"):
        assert (out / name).is_file(), name
    record = json.loads((out / "metrics.json").read_text())
    for key in ("method", "model", "dataset", "split", "metrics", "params", "cost", "seed", "config", "env"):
        assert key in record
    assert set(record["metrics"]) >= {"acc1", "acc5", "mean_per_class_acc", "n"}
    assert record["metrics"]["n"] == 6 and record["split"] == "test" and record["method"] == "zeroshot"
    assert set(record["env"]) >= {"clipadapt", "torch", "transformers", "device"}
    assert set(record["templates"]) == {"simple", "clip", "an image mostly coloured {}."}
    assert record["metrics"] == record["templates"][record["best_template_set"]]["metrics"]
    assert record["selected_on"] == "val"
    assert record["params"]["trainable"] == 0 and record["params"]["total"] > 0
    lines = (out / "per_class.csv").read_text().splitlines()
    assert lines[0].startswith("class_index,class,precision,recall") and len(lines) == 4
    # the saved config reproduces the run
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["zeroshot"]["templates"] == ["simple", "clip", "an image mostly coloured {}."]
    again = invoke("zeroshot", "--config", out / "config.yaml", "--out", tmp_path / "again")
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "again" / "metrics.json").read_text())["metrics"] == record["metrics"]


def test_custom_classes_and_template_file(tmp_path, tiny_clip_dir, colour_folder):
    templates = tmp_path / "templates.txt"
    templates.write_text("# my prompts\nan image mostly coloured {}.\n\na {} picture.\n")
    result = invoke("zeroshot", "-m", tiny_clip_dir, "-d", f"imagefolder:{colour_folder}", "--classes",
                    "red,green,blue", "-t", templates, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["templates"]["templates"]["templates"] == ["an image mostly coloured {}.", "a {} picture."]
    assert record["config"]["data"]["classes"] == ["red", "green", "blue"]


def test_skipped_images_are_counted_and_listed(tmp_path, tiny_clip_dir, folder_with_bad_images):
    root, bad = folder_with_bad_images
    out = tmp_path / "run"
    result = invoke("zeroshot", "-m", tiny_clip_dir, "-d", f"imagefolder:{root}", "--split", "all",
                    "-t", "simple", "--out", out)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "metrics.json").read_text())
    assert record["skipped_images"]["count"] == len(bad) == 4
    assert record["metrics"]["n"] == 24  # 3 classes x 8 readable images
    listed = (out / "skipped_images.txt").read_text().splitlines()
    assert sorted(line.split("\t")[1].rsplit("/", 1)[1] for line in listed) == sorted(bad)
    reasons = " ".join(listed)
    for word in ("truncated", "empty", "not an image", "decompression bomb"):
        assert word in reasons


def test_strict_aborts_without_writing_a_run(tmp_path, tiny_clip_dir, folder_with_bad_images):
    root, _ = folder_with_bad_images
    out = tmp_path / "run"
    result = invoke("zeroshot", "-m", tiny_clip_dir, "-d", f"imagefolder:{root}", "--split", "all",
                    "--strict", "--out", out)
    assert result.exit_code == 2
    assert "unreadable image" in result.output and "--strict" in result.output
    assert "Traceback" not in result.output
    assert not out.exists() and not list(tmp_path.glob(".run*"))


@pytest.mark.parametrize("args, message", [
    (["-m", "nope", "-d", "digits"], "unknown model 'nope'; valid choices:"),
    (["-m", "{model}", "-d", "imagenet-21k"], "unknown dataset 'imagenet-21k'; valid choices:"),
    (["-m", "{model}", "-d", "digits", "-t", "fancy"], "unknown template set 'fancy'; valid choices:"),
    (["-m", "{model}", "-d", "digits", "-t", "a photo of a thing"], "has no '{}' placeholder"),
    (["-m", "{model}", "-d", "digits", "--classes", " , "], "--classes is empty"),
    (["-m", "{model}", "-d", "digits", "--classes", "a,b"], "gives 2 names but dataset 'digits' has 10"),
    (["-m", "{model}", "-d", "imagefolder:{empty}"], "no class folders"),
    (["-m", "./no/such/model", "-d", "digits"], "model path './no/such/model' does not exist"),
    (["-m", "someorg/some-clip", "-d", "digits"], "hf download someorg/some-clip"),
    (["-m", "{model}", "-d", "digits", "--split", "dev"], "has no split 'dev'; valid choices: train, val, test"),
    (["-m", "{model}", "-d", "digits", "--set", "data.bogus=1"], "unknown config key 'data.bogus'"),
    (["-m", "{model}", "-d", "digits", "--set", "data.batch_size=0"], "data.batch_size must be positive"),
])
def test_bad_input_is_one_line_exit_2_and_no_run_directory(tmp_path, tiny_clip_dir, args, message):
    (tmp_path / "empty").mkdir()
    args = [a.format(model=tiny_clip_dir, empty=tmp_path / "empty") for a in args]
    out = tmp_path / "run"
    result = invoke("zeroshot", *args, "--out", out)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert result.output.strip().startswith("error:") and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_existing_run_directory_needs_overwrite(tmp_path, tiny_clip_dir, colour_folder):
    out = tmp_path / "run"
    args = ["zeroshot", "-m", tiny_clip_dir, "-d", f"imagefolder:{colour_folder}", "-t", "simple", "--out", out]
    assert invoke(*args).exit_code == 0
    before = (out / "metrics.json").read_text()
    second = invoke(*args)
    assert second.exit_code == 2 and "already exists; pass --overwrite" in second.output
    assert (out / "metrics.json").read_text() == before
    assert invoke(*args, "--overwrite").exit_code == 0


def test_image_folder_with_split_folders_from_cli(tmp_path, tiny_clip_dir):
    root = make_image_folder(tmp_path / "splits", per_class=3, splits=("train", "val", "test"))
    result = invoke("zeroshot", "-m", tiny_clip_dir, "-d", f"imagefolder:{root}", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]["n"] == 9


def test_tables_keep_method_and_run_names_whole_at_80_columns():
    from pathlib import Path

    from rich.console import Console

    from clipadapt.cli.common import result_table
    from clipadapt.cli.compare import report_table
    from clipadapt.reports.collect import RunInfo, table_rows
    from clipadapt.reports.report import ReportResult

    methods = ["linear-probe", "baseline-flip", "vision-prefix", "visual-prompt", "linear-head"]
    runs = []
    for i, method in enumerate(methods):
        for seed in (0, 1, 2):  # mean ± std cells make the table wide
            record = {"method": method, "model": "openai/clip-vit-large-patch14-336", "dataset": "flowers102",
                      "seed": seed, "metrics": {"acc1": 0.9 - i / 100 - seed / 1000, "acc5": 0.99 - seed / 1000,
                                                "mean_per_class_acc": 0.88},
                      "params": {"trainable": 123_456_789, "trainable_pct": 12.3456},
                      "cost": {"train_time_s": 12345.6, "peak_mem_mb": 23456.0, "eval_images_per_s": 1234.5}}
            runs.append(RunInfo(Path(f"runs/{method}-seed{seed}"), {"method": method}, record))
    report = ReportResult(Path("r.md"), Path("r.html"), table_rows(runs), [])
    console = Console(width=80, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(report_table(report))
    run_dir = "runs/compare/vit-l-14-336/vision-prefix-seed0"
    console.print(result_table(["run", "sigma 0", "sigma 0.05", "sigma 0.1", "sigma 0.2", "sigma 0.4"],
                               [[run_dir, "0.9", "0.8", "0.7", "0.6", "0.5"]]))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert all(line.rstrip()[-1] in "┓┃┩│┘" for line in text.splitlines() if line.lstrip()[:1] in "┏┃┡│└")
    for name in methods + [run_dir]:
        assert name in text, name
    assert "…" not in text
