"""Tests on the real world:tiny (built once per session by the ``world_home`` fixture, about 4 minutes)."""

from __future__ import annotations

import time

import pytest

from clipadapt.classification.experiment import load_experiment
from clipadapt.classification.training import run_training
from clipadapt.data import DataConfig, load_dataset
from clipadapt.engine.zeroshot import evaluate_zero_shot
from clipadapt.models import load_model
from tests.helpers import (
    clipadapt_home,
    documented_thread_figures,
    documented_world_figures,
    documented_world_spread,
)

# `make test` distributes by file (pytest-xdist --dist loadfile) in collection order, and conftest.py puts this file
# first: one worker starts building world:tiny at once and runs these tests, the other runs the rest of the suite.
# The demo comes last in this file (checks in tests/demo_checks.py): the same worker runs it once the world is built.
pytestmark = pytest.mark.slow


# docs/world.md records what world:tiny's default recipe scores zero-shot (acc1 on the test split, template `simple`),
# and what the same recipe scores when built with 1, 2 and 4 torch threads (its '| threads |' table). Every builder
# fixes its own thread count (world/reproducible.py), so on one machine `make test`, `make demo` and the CLI build the
# same weights and the documented figures exactly; another machine (another instruction set) may land elsewhere, as
# another thread count does. So the world built here must hold each documented figure within the spread measured
# across thread counts (plus 0.001: both figures are rounded to 3 decimals in the docs), never closer: a change of
# the world beyond that spread must update the docs.
ROUNDING = 0.001
TASKS = ("shapes", "shapes-novel", "shape", "colour", "shapes-shifted")
CHANCE = {"shapes": 1 / 48, "shapes-novel": 1 / 48, "shape": 1 / 6, "colour": 1 / 8, "shapes-shifted": 1 / 48}
TARGET = 0.80  # world:shapes zero-shot (issue 3), met by every documented build


def _zero_shot(bundle, task: str, templates=("simple",)) -> float:
    dataset = load_dataset(DataConfig(dataset=f"world:{task}"))
    return evaluate_zero_shot(bundle, dataset, "test", list(templates), num_workers=0).best_result.metrics["acc1"]


@pytest.fixture(scope="module")
def world_scores(world_home):
    with clipadapt_home(world_home):
        start = time.perf_counter()
        bundle = load_model("world:tiny")
        load_s = time.perf_counter() - start
        scores = {task: _zero_shot(bundle, task) for task in TASKS}
    return load_s, scores


def test_world_tiny_holds_its_documented_zero_shot_figures(world_scores):
    load_s, scores = world_scores
    assert load_s < 10  # the cached copy (target < 3 s; generous under test load)
    documented, spread = documented_world_figures(), documented_world_spread()
    assert set(documented) == set(spread) == set(TASKS)
    off = {task: (round(scores[task], 4), documented[task], spread[task]) for task in TASKS
           if abs(scores[task] - documented[task]) > spread[task] + ROUNDING}
    assert not off, f"(measured, documented in docs/world.md, spread) by task: {off}; all measured: {scores}"
    for task, chance in CHANCE.items():  # anywhere within the spread, every task stays far above chance
        assert documented[task] - spread[task] > 2 * chance, task
    assert scores["shapes-novel"] < scores["shapes"] - 0.05, scores  # a real gap for adaptation to close


def test_world_tiny_meets_the_issue_target(world_scores):
    _, scores = world_scores
    assert scores["shapes"] >= TARGET, scores
    # and so does a build anywhere within the measured spread: whether the target is met does not depend on the machine
    assert min(figures["shapes"] for figures in documented_thread_figures().values()) >= TARGET
    assert documented_world_figures()["shapes"] - documented_world_spread()["shapes"] >= TARGET


def test_world_tiny_is_a_real_clip_checkpoint(with_world):
    bundle = load_model("world:tiny")
    assert bundle.backend == "transformers" and bundle.fingerprint.startswith("world:tiny:")
    assert type(bundle.model).__name__ == "CLIPModel"


# Methods really learn: on the pretrained world:tiny, adaptation beats zero-shot by a clear margin. Measured on world
# recipe v1 (docs/benchmarks.md): world:shapes zero-shot 0.833, linear-probe 0.891, lora 0.880; world:shapes-novel
# with 4 shots zero-shot 0.603, linear-probe 0.931, lora 0.784 (recipe v2's zero-shot figures: docs/world.md).
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


