"""Tests on the real world:tiny (built once per session by the ``world_home`` fixture, about 4 minutes)."""

from __future__ import annotations

import json
import re
import time

import pytest
from typer.testing import CliRunner

from clipadapt.cli import app
from clipadapt.data import DataConfig, load_dataset
from clipadapt.engine.zeroshot import evaluate_zero_shot
from clipadapt.models import load_model
from clipadapt.training import load_experiment, run_training
from tests.helpers import clipadapt_home

# `make test` distributes by file (pytest-xdist --dist loadfile): every test that needs world:tiny lives here, so one
# worker builds it once while the other runs the rest of the suite
pytestmark = pytest.mark.slow


def _zero_shot(bundle, task: str, templates=("simple",)) -> float:
    dataset = load_dataset(DataConfig(dataset=f"world:{task}"))
    return evaluate_zero_shot(bundle, dataset, "test", list(templates), num_workers=0).best_result.metrics["acc1"]


@pytest.fixture(scope="module")
def world_scores(world_home):
    with clipadapt_home(world_home):
        start = time.perf_counter()
        bundle = load_model("world:tiny")
        load_s = time.perf_counter() - start
        scores = {task: _zero_shot(bundle, task) for task in ("shapes", "shapes-novel", "colour", "shape")}
    return load_s, scores


def test_world_tiny_has_real_zero_shot_ability(world_scores):
    load_s, scores = world_scores
    assert load_s < 10  # the cached copy (target < 3 s; generous under test load)
    assert scores["colour"] >= 0.85, scores  # chance 1/8
    assert scores["shape"] >= 0.25, scores  # chance 1/6
    assert scores["shapes"] >= 0.30, scores  # chance 1/48
    assert scores["shapes-novel"] > 3 / 48, scores  # chance 1/48 (labelled among all 48 pairs)
    assert scores["shapes-novel"] < scores["shapes"] - 0.05, scores  # a real gap for adaptation to close


def test_world_tiny_meets_the_issue_target(world_scores):
    _, scores = world_scores
    assert scores["shapes"] >= 0.80, scores


def test_world_tiny_is_a_real_clip_checkpoint(with_world):
    bundle = load_model("world:tiny")
    assert bundle.backend == "transformers" and bundle.fingerprint.startswith("world:tiny:")
    assert type(bundle.model).__name__ == "CLIPModel"


def test_demo_runs_offline_on_the_world(with_world, tmp_path):
    from clipadapt.methods import list_methods

    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"report: {out / 'report.html'}" in result.output.replace("\n", "")
    html = (out / "report.html").read_text()
    shown = set(re.findall(r"class='method-row' data-method='([^']+)'", html))
    assert {"zeroshot", *list_methods()} <= shown  # every registered method, without listing them in the demo
    runs = [p for p in (out / "world-tiny").iterdir() if (p / "metrics.json").is_file()]
    assert len(runs) == len(list_methods()) + 1
    records = [json.loads((run / "metrics.json").read_text()) for run in runs]
    accuracy = {record["method"]: record["metrics"]["acc1"] for record in records}
    for method in ("visual-prompt", "vpt", "vision-prefix", "linear-probe", "lora"):  # measured: 0.81-0.93
        assert accuracy[method] > accuracy["zeroshot"] + 0.10, (method, accuracy)  # zero-shot 0.56 (all 48 names)
    for run in runs:
        record = json.loads((run / "metrics.json").read_text())
        robustness = json.loads((run / "robustness.json").read_text())["gaussian"]["accuracy"]
        assert robustness["0"] == pytest.approx(record["metrics"]["acc1"])
    bench = json.loads((out / "bench" / "bench.json").read_text())
    assert {r["method"] for r in bench["training"]} == set(list_methods())
    _check_demo_captions(out / "captions", result.output)


def _check_demo_captions(captions, output):
    """The demo's caption runs: a report, and captions that fit their own image better than another image."""
    from clipadapt.captioning.data import load_caption_dataset
    from clipadapt.captioning.metrics import clip_scores
    from clipadapt.captioning.runs import caption_data, load_caption_run

    assert f"caption report: {captions / 'report.html'}" in output.replace("\n", "")
    report = (captions / "report.md").read_text()
    assert "bridge-only (patch-prefix)" in report and "lora (patch-prefix)" in report
    run = captions / "lora-patch-prefix-seed0"
    experiment, model = load_caption_run(run, "cpu")
    dataset = load_caption_dataset(experiment.data)
    encoded = caption_data(experiment, dataset, model, model.bundle.device).encoded("test")
    generated = {p["image_id"]: p["caption"] for p in json.loads((run / "predictions.json").read_text())}
    images = dataset.split("test").images
    texts = [generated[images[int(p)].image_id] for p in encoded.positions]
    own = clip_scores(model.bundle, encoded.pooled, texts)["clip_score"].mean()
    shuffled = clip_scores(model.bundle, encoded.pooled.roll(1, 0), texts)["clip_score"].mean()  # nobody's own
    # measured CLIPScores, own vs shuffled: 0.577 vs 0.520 (all images, 3 epochs), 0.570 vs 0.454 (600 images, 3)
    assert own > shuffled + 0.01, (own, shuffled)

# Methods really learn: on the pretrained world:tiny, adaptation beats zero-shot by a clear margin. Measured
# (docs/benchmarks.md): world:shapes zero-shot 0.833, linear-probe 0.891, lora 0.880; world:shapes-novel with 4 shots
# zero-shot 0.603, linear-probe 0.931, lora 0.784.
def zero_shot_acc1(dataset: str) -> float:
    result = evaluate_zero_shot(load_model("world:tiny"), load_dataset(DataConfig(dataset=dataset)), "test",
                                ["simple"])
    return result.best_result.metrics["acc1"]


@pytest.mark.parametrize("dataset, shots, margin", [("world:shapes", None, 0.03), ("world:shapes-novel", 4, 0.10)])
def test_linear_probe_and_lora_beat_zero_shot(dataset, shots, margin, with_world, tmp_path):
    zero_shot = zero_shot_acc1(dataset)
    for method in ("linear-probe", "lora"):
        overrides = ["model.spec=world:tiny", f"data.dataset={dataset}", f"run.out={tmp_path / method}"]
        if shots:
            overrides.append(f"data.shots={shots}")
        record = run_training(load_experiment(method, None, overrides)).record
        assert record["metrics"]["acc1"] > zero_shot + margin, (method, record["metrics"]["acc1"], zero_shot)
        if shots:
            assert record["shots"] == shots


# The prompt methods on the task world:tiny was not pretrained for. Measured (docs/methods.md, seeds 0-2): zero-shot
# 0.594 (`simple`); coop with one context per class ~0.93. coop's shared context (its default) only ties zero-shot
# here, see the docs. visual-prompt, vpt and vision-prefix at their defaults are checked on the demo's own runs
# (same task, shots and schedule) in test_demo_runs_offline_on_the_world, which trains them anyway.
def test_class_specific_coop_beats_zero_shot_on_novel_pairs(with_world, tmp_path):
    zero_shot = zero_shot_acc1("world:shapes-novel")
    overrides = ["model.spec=world:tiny", "data.dataset=world:shapes-novel", "data.shots=8",
                 f"run.out={tmp_path / 'coop'}", "coop.class_specific=true"]
    record = run_training(load_experiment("coop", None, overrides)).record
    assert record["metrics"]["acc1"] > zero_shot + 0.10, (record["metrics"]["acc1"], zero_shot)
    assert record["shots"] == 8 and record["selection"]["val_acc"] > 0
