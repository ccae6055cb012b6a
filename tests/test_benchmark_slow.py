"""``clipadapt benchmark`` on the world: an interrupted benchmark continued with --skip-existing, Ray against the
local executor cell for cell, the world suite's transfer protocols with base-to-novel's relabelling and HM.

Collected late (conftest.py): the world is built by then, so the worker that runs these never waits for it."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from clipadapt.cli import app
from clipadapt.experiments.benchmark import BenchmarkConfig, plan
from clipadapt.experiments.benchmark_report import harmonic_mean
from tests.test_benchmark import FAST, GRID, read_csv, results, runner

ACCURACY_CELL = re.compile(r"\d+\.\d( ± \d+\.\d)?")  # benchmark.md: a percentage, with its std over seeds


def numeric(value: str) -> bool:
    """A CSV cell holding a finite number (a missing value is written empty)."""
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


def table_cells(markdown: str, heading: str) -> list[str]:
    """The value cells (every column after the first) of the table that follows ``heading`` in benchmark.md."""
    lines = markdown.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2:]:  # past the header and the |---| line
        if not line.startswith("|"):
            break
        rows += [c.strip() for c in line.strip().strip("|").split("|")[1:]]
    return rows


@pytest.mark.slow
def test_killed_benchmark_resumes_exactly_the_missing_cells_and_ray_agrees(with_world, tmp_path):
    """kill -9 mid-grid, --skip-existing runs only what has no result; a Ray run of the grid equals it cell for
    cell (both with one torch thread per cell)."""
    from clipadapt.api import benchmark

    local = tmp_path / "local"
    args = ["benchmark", "--model", GRID["model"], "--datasets", ",".join(GRID["datasets"]), "--methods",
            ",".join(GRID["methods"]), "--shots", "1,2", "--seeds", "1,2", "--cpus-per-run", "1",
            "--out", str(local)] + [a for item in FAST for a in ("--set", item)]
    env = {**os.environ, "CLIPADAPT_HOME": str(with_world), "CLIPADAPT_PROGRESS": "0"}
    process = subprocess.Popen([sys.executable, "-m", "clipadapt", *args], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while len(list(local.rglob("metrics.json"))) < 5 and time.monotonic() < deadline:
            assert process.poll() is None, "the benchmark ended before it could be killed"
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    cells = plan(BenchmarkConfig(**GRID, out=str(local)))
    before = {c.key: (Path(c.run_dir) / "metrics.json").stat().st_mtime_ns for c in cells if c.complete()}
    assert 5 <= len(before) < len(cells)  # killed in the middle
    assert not (local / "benchmark.csv").exists()

    ran = []
    result = benchmark(**GRID, out=local, skip_existing=True, cpus_per_run=1, overrides=FAST, progress=False,
                       on_cell=lambda outcome, counts: ran.append(outcome.key))
    assert not result.failed, result.failed  # before reading what it wrote
    assert sorted(ran) == sorted(c.key for c in cells if c.key not in before)  # exactly the missing ones
    assert sorted(result.kept) == sorted(before)
    assert {k: (Path(c.run_dir) / "metrics.json").stat().st_mtime_ns for c in cells for k in [c.key]
            if k in before} == before  # kept cells untouched

    remote = benchmark(**GRID, out=tmp_path / "ray", executor="ray", cpus_per_run=1, overrides=FAST, progress=False)
    assert not remote.failed
    local_rows, ray_rows = read_csv(local / "benchmark.csv"), read_csv(tmp_path / "ray" / "benchmark.csv")
    assert len(local_rows) == 2 + 2 * 2 * 2 * 2  # zero-shot per dataset + datasets x methods x shots x seeds
    assert results(local_rows) == results(ray_rows)
    assert all(numeric(r["acc1"]) and not r["error"] for r in local_rows)  # every cell measured, a finite number
    for row in local_rows:  # each row is its run's own number
        record = json.loads((Path(row["run"]) / "metrics.json").read_text())
        assert float(row["acc1"]) == pytest.approx(record["metrics"]["acc1"], abs=1e-6)
    markdown = (local / "benchmark.md").read_text()
    assert "### 1 shots" in markdown and "### 2 shots" in markdown and "| coop | nothing (val-free) |" in markdown
    for heading in ("### 1 shots", "### 2 shots"):  # zero-shot and both methods on both datasets, and the average
        cells = table_cells(markdown, heading)
        assert len(cells) == 3 * 3 and all(ACCURACY_CELL.fullmatch(c) for c in cells), cells
    assert (local / "report_files" / "accuracy_vs_shots.png").is_file() and (local / "report.html").is_file()


@pytest.mark.slow
def test_world_suite_runs_the_transfer_protocols(with_world, tmp_path):
    """The few-shot protocol runs in the test above. base-to-novel relabels the novel half from 0 and scores it with
    a classifier built from its names; a per-class head cannot name novel classes and says so; HM per seed in the
    CSV, of the seed means in the table."""
    out = tmp_path / "b"
    result = runner.invoke(app, ["benchmark", "--model", "world:tiny", "--suite", "world", "--methods",
                                 "linear-probe,coop", "--shots", "1", "--seeds", "1,2", "--protocol",
                                 "base-to-novel,cross-dataset,domain-shift",
                                 "--set", "train.epochs=2", "--set", "coop.epochs=2", "--out", str(out)])
    assert result.exit_code == 0, result.output  # what a method cannot measure is listed, not a failure
    assert "## Cells without a result" in result.output and "per class" in result.output
    rows = read_csv(out / "benchmark.csv")
    assert {r["protocol"] for r in rows} == {"base-to-novel", "cross-dataset", "domain-shift"}
    novel = [r for r in rows if r["protocol"] == "base-to-novel"]
    for r in novel:
        if r["novel_acc1"]:
            base, new = float(r["base_acc1"]), float(r["novel_acc1"])
            assert float(r["hm"]) == pytest.approx(2 * base * new / (base + new), abs=1e-6)  # per seed
    coop = [r for r in novel if r["method"] == "coop"]
    assert len(coop) == 2 and all(r["novel_acc1"] and not r["error"] for r in coop)
    probe = [r for r in novel if r["method"] == "linear-probe"]
    assert all(not r["novel_acc1"] and "per class" in r["error"] for r in probe)
    evaluation = json.loads((tmp_path / "b/runs/world-shapes-base/coop/1shot-seed1/evaluations/"
                             "world-shapes-new.json").read_text())
    assert evaluation["classes"] == 24 and evaluation["metrics"]["n"] > 0  # 48 classes: 24 base, 24 novel
    zeroshot_new = json.loads((tmp_path / "b/runs/world-shapes-new/zeroshot/metrics.json").read_text())
    assert zeroshot_new["num_classes"] == 24 and zeroshot_new["selected_on"] == "none"  # the world prompt, no choice

    mean = {k: sum(float(r[k]) for r in coop) / 2 for k in ("base_acc1", "novel_acc1")}
    table_hm = f"{100 * harmonic_mean(mean['base_acc1'], mean['novel_acc1']):.1f}"
    markdown = (tmp_path / "b" / "benchmark.md").read_text()
    assert "| world:shapes | coop | " in markdown and f" | {table_hm} |" in markdown  # HM of the seed means

    shift = [r for r in rows if r["protocol"] == "domain-shift" and r["target"] == "world:shapes-shifted"]
    assert {r["method"] for r in shift} == {"zeroshot", "linear-probe", "coop"}  # same classes: heads move too
    assert all(numeric(r["acc1"]) for r in shift)
    cross = [r for r in rows if r["protocol"] == "cross-dataset" and r["target"] == "world:colour"]
    assert [numeric(r["acc1"]) for r in cross if r["method"] == "coop"] == [True, True]
    # every number the report shows is finite; what is missing is missing for a stated reason
    for r in rows:  # a run's own accuracy always; what it was evaluated on elsewhere, unless it says why not
        own, elsewhere = ("base_acc1", ("novel_acc1", "hm")) if r["protocol"] == "base-to-novel" else ("acc1", ())
        assert numeric(r[own]) or (r["error"] and r["target"] != r["dataset"]), r
        assert all(numeric(r[k]) for k in elsewhere) or r["error"], r
    assert "nan" not in markdown.lower()
    assert_base_runs_saw_only_base_classes(out)
    assert_targets_were_never_trained_or_selected_on(out)


def assert_base_runs_saw_only_base_classes(out: Path) -> None:
    """base-to-novel's runs trained and validated on the base half only (their fewshot.json names every image they
    saw: each one's class in the full dataset is a base class), and classify among the base classes."""
    from clipadapt.data import DataConfig, load_dataset

    full = load_dataset(DataConfig(dataset="world:shapes"))
    base = full.classnames[:24]  # 48 classes sorted by label: the first half
    runs = sorted((out / "runs" / "world-shapes-base").glob("*/1shot-seed*"))
    assert len(runs) == 4  # linear-probe and coop, seeds 1 and 2
    for run in runs:
        record = json.loads((run / "metrics.json").read_text())
        assert record["num_classes"] == 24 and record["config"]["data"]["subsample"] == "base"
        seen = json.loads((run / "fewshot.json").read_text())
        assert seen["subsample"] == "base" and seen["classnames"] == base
        for split in ("train", "val"):
            labels = full.split(split).labels
            assert seen[split], split
            for item, label in seen[split]:  # "world:shapes/train[12]": the image's index in the full split
                index = int(re.fullmatch(rf"world:shapes/{split}\[(\d+)\]", item).group(1))
                assert labels[index] == label < 24  # a base class, relabelled to itself