# The prompt methods on the task world:tiny was not pretrained for. Measured on recipe v1 (docs/methods.md, seeds
# 0-2): zero-shot 0.594 (`simple`); coop with one context per class ~0.93. coop's shared context (its default) only
# ties zero-shot here, see the docs. visual-prompt, vpt and vision-prefix at their defaults are checked on the demo's
# own runs (same task, shots and schedule) in test_demo_runs_offline_on_the_world, which trains them anyway.
def test_class_specific_coop_beats_zero_shot_on_novel_pairs(with_world, tmp_path):
    zero_shot = zero_shot_acc1("world:shapes-novel")
    overrides = ["model.spec=world:tiny", "data.dataset=world:shapes-novel", "data.shots=8",
                 f"run.out={tmp_path / 'coop'}", "coop.class_specific=true"]
    record = run_training(load_experiment("coop", None, overrides)).record
    assert record["metrics"]["acc1"] > zero_shot + 0.10, (record["metrics"]["acc1"], zero_shot)
    assert record["shots"] == 8 and record["selection"]["chose"] == []  # the reference keeps the last epoch


# Corruptions cost the pretrained model accuracy. Measured (recipe v1) on world:shapes test, the first 5 images of
# each of the 48 classes (240), zero-shot with the simple template: blur radius 0/0.5/1/2/4: 0.817 0.808 0.725 0.417
# 0.233; JPEG 100 - quality 0/50/80/90/95: 0.817 0.629 0.517 0.412 0.308 (all 960 images: 0.829 0.826 0.715 0.392
# 0.229 and 0.829 0.645 0.486 0.384 0.275). A level may score up to ROBUSTNESS_NOISE above the one before it (one
# image is 0.004; blur 0.5 barely changes a 64-pixel scene, so those two levels are a near tie), and the strongest
# level is far below clean. About 2-4 s each once the world exists.
ROBUSTNESS_NOISE = 0.02


@pytest.mark.parametrize("corruption", ["blur", "jpeg"])
def test_corruption_accuracy_does_not_rise_with_severity(corruption, with_world):
    from dataclasses import replace

    import numpy as np

    from clipadapt.classification.predictors import zero_shot_predictor
    from clipadapt.classification.robustness import CORRUPTIONS, evaluate_robustness
    from clipadapt.data.prompts import resolve_template_set

    dataset = load_dataset(DataConfig(dataset="world:shapes"))
    test = dataset.split("test")
    keep = np.concatenate([np.flatnonzero(test.labels == c)[:5] for c in range(len(dataset.classnames))])
    predictor = zero_shot_predictor("world:tiny", dataset.classnames, resolve_template_set("simple").templates, "cpu")
    predictor.dataset = replace(dataset, splits={"test": test.subset(np.sort(keep))})
    levels = list(CORRUPTIONS.get(corruption).default_levels)
    accuracy = list(evaluate_robustness(predictor, corruption, levels)["accuracy"].values())
    assert len(accuracy) == len(levels) == 5
    assert accuracy[0] >= 0.75, accuracy  # clean: the model is good on these images
    assert all(later <= earlier + ROBUSTNESS_NOISE for earlier, later in zip(accuracy, accuracy[1:], strict=False)), \
        accuracy
    assert accuracy[-1] <= accuracy[0] - 0.3, accuracy  # the strongest level costs a lot


def test_the_quickstart_notebook_runs_end_to_end(with_world):
    """examples/quickstart.ipynb on the world: zero-shot, two methods, a report, a plot and a prediction, inline."""
    import time

    import nbformat
    from nbclient import NotebookClient

    from tests.test_api import QUICKSTART

    notebook = nbformat.read(QUICKSTART, as_version=4)
    started = time.perf_counter()
    NotebookClient(notebook, timeout=600, kernel_name="python3").execute()
    seconds = time.perf_counter() - started
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    kinds = {kind for o in outputs for kind in o.get("data", {})}
    assert {"text/html", "image/png"} <= kinds  # the run's inline table and curves, and the matplotlib figure
    prediction = notebook.cells[-1].outputs[0]["data"]["text/plain"]
    assert prediction.count(":") == 3 and prediction.startswith("[{")  # the top 3 classes with probabilities
    assert seconds < 300, f"the notebook took {seconds:.0f} s"


def test_demo_runs_offline_on_the_world(with_world, tmp_path):
    """The longest test, last in this file: the worker that built the world runs it (tests/demo_checks.py)."""
    from tests.demo_checks import run_and_check_demo

    run_and_check_demo(tmp_path / "demo")
