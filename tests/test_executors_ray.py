"""compare and sweeps on Ray: the same run directories, results and tables as the local executor, failures reported
beside the others' results, and an unreachable cluster is one line. Ray is in the dev extra: without it these tests
skip, and under CI=true they fail (tests/helpers.py:require_ray)."""

from __future__ import annotations

import csv
import io
import json
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

import clipadapt
from clipadapt.cli import app
from tests.helpers import require_ray
from tests.test_executors import DATASET, command

runner = CliRunner()
SMALL = {"train.epochs": 2, "train.batch_size": 16, "data.num_workers": 0, "run.samples": 0}


@pytest.fixture(autouse=True)
def ray_installed() -> None:
    require_ray()


def metrics_by_run(out: Path) -> dict[str, float]:
    return {p.parent.relative_to(out).as_posix(): json.loads(p.read_text())["metrics"]["acc1"]
            for p in sorted(out.rglob("metrics.json"))}


def compare_on(executor: str, tiny_clip_dir: Path, out: Path, statuses: list):
    return clipadapt.compare(str(tiny_clip_dir), DATASET, "linear-probe,linear-head,baseline", seeds=[0, 1],
                             shots=2, out=out, templates=["simple"], device="cpu", executor=executor,
                             cpus_per_run=1, progress=False, on_run=lambda run, status: statuses.append(
                                 (run.run_dir.relative_to(out).as_posix(), status)),
                             **SMALL, **{"baseline.classifier": str(out.parent / "no-such-classifier")})


@pytest.mark.slow
def test_compare_on_ray_equals_local_and_reports_the_failing_method(tiny_clip_dir, tmp_path):
    results, statuses = {}, {}
    for executor in ("local", "ray"):
        statuses[executor] = []
        results[executor] = compare_on(executor, tiny_clip_dir, tmp_path / executor, statuses[executor])
    local, ray = results["local"], results["ray"]
    accuracies = metrics_by_run(tmp_path / "local")
    assert len(accuracies) == 5  # zero-shot, linear-probe and linear-head with seeds 0 and 1
    assert metrics_by_run(tmp_path / "ray") == accuracies
    for result, executor in ((local, "local"), (ray, "ray")):
        out = tmp_path / executor
        assert [p.relative_to(out).as_posix() for p, _ in result.failed] == [
            "tiny-clip/baseline-seed0", "tiny-clip/baseline-seed1"]
        assert len(result.finished) == 5 and (out / "report.md").is_file()
        by_run: dict[str, list[str]] = {}
        for run, status in statuses[executor]:
            by_run.setdefault(run, []).append(status)
        failed = {p.relative_to(out).as_posix(): f"failed: {message}" for p, message in result.failed}
        # every run: "running" when submitted, then "done" or "failed: <its message>" when it finished
        assert by_run == {run: ["running", failed.get(run, "done")] for run in [*accuracies, *failed]}
    assert [message for _, message in ray.failed] == [message for _, message in local.failed]
    assert "no-such-classifier" in local.failed[0][1]
    # the report's rows hold the same accuracies (times differ)
    rows = [[(row.label, row.values("metrics", "acc1")) for row in result.report.rows] for result in (local, ray)]
    assert rows[1] == rows[0] and len(rows[0]) == 3


def without_timing(path: Path, out: Path) -> list[dict[str, str]]:
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    for row in rows:
        row.pop("train_time_s")
        row["runs"] = row["runs"].replace(str(out), "OUT")
    return rows


@pytest.mark.slow
def test_sweep_on_ray_equals_local_cell_for_cell(tiny_clip_dir, tmp_path):
    tables = {}
    for executor in ("local", "ray"):
        out = tmp_path / executor
        statuses: list[str] = []
        result = clipadapt.sweep("linear-head", {"linear_head.lr": [0.001, 0.05]}, str(tiny_clip_dir), DATASET,
                                 seeds=[0, 1], out=out, shots=2, device="cpu", executor=executor, cpus_per_run=1,
                                 progress=False, on_run=lambda cell, status, seen=statuses: seen.append(status),
                                 **SMALL)
        assert not result.failed and sorted(statuses) == ["done"] * 4 + ["running"] * 4
        tables[executor] = without_timing(result.csv, out), result.markdown.read_text(), metrics_by_run(out)
    assert len(tables["local"][0]) == 2 and all(row["seeds"] == "2" for row in tables["local"][0])
    assert tables["ray"] == tables["local"]




def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", ["compare", "sweep"])
def test_unreachable_ray_address_is_one_line(kind, tiny_clip_dir, tmp_path):
    out, address = tmp_path / "out", f"127.0.0.1:{free_port()}"
    result = runner.invoke(app, command(kind, tiny_clip_dir, out) + ["--executor", "ray", "--address", address])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert f"cannot reach a Ray cluster at --address '{address}'" in result.output
    assert not out.exists()
