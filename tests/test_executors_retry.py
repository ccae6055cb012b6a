"""The retry loop every executor shares (executors/base.py:run_cells) and the Slurm executor's refused
resubmission, on stand-in engines: a lost cell runs again with its argument's resumed(), up to ``retries`` times,
and counts once; a cell that fails is not retried; a job Slurm refuses after the first batch fails its cell, not the
grid."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest

from clipadapt.executors import ExecutorConfig, Outcome, run_cells
from clipadapt.executors.base import Executor


@dataclass
class Arg:
    name: str
    resume: bool = False

    def resumed(self) -> Arg:
        return replace(self, resume=True)


class Flaky(Executor):
    """Cells whose worker dies ``deaths[key]`` times before they run; records every argument it was given."""

    def __init__(self, config: ExecutorConfig, deaths: dict[str, int]) -> None:
        super().__init__(config)
        self.deaths, self.queue, self.seen = dict(deaths), [], []

    def submit(self, key: str, cell, argument: Any) -> None:
        self.queue.append((key, cell, argument))

    def outcomes(self) -> Iterator[Outcome]:
        while self.queue:
            key, cell, argument = self.queue.pop(0)
            self.seen.append((key, argument.resume))
            if self.deaths.get(key, 0) > 0:
                self.deaths[key] -= 1
                yield Outcome(key, error="worker died", lost=True, seconds=1.0)
            else:
                yield Outcome(key, result=cell(argument), seconds=2.0)


def fails(argument: Arg) -> None:
    raise AssertionError("not called")


def test_a_lost_cell_runs_again_resumed_and_counts_once():
    executor = Flaky(ExecutorConfig("local", retries=2), {"b": 2, "c": 3})
    counts_seen = []
    outcomes = run_cells(executor, [(k, lambda a: a.resume, Arg(k)) for k in "abc"],
                         on_outcome=lambda o, counts: counts_seen.append(dict(counts)))
    assert executor.seen == [("a", False), ("b", False), ("c", False), ("b", True), ("c", True), ("b", True),
                             ("c", True)]  # c: its first attempt and both retries lost
    assert [outcomes[k].attempts for k in "abc"] == [1, 3, 3]
    assert outcomes["a"].result is False and outcomes["b"].result is True  # the retries ran resumed
    assert outcomes["b"].seconds == 1.0 + 1.0 + 2.0  # the lost attempts' time is the cell's too
    assert outcomes["c"].failed and outcomes["c"].lost and outcomes["c"].error == "worker died"  # out of retries
    assert [c["done"] + c["failed"] for c in counts_seen] == [1, 2, 3] and counts_seen[-1]["retried"] == 4


def test_no_retries_means_a_lost_cell_fails():
    executor = Flaky(ExecutorConfig("local", retries=0), {"a": 1})
    outcomes = run_cells(executor, [("a", fails, Arg("a"))])
    assert outcomes["a"].failed and outcomes["a"].attempts == 1 and executor.seen == [("a", False)]


def test_a_resubmission_slurm_refuses_fails_that_cell_and_the_grid_goes_on(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    from submitit.core.utils import FailedJobError

    from clipadapt.executors.slurm import SlurmExecutor

    executor = SlurmExecutor(ExecutorConfig("slurm", slurm_cluster="debug", array_parallelism=1), tmp_path / "out")
    submit = executor._executor.submit
    calls = []

    def refuse_the_second(*args):
        calls.append(args[1])
        if len(calls) == 2:
            raise FailedJobError("sbatch: error: Socket timed out on send/recv operation")
        return submit(*args)

    monkeypatch.setattr(executor._executor, "submit", refuse_the_second)
    outcomes = run_cells(executor, [(k, lambda a: a.name, Arg(k)) for k in "abc"])
    assert calls == ["a", "b", "c"]  # one slot: one job at a time, each after the last
    assert outcomes["a"].result == "a" and outcomes["c"].result == "c"
    assert outcomes["b"].failed and outcomes["b"].error == (
        "Slurm refused its job: sbatch: error: Socket timed out on send/recv operation")
    executor.close()