def assert_targets_were_never_trained_or_selected_on(out: Path) -> None:
    """Every trained run learned and chose on its source's own train and val (world:shapes, or its base half); the
    targets (other datasets, the novel half) appear only as test evaluations of those runs and as zero-shot runs
    that chose nothing."""
    evaluated_targets = set()
    for metrics in sorted((out / "runs").rglob("metrics.json")):
        run, record = metrics.parent, json.loads(metrics.read_text())
        data = record["config"]["data"]
        if record["method"] == "zeroshot":
            assert record["selected_on"] == "none" and record["selection"]["on"] == "none", run
            continue
        assert data["dataset"] == "world:shapes" and data["subsample"] in ("all", "base"), run
        assert json.loads((run / "fewshot.json").read_text())["dataset"] == "world:shapes"
        selection = record["selection"]
        assert selection["on"] in ("val", "none") and all(c.get("split", "val") == "val"
                                                          for c in selection.get("choices", [])), run
        for path in sorted((run / "evaluations").glob("*.json")):  # none where the run cannot move (per class)
            evaluated = json.loads(path.read_text())
            assert evaluated["split"] == "test" and evaluated["run"] == str(run)
            target = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in evaluated["data"])}
            assert (target["data.dataset"], target["data.subsample"]) != (data["dataset"], data["subsample"])
            evaluated_targets.add((target["data.dataset"], target["data.subsample"]))
    assert evaluated_targets == {("world:shapes", "new"), ("world:colour", "all"), ("world:shape", "all"),
                                 ("world:shapes-novel", "all"), ("world:shapes-shifted", "all")}
