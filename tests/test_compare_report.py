"""compare, report, predict, robustness and bench on the tiny random CLIP (numbers read back, not recomputed)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from clipadapt.classification.report import COLUMNS
from clipadapt.cli import app
from clipadapt.errors import ClipAdaptError
from clipadapt.experiments.compare import CompareConfig, run_compare
from clipadapt.experiments.report import build_report
from clipadapt.reports.collect import find_runs, mean_std
from tests.helpers import clipadapt_home, require_or_skip

runner = CliRunner()
METHODS = ["linear-head", "lora"]


@pytest.fixture(scope="module")
def compared(tmp_path_factory, tiny_clip_dir, colour_folder):
    """One small compare: zero-shot, linear-head and lora with seeds 0 and 1."""
    root = tmp_path_factory.mktemp("compare")
    with clipadapt_home(root / "home"):
        config = CompareConfig(models=[str(tiny_clip_dir)], dataset=f"imagefolder:{colour_folder}",
                               methods=list(METHODS), seeds=[0, 1], out=str(root / "out"),
                               overrides=["train.epochs=2", "data.num_workers=0", "run.samples=4"],
                               templates=["simple"], device="cpu")
        result = run_compare(config)
    return root / "out", result


def markdown_rows(report: Path) -> dict[str, list[str]]:
    rows = {}
    for line in report.read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("|") and len(cells) == len(COLUMNS) and cells[0] not in ("model", "---"):
            rows[cells[1]] = cells
    return rows


def test_compare_writes_one_run_per_method_and_seed(compared):
    out, result = compared
    model_dirs = [p for p in out.iterdir() if p.is_dir() and p.name != "report_files"]
    assert len(model_dirs) == 1
    names = sorted(p.name for p in model_dirs[0].iterdir())
    assert names == ["linear-head-seed0", "linear-head-seed1", "lora-seed0", "lora-seed1", "zeroshot"]
    assert not result.failed and len(result.finished) == 5
    assert (out / "report.md").is_file() and (out / "report.html").is_file()


def test_compare_two_models_one_table(tmp_path, tiny_clip_dir, colour_folder):
    from clipadapt.experiments.compare import plan
    from clipadapt.models.random_init import save_random_clip

    other = save_random_clip(tmp_path / "other-clip", "tiny", seed=1)
    config = CompareConfig(models=[str(tiny_clip_dir), str(other)], dataset=f"imagefolder:{colour_folder}",
                           methods=["linear-probe"], out=str(tmp_path / "two"), templates=["simple"],
                           overrides=["data.num_workers=0", "run.samples=0"], device="cpu")
    assert [(Path(r.model).name, r.method) for r in plan(config)] == [
        ("tiny-clip", "zeroshot"), ("tiny-clip", "linear-probe"), ("other-clip", "zeroshot"),
        ("other-clip", "linear-probe")]
    result = run_compare(config)
    assert not result.failed
    assert {(Path(row.model).name, row.method) for row in result.report.rows} == {
        ("tiny-clip", "zeroshot"), ("tiny-clip", "linear-probe"), ("other-clip", "zeroshot"),
        ("other-clip", "linear-probe")}


def test_report_numbers_equal_the_run_files(compared):
    out, _ = compared
    rows = markdown_rows(out / "report.md")
    runs = [r for r in find_runs([out]) if r.complete]
    for method in METHODS:
        records = [r.record for r in runs if r.method == method]
        acc1 = [rec["metrics"]["acc1"] for rec in records]
        mean, std = float(np.mean(acc1)), float(np.std(acc1, ddof=1))
        assert rows[method][3] == f"{mean:.4f} ± {std:.4f}"
        assert rows[method][2] == "0,1"
        ece = [rec["metrics"]["ece"] for rec in records]
        assert rows[method][COLUMNS.index("ECE")] == f"{np.mean(ece):.4f} ± {np.std(ece, ddof=1):.4f}"
        assert rows[method][COLUMNS.index("trainable params")] == f"{records[0]['params']['trainable']:,}"
        time_mean = float(np.mean([rec["cost"]["train_time_s"] for rec in records]))
        assert rows[method][COLUMNS.index("train time (s)")] == f"{time_mean:.1f}"
    zero_shot = next(r.record for r in runs if r.method == "zeroshot")
    assert rows["zeroshot (simple)"][3] == f"{zero_shot['metrics']['acc1']:.4f}"
    assert rows["zeroshot (simple)"][COLUMNS.index("ECE")] == f"{zero_shot['metrics']['ece']:.4f}"


def test_baseline_rows_name_the_classifier_they_used(compared, tiny_clip_dir, tiny_resnet_dir, colour_folder,
                                                     tmp_path):
    """A baseline loads the comparison's CLIP model but classifies with its own image classifier: metrics.json, the
    report's model column (md and html) and the terminal table name the classifier; the row stays in its CLIP
    model's group."""
    from rich.console import Console

    from clipadapt.classification.training import run_training
    from clipadapt.cli.compare import report_table
    from tests.test_methods import experiment

    out, _ = compared
    baseline = run_training(experiment("baseline", tiny_clip_dir, colour_folder, tmp_path / "baseline",
                                       f"baseline.classifier={tiny_resnet_dir}", "train.epochs=1", "run.samples=0"))
    assert baseline.record["model"] == str(tiny_resnet_dir)
    assert baseline.record["config"]["model"]["spec"] == str(tiny_clip_dir)
    report = build_report([out, tmp_path / "baseline"], tmp_path / "report")
    models = {row.method: row.model for row in report.rows}
    assert models["baseline"] == str(tiny_resnet_dir)
    assert models["lora"] == models["linear-head"] == models["zeroshot"] == str(tiny_clip_dir)
    assert {row.model_spec for row in report.rows} == {str(tiny_clip_dir)}  # one group: zero-shot first
    assert report.rows[0].method == "zeroshot"
    rows = markdown_rows(tmp_path / "report" / "report.md")
    assert rows["baseline"][0] == str(tiny_resnet_dir) and rows["lora"][0] == str(tiny_clip_dir)
    html = (tmp_path / "report" / "report.html").read_text()
    baseline_row = html.split("data-method='baseline'>", 1)[1].split("</tr>", 1)[0]
    assert f"<td>{tiny_resnet_dir}</td>" in baseline_row and str(tiny_clip_dir) not in baseline_row
    console = Console(width=250, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(report_table(report))
    lines = console.export_text().splitlines()
    assert "model" in next(line for line in lines if "method" in line)
    assert str(tiny_resnet_dir) in next(line for line in lines if " baseline " in line)


def test_mean_and_sample_std():
    assert mean_std([0.5, 0.7]) == pytest.approx((0.6, 0.1414213562))
    assert mean_std([0.8]) == (0.8, 0.0)
    assert mean_std([0.2, 0.4, 0.9]) == pytest.approx((0.5, float(np.std([0.2, 0.4, 0.9], ddof=1))))


def test_skip_existing_keeps_finished_runs_and_redoes_missing_ones(compared, tiny_clip_dir, colour_folder):
    out, _ = compared
    metrics = sorted(out.rglob("metrics.json"))
    before = {p: p.stat().st_mtime_ns for p in metrics}
    lost = next(p for p in metrics if p.parent.name == "lora-seed1")
    shutil.copyfile(lost, lost.with_suffix(".bak"))
    lost.unlink()  # as if interrupted
    config = CompareConfig(models=[str(tiny_clip_dir)], dataset=f"imagefolder:{colour_folder}",
                           methods=list(METHODS), seeds=[0, 1], out=str(out), skip_existing=True,
                           overrides=["train.epochs=2", "data.num_workers=0", "run.samples=4"],
                           templates=["simple"], device="cpu")
    with clipadapt_home(out.parent / "home"):
        result = run_compare(config)
    assert [p.name for p in result.finished] == ["lora-seed1"] and len(result.skipped) == 4
    for path, mtime in before.items():
        if path != lost:
            assert path.stat().st_mtime_ns == mtime, f"{path} was retrained"
    redone = json.loads(lost.read_text())
    assert redone["metrics"] == json.loads(lost.with_suffix(".bak").read_text())["metrics"]  # deterministic


def test_existing_compare_directory_needs_a_choice(compared, tiny_clip_dir, colour_folder):
    out, _ = compared
    config = CompareConfig(models=[str(tiny_clip_dir)], dataset=f"imagefolder:{colour_folder}",
                           methods=list(METHODS), out=str(out), templates=["simple"])
    with pytest.raises(ClipAdaptError, match="already exist.*--skip-existing"):
        run_compare(config)


def test_overrides_for_unknown_sections_are_refused(tmp_path, tiny_clip_dir, colour_folder):
    config = CompareConfig(models=[str(tiny_clip_dir)], dataset=f"imagefolder:{colour_folder}",
                           methods=["lora"], out=str(tmp_path / "c"), overrides=["lorra.r=4"])
    with pytest.raises(ClipAdaptError, match="unknown section 'lorra'"):
        run_compare(config)
    assert not (tmp_path / "c").exists()


def test_report_refuses_mixed_datasets_and_lists_incomplete_runs(compared, tmp_path, tiny_clip_dir):
    out, _ = compared
    other = tmp_path / "other"
    shutil.copytree(next(p for p in out.rglob("linear-head-seed0")), other / "run")
    record = json.loads((other / "run/metrics.json").read_text())
    record["dataset"] = "digits"
    (other / "run/metrics.json").write_text(json.dumps(record))
    with pytest.raises(ClipAdaptError, match="different datasets"):
        build_report([out, other], tmp_path / "merged")
    grouped = build_report([out, other], tmp_path / "merged", group=True)
    assert {r.dataset for r in grouped.rows} == {"digits", record["config"]["data"]["dataset"]}

    interrupted = tmp_path / "interrupted"
    shutil.copytree(other / "run", interrupted / "run")
    (interrupted / "run/metrics.json").unlink()
    result = runner.invoke(app, ["report", str(out), str(interrupted), "--out", str(tmp_path / "r2")])
    assert result.exit_code == 0, result.output
    assert "incomplete (no metrics.json)" in result.output
    assert "Incomplete runs" in (tmp_path / "r2/report.md").read_text()


def test_predict_probabilities_equal_the_runs_own_evaluation(compared):
    from clipadapt.classification.evaluation import load_run
    from clipadapt.classification.predict import predict_images
    from clipadapt.classification.predictors import load_predictor

    out, _ = compared
    for method in METHODS:
        run_dir = next(out.rglob(f"{method}-seed0"))
        predictor = load_predictor(run_dir, "cpu")
        _, dataset, loaded = load_run(run_dir, "cpu")
        from clipadapt.engine.inputs import TrainingData
        from clipadapt.engine.trainer import TrainConfig, Trainer, make_accelerator

        data = TrainingData(dataset, loaded.bundle, eval_batch_size=64, num_workers=0, preprocess=loaded.preprocess)
        evaluation = Trainer(TrainConfig(), data, make_accelerator(torch.device("cpu"), "fp32")).evaluate(loaded,
                                                                                                         "test")
        test = dataset.split("test")
        images = [Path(test.describe(int(p))) for p in evaluation.positions[:3]]
        results, skipped = predict_images([predictor], images, topk=3)
        assert not skipped
        expected = evaluation.logits[:3].softmax(dim=-1).numpy()
        got = np.stack([r.probabilities[predictor.label] for r in results])
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_predict_cli_skips_non_images(compared, tmp_path):
    out, _ = compared
    run_dir = next(out.rglob("lora-seed0"))
    image = next(p for p in Path(json.loads((run_dir / "metrics.json").read_text())["config"]["data"]["dataset"]
                                 .split(":", 1)[1]).rglob("*.png"))
    (tmp_path / "notes.jpg").write_text("not an image")
    result = runner.invoke(app, ["predict", str(run_dir), str(image), str(tmp_path / "notes.jpg"), "--topk", "2",
                                 "--out", str(tmp_path / "pred")])
    assert result.exit_code == 0, result.output
    assert "skipped" in result.output and "notes.jpg" in result.output
    charts = list((tmp_path / "pred").glob("*.png"))
    assert len(charts) == 1 and f"bar chart: {charts[0]}" in result.output.replace("\n", "")


def test_robustness_at_sigma_zero_is_the_clean_accuracy(compared):
    from clipadapt.classification.predictors import load_predictor
    from clipadapt.classification.robustness import evaluate_robustness

    out, _ = compared
    for name in ("zeroshot", "linear-head-seed0", "lora-seed0"):
        run_dir = next(out.rglob(name))
        clean = json.loads((run_dir / "metrics.json").read_text())["metrics"]["acc1"]
        entry = evaluate_robustness(load_predictor(run_dir, "cpu"), "gaussian", [0.0, 0.3], seed=0)
        assert entry["accuracy"]["0"] == pytest.approx(clean)
        saved = json.loads((run_dir / "robustness.json").read_text())
        assert saved["gaussian"]["accuracy"] == entry["accuracy"] and (run_dir / "robustness.png").is_file()
    again = evaluate_robustness(load_predictor(run_dir, "cpu"), "gaussian", [0.3], seed=0)
    assert again["accuracy"]["0.3"] == entry["accuracy"]["0.3"]  # seeded noise


def test_robustness_rejects_negative_sigma(compared):
    out, _ = compared
    result = runner.invoke(app, ["robustness", str(next(out.rglob("lora-seed0"))), "--sigmas", "0,-0.1"])
    assert result.exit_code == 2 and "must be >= 0" in result.output


def test_bench_reports_positive_figures_for_both_modes(compared, tiny_clip_dir, tmp_path):
    from clipadapt.experiments.bench import run_bench
    from clipadapt.experiments.bench_report import accuracy_vs_speed

    results = run_bench([str(tiny_clip_dir)], batch=4, methods=["linear-head", "lora"], iterations=2, steps=1,
                        device="cpu", modes=["inference_mode", "grad_enabled"])
    assert [r["mode"] for r in results["inference"]] == ["inference_mode", "grad_enabled"]
    for row in results["inference"]:
        assert row["images_per_s"] > 0 and row["latency_ms_p95"] >= row["latency_ms_p50"] > 0
        assert row["peak_mem_mb"] > 0 and row["params"] > row["forward_params"] > 0  # the image tower of a CLIP
        assert row["model_kind"] == "clip"
    assert [r["method"] for r in results["training"]] == ["linear-head", "lora"]
    assert all(r["train_images_per_s"] > 0 and r["peak_mem_mb"] > 0 for r in results["training"])

    out, _ = compared  # with a compare directory: every compared method placed at its model's speed
    study = accuracy_vs_speed(results, out, tmp_path / "speed.png")
    speed = next(r["images_per_s"] for r in results["inference"] if r["mode"] == "inference_mode")
    points = study["points"]
    assert len(points) == 3 and all(p["x"] == speed for p in points) and (tmp_path / "speed.png").is_file()
    assert study["pearson"] is None and not study["left_out"]  # one model, one speed: r is undefined


def test_bench_child_failure_is_one_clear_error(tmp_path):
    from clipadapt.errors import ClipAdaptError
    from clipadapt.experiments.bench import measure_in_child

    missing = tmp_path / "no-model"
    with pytest.raises(ClipAdaptError) as error:
        measure_in_child("inference", model=str(missing), batch=2, dtype="fp32", mode="inference_mode",
                         iterations=1, device="cpu")
    assert str(missing) in str(error.value) and "\n" not in str(error.value)


def test_bench_child_sees_the_environment_of_the_call_not_of_the_server(monkeypatch):
    from clipadapt.experiments.bench import run_in_child

    assert run_in_child(os.getpid) != os.getpid()  # the forkserver is up from here on
    monkeypatch.setenv("CLIPADAPT_HOME", "/somewhere/else")  # a later $CLIPADAPT_HOME, as a test or user sets it
    assert run_in_child(os.getenv, "CLIPADAPT_HOME") == "/somewhere/else"
    first, second = run_in_child(os.getpid), run_in_child(os.getpid)
    assert first != second  # a process per call


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
def test_report_html_renders_in_headless_chromium(request, tmp_path):
    chromium = _chromium()
    require_or_skip(chromium is not None, "Chromium (`chromium` or `chromium-browser` on PATH)")
    out, _ = request.getfixturevalue("compared")  # only once Chromium is there: the compare takes a while
    report = build_report([out], tmp_path / "report")
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
               report.html.resolve().as_uri()]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=120).stdout
    images = re.search(r'data-images="(\d+)"', dom)
    broken = re.search(r'data-broken-images="(\d+)"', dom)
    assert images and broken, dom[:500]
    assert int(images.group(1)) >= 5 and int(broken.group(1)) == 0
    summary = dom.split("class=\"summary\"", 1)[1].split("</table>", 1)[0]
    methods = re.findall(r"class=\"method-row\" data-method=\"([^\"]+)\"", summary)
    assert sorted(methods) == sorted(["zeroshot", *METHODS])
