"""``clipadapt benchmark``: the plan of the protocols, HM, and bad input (the runs on the world are in
test_benchmark_slow.py)."""

from __future__ import annotations

import csv
import socket
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clipadapt.cli import app
from clipadapt.experiments.benchmark import BenchmarkConfig, plan
from clipadapt.experiments.benchmark_report import harmonic_mean

runner = CliRunner()
GRID = dict(model="world:tiny", datasets=["world:shapes-novel", "world:colour"], methods=["linear-probe", "coop"],
            shots=[1, 2], seeds=[1, 2])
# two epochs of every method: the equality of executors does not need a good result. coop sets its own count from the
# shots (50 at 1 shot, 100 at 2: coop.py train_epochs) and reads coop.epochs, not train.epochs
FAST = ["train.epochs=2", "coop.epochs=2"]


def read_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def results(rows: list[dict]) -> list[tuple]:
    """Every row without the run's location (which differs between two output folders)."""
    return [tuple(v for k, v in row.items() if k != "run") for row in rows]


def test_plan_merges_runs_shared_by_protocols():
    config = BenchmarkConfig(model="world:tiny", suite="world", methods=["coop"], shots=[4], seeds=[1],
                             protocols=["all"], out="/tmp/never-written")
    cells = {c.key: c for c in plan(config)}
    source = cells["world-shapes/coop/4shot-seed1"]  # few-shot, cross-dataset and domain-shift share it
    assert source.protocols == ["few-shot", "cross-dataset", "domain-shift"]
    assert [t.name for t in source.targets] == ["world:colour", "world:shape", "world:shapes-novel",
                                                "world:shapes-shifted"]
    base = cells["world-shapes-base/coop/4shot-seed1"]
    assert base.subsample == "base" and [(t.name, t.subsample) for t in base.targets] == [("novel", "new")]
    zeroshot = sorted(k for k in cells if k.endswith("zeroshot"))
    assert zeroshot == ["world-colour/zeroshot", "world-shape/zeroshot", "world-shapes-base/zeroshot",
                        "world-shapes-new/zeroshot", "world-shapes-novel/zeroshot", "world-shapes-shifted/zeroshot",
                        "world-shapes/zeroshot"]
    assert len(cells) == 4 + 1 + 7  # four few-shot datasets, the base run, and every zero-shot
    default = BenchmarkConfig(model="world:tiny", suite="world", protocols=["few-shot", "base-to-novel"])
    assert default.shots_for("few-shot") == [1, 2, 4, 8, 16] and default.shots_for("base-to-novel") == [16]
    assert default.seeds == [1, 2, 3]


def test_harmonic_mean():
    assert harmonic_mean(0.8, 0.6) == pytest.approx(2 * 0.8 * 0.6 / 1.4)
    assert harmonic_mean(0.0, 0.0) == 0.0
    assert harmonic_mean(0.5, float("nan")) != harmonic_mean(0.5, float("nan"))  # nan: no novel accuracy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("args, message", [
    (["--datasets", "cifar1000"], "unknown dataset 'cifar1000'; valid choices:"),
    (["--suite", "coop12"], "unknown suite 'coop12'; valid choices: coop11, world"),
    (["--suite", "world", "--shots", "0,2"], "--shots must be positive"),
    (["--suite", "world", "--protocol", "zero-shot"], "unknown protocol 'zero-shot'; valid choices: few-shot,"),
    (["--suite", "world", "--methods", "lora2"], "unknown method 'lora2'"),
    (["--suite", "world", "--executor", "k8s"], "unknown executor 'k8s'; valid choices: local, ray, slurm"),
    (["--suite", "world", "--address", "127.0.0.1:1"], "--address is a Ray cluster's; it needs --executor ray"),
    (["--suite", "world", "--executor", "ray", "--address", "127.0.0.1:{port}"],
     "cannot reach a Ray cluster at --address '127.0.0.1:{port}'"),
])
def test_bad_input_is_one_line_and_writes_nothing(args, message, tmp_path):
    port = str(free_port())
    out = tmp_path / "out"
    result = runner.invoke(app, ["benchmark", "--model", "world:tiny", *[a.replace("{port}", port) for a in args],
                                 "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert message.replace("{port}", port) in result.output
    assert "Traceback" not in result.output and not out.exists()


def test_ray_without_the_extra_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as if it were not installed
    result = runner.invoke(app, ["benchmark", "--model", "world:tiny", "--suite", "world", "--executor", "ray",
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "--executor ray needs Ray: pip install 'clipadapt[ray]'" in result.output
    assert not (tmp_path / "out").exists()
