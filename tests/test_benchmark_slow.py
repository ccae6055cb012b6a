"""``clipadapt benchmark`` on the world: an interrupted benchmark continued with --skip-existing, Ray against the
local executor cell for cell, the world suite's transfer protocols with base-to-novel's relabelling and HM.

Collected late (conftest.py): the world is built by then, so the worker that runs these never waits for it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clipadapt.cli import app
from clipadapt.experiments.benchmark import BenchmarkConfig, plan
from clipadapt.experiments.benchmark_report import harmonic_mean
from tests.test_benchmark import FAST, GRID, read_csv, results, runner


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
    assert sorted(ran) == sorted(c.key for c in cells if c.key not in before)  # exactly the missing ones
    assert sorted(result.kept) == sorted(before)
    assert {k: (Path(c.run_dir) / "metrics.json").stat().st_mtime_ns for c in cells for k in [c.key]
            if k in before} == before  # kept cells untouched
    assert not result.failed

    remote = benchmark(**GRID, out=tmp_path / "ray", executor="ray", cpus_per_run=1, overrides=FAST, progress=False)
    assert not remote.failed
    local_rows, ray_rows = read_csv(local / "benchmark.csv"), read_csv(tmp_path / "ray" / "benchmark.csv")
    assert len(local_rows) == 2 + 2 * 2 * 2 * 2  # zero-shot per dataset + datasets x methods x shots x seeds
    assert results(local_rows) == results(ray_rows)
    assert all(float(r["acc1"]) > 0 for r in local_rows)
    markdown = (local / "benchmark.md").read_text()
    assert "### 1 shots" in markdown and "### 2 shots" in markdown and "| coop | epoch |" in markdown
    assert (local / "report_files" / "accuracy_vs_shots.png").is_file() and (local / "report.html").is_file()


@pytest.mark.slow
def test_world_suite_runs_the_transfer_protocols(with_world, tmp_path):
    """The few-shot protocol runs in the test above. base-to-novel relabels the novel half from 0 and scores it with
    a classifier built from its names; a per-class head cannot name novel classes and says so; HM per seed in the
    CSV, of the seed means in the table."""
    result = runner.invoke(app, ["benchmark", "--model", "world:tiny", "--suite", "world", "--methods",
                                 "linear-probe,coop", "--shots", "1", "--seeds", "1,2", "--protocol",
                                 "base-to-novel,cross-dataset,domain-shift",
                                 "--set", "train.epochs=2", "--out", str(tmp_path / "b")])
    rows = read_csv(tmp_path / "b" / "benchmark.csv")
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
    assert all(r["acc1"] for r in shift)
    cross = [r for r in rows if r["protocol"] == "cross-dataset" and r["target"] == "world:colour"]
    assert [bool(r["acc1"]) for r in cross if r["method"] == "coop"] == [True, True]
    assert result.exit_code == 0, result.output  # what a method cannot measure is listed, not a failure
    assert "## Cells without a result" in result.output and "per class" in result.output
