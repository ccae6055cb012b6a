"""Executor options without Ray: a missing Ray is one line, and the options need a grid. These run wherever the
tests run (Ray installed or not); the tests that need Ray itself are in test_executors_ray.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clipadapt.cli import app

runner = CliRunner()
DATASET = "world:shapes-novel"  # generated (offline), 48 classes; 2 shots keep the runs small


def command(kind: str, tiny_clip_dir: Path, out: Path) -> list[str]:
    common = ["--model", str(tiny_clip_dir), "--dataset", DATASET, "--out", str(out), "--set", "train.epochs=1",
              "--set", "data.num_workers=0"]
    if kind == "compare":
        return ["compare", *common, "--methods", "linear-probe", "--templates", "simple", "--device", "cpu"]
    return ["train", "linear-head", *common, "--sweep", "linear_head.lr=0.01,0.1"]


@pytest.mark.parametrize("kind", ["compare", "sweep"])
def test_executor_ray_without_ray_is_one_line(kind, tiny_clip_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    out = tmp_path / "out"
    result = runner.invoke(app, command(kind, tiny_clip_dir, out) + ["--executor", "ray"])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "pip install 'clipadapt[ray]'" in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_executor_options_need_a_sweep(tiny_clip_dir, tmp_path):
    out = tmp_path / "out"
    args = ["train", "linear-head", "--model", str(tiny_clip_dir), "--dataset", DATASET, "--out", str(out)]
    for extra in (["--executor", "ray"], ["--cpus-per-run", "2"]):
        result = runner.invoke(app, args + extra)
        assert result.exit_code == 2, result.output
        assert len(result.output.strip().splitlines()) == 1 and "add --sweep" in result.output
        assert not out.exists()


@pytest.mark.parametrize("extra, message", [
    (["--gpus-per-run", "64"], "--gpus-per-run asks each cell for more than this machine has ("),
    (["--cpus-per-run", "4096"], "--cpus-per-run asks each cell for more than this machine has ("),
    (["--mem", "64T"], "--mem asks each cell for more than this machine has ("),
])
def test_a_ray_cell_bigger_than_this_machine_is_one_line_before_ray_starts(extra, message, tiny_clip_dir, tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "out"
    result = runner.invoke(app, command("sweep", tiny_clip_dir, out) + ["--executor", "ray", *extra])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and message in result.output
    assert not out.exists()


def test_an_executor_config_and_its_options_beside_it_are_refused(tmp_path):
    import clipadapt
    from clipadapt.errors import ConfigError
    from clipadapt.executors import ExecutorConfig

    with pytest.raises(ConfigError, match="executor= is an ExecutorConfig, which holds cpus_per_run, partition too"):
        clipadapt.benchmark("world:tiny", "world:colour", out=tmp_path / "out", cpus_per_run=1, partition="gpu",
                            executor=ExecutorConfig("local"))
    assert not (tmp_path / "out").exists()
