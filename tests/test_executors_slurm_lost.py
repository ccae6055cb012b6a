"""Slurm jobs that end early, through submitit's local stand-in (``--slurm-cluster local``): a job killed under its
cell (SIGKILL: a node lost, the OOM killer) and a job pre-empted (SIGUSR2 long before its time limit).

* Killed: submitit's local controller does not start a killed task again (only a task that exits with its requeue
  code, 144, is started again); the job ends without a result, the executor reports the outcome lost, and
  base.run_cells submits the cell again as a new job, resumed from its last checkpoint.
* Pre-empted: submitit tells pre-emption from a time-out by the time the job has run (a signal before 80 % of
  ``--time``, and more than 10 minutes before it, is a pre-emption); the cell's ``checkpoint`` requeues it in the same
  job, resumed, and a pre-emption does not use up one of the job's time-outs.

Either way the cell ends with exactly the metrics of an uninterrupted run. The grid is a tiny random CLIP on
world:shapes-novel (zero-shot and one coop cell of 12 epochs, checkpointed after each), as in
test_executors_faults.py, whose helpers find the process running a cell by the cell's lock file."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import pytest

from clipadapt.executors.locks import STATE_DIR, cell_lock_path
from tests.helpers import clipadapt_home
from tests.test_executors_faults import (
    DEADLINE_S,
    EPOCHS,
    SETTINGS,
    alive,
    checkpoint_epoch,
    history_epochs,
    holders,
    kill_all,
    leftovers,
    record,
)
from tests.test_executors_slurm import signal_when_checkpointed, training_curve

GRID = dict(datasets=["world:shapes-novel"], methods=["coop"], shots=[8], seeds=[1])
ZEROSHOT = "world-shapes-novel/zeroshot"
COOP = "world-shapes-novel/coop/8shot-seed1"


def run_grid(model: Path, out: Path, **options):
    """GRID through the API, one CPU per cell."""
    import clipadapt

    result = clipadapt.benchmark(str(model), **GRID, out=out, cpus_per_run=1, overrides=SETTINGS, progress=False,
                                 report=False, **options)
    assert not result.failed, result.failed
    return result


@pytest.fixture(scope="module")
def clean(tiny_clip_dir, tmp_path_factory) -> Path:
    """GRID once, uninterrupted, by the local executor: the reference."""
    out = tmp_path_factory.mktemp("clean") / "out"
    with clipadapt_home(tmp_path_factory.mktemp("clean-home")):
        run_grid(tiny_clip_dir, out)
    assert "resumed_at_epochs" not in record(out / "runs" / COOP)
    return out


def stragglers(out: Path) -> list[str]:
    """The stand-in's processes of this grid still running (its controllers and jobs name OUT/slurm)."""
    import psutil

    found = []
    for process in alive(list(psutil.process_iter())):
        try:
            if str(out / "slurm") in " ".join(process.cmdline()):
                found.append(" ".join(process.cmdline()))
        except psutil.Error:
            continue
    return found


def result_wait_s() -> float:
    from submitit.core.core import Job

    return Job._results_timeout_s


def job_log(out: Path, job_id: str) -> str:
    return (out / "slurm" / job_id / f"{job_id}_0_log.out").read_text()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_killed_job_is_lost_and_its_cell_resubmitted_resumed(tiny_clip_dir, clean, tmp_path, caplog):
    """SIGKILL to the job process running coop (the one holding the cell's lock) once its checkpoint has 2 epochs:
    the controller does not restart it, the job ends without a result, and the cell runs again as a new job (attempt
    2 in jobs.json) that continues the checkpoint; the metrics equal the uninterrupted run's."""
    out = tmp_path / "slurm"
    run_dir = out / "runs" / COOP
    killed: dict = {}
    retried_at: list[float] = []
    stop = threading.Event()

    def watch() -> None:
        deadline = time.monotonic() + DEADLINE_S
        while not stop.is_set() and time.monotonic() < deadline:
            if not killed and (checkpoint_epoch(run_dir) or 0) >= 2:
                workers = holders(cell_lock_path(out, COOP), "submitit")
                if len(workers) != 1:
                    killed["error"] = f"not one process holds the cell's lock: {workers}"
                    return
                worker = workers[0]
                worker.suspend()  # its epoch cannot move on (nor the run finish) between the look and the kill
                killed.update(epoch=checkpoint_epoch(run_dir), finished=(run_dir / "metrics.json").exists(),
                              pid=worker.pid, cmdline=worker.cmdline(), parent=worker.ppid(),
                              job_id=json.loads((out / "slurm" / "jobs.json").read_text())[COOP]["job_id"],
                              at=time.perf_counter(), wall=time.time())
                worker.kill()
                killed["process"] = worker
            elif killed and [p for p in holders(cell_lock_path(out, COOP), "submitit") if p.pid != killed["pid"]]:
                retried_at.append(time.perf_counter())  # the second attempt holds the cell's lock
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    caplog.set_level(logging.WARNING, logger="clipadapt")
    start = time.perf_counter()
    try:
        result = run_grid(tiny_clip_dir, out, executor="slurm", slurm_cluster="local", time="60")
    finally:
        stop.set()
        watcher.join(timeout=30)
        kill_all([killed["process"]] if "process" in killed else [])
    elapsed = time.perf_counter() - start
    assert "error" not in killed, killed["error"]
    assert killed.get("epoch") is not None and killed["epoch"] >= 2 and not killed["finished"], killed
    assert "submitit.core._submit" in " ".join(killed["cmdline"]) and killed["parent"] == int(killed["job_id"])

    assert {key: o.attempts for key, o in result.outcomes.items()} == {ZEROSHOT: 1, COOP: 2}
    jobs = json.loads((out / "slurm" / "jobs.json").read_text())
    assert jobs[COOP]["attempt"] == 2 and jobs[COOP]["job_id"] != killed["job_id"], jobs
    assert jobs[ZEROSHOT]["attempt"] == 1
    # the killed job was not restarted by its controller: it ran the cell once, finished nothing and never requeued
    first = job_log(out, killed["job_id"])
    assert "Requeued job" not in first and "Job completed successfully" not in first, first[-3000:]
    assert not (out / "slurm" / killed["job_id"] / f"{killed['job_id']}_0_result.pkl").exists()
    second = job_log(out, jobs[COOP]["job_id"])
    assert "Job completed successfully" in second and "Requeued job" not in second, second[-3000:]
    records = [r for r in caplog.records if r.getMessage().startswith(f"{COOP}: Slurm job")]
    lost = [r.getMessage() for r in records]
    assert len(lost) == 1 and f"Slurm job {killed['job_id']} ended without a result" in lost[0], lost
    assert lost[0].endswith("running it again, resuming its last checkpoint (attempt 2 of 3)"), lost[0]

    again = record(run_dir)
    assert again["resumed_at_epochs"] in ([killed["epoch"]], [killed["epoch"] + 1]), (again["resumed_at_epochs"],
                                                                                       killed)
    assert history_epochs(run_dir) == list(range(1, EPOCHS + 1))  # every epoch once
    for key in (ZEROSHOT, COOP):
        assert record(out / "runs" / key)["metrics"] == record(clean / "runs" / key)["metrics"], key
    assert training_curve(run_dir) == training_curve(clean / "runs" / COOP)
    assert leftovers(out) == [] and not (out / STATE_DIR).exists()
    assert stragglers(out) == []
    assert retried_at, "the second attempt was never seen holding the cell's lock"
    print(f"\nslurm local: coop's job {killed['job_id']} killed at checkpoint epoch {killed['epoch']}, reported "
          f"lost {records[0].created - killed['wall']:.1f} s later (submitit waits up to {result_wait_s()} s for a "
          f"result file); the second attempt (job {jobs[COOP]['job_id']}) took the cell's lock "
          f"{retried_at[0] - killed['at']:.1f} s after the kill; the grid {elapsed:.1f} s")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_pre_empted_job_is_requeued_resumed_and_keeps_its_time_outs(tiny_clip_dir, clean, tmp_path):
    """SIGUSR2 to coop's job at checkpoint epoch 2 with an hour's --time: submitit counts it a pre-emption (not a
    time-out: "3 remaining timeouts", as before), requeues the same job, which resumes the checkpoint to the
    uninterrupted run's metrics."""
    out = tmp_path / "slurm"
    sent: dict = {}
    stop = threading.Event()
    watcher = threading.Thread(target=signal_when_checkpointed, args=(out, COOP, 2, sent, stop, DEADLINE_S),
                               daemon=True)
    watcher.start()
    try:
        result = run_grid(tiny_clip_dir, out, executor="slurm", slurm_cluster="local", time="60")
    finally:
        stop.set()
        watcher.join(timeout=30)
    assert "error" not in sent, sent["error"]
    assert sent.get("epoch", 0) >= 2, f"the watcher sent nothing: {sent}"
    assert sent["limit_s"] == "3600"  # --time 60 reached the stand-in's controller

    log = job_log(out, str(sent["job_id"]))
    assert log.count("this job is preempted") == 1 and "timed-out" not in log, log[-3000:]
    assert f"Requeued job {sent['job_id']} (3 remaining timeouts)" in log, log[-3000:]  # none used up
    assert "Job completed successfully" in log, log[-3000:]
    assert {key: o.attempts for key, o in result.outcomes.items()} == {ZEROSHOT: 1, COOP: 1}
    jobs = json.loads((out / "slurm" / "jobs.json").read_text())
    assert jobs[COOP] == {**jobs[COOP], "job_id": str(sent["job_id"]), "attempt": 1}  # requeued, not resubmitted

    run_dir = out / "runs" / COOP
    again = record(run_dir)
    assert again["resumed_at_epochs"] in ([sent["epoch"]], [sent["epoch"] + 1]), (again["resumed_at_epochs"], sent)
    assert history_epochs(run_dir) == list(range(1, EPOCHS + 1))
    for key in (ZEROSHOT, COOP):
        assert record(out / "runs" / key)["metrics"] == record(clean / "runs" / key)["metrics"], key
    assert training_curve(run_dir) == training_curve(clean / "runs" / COOP)
    assert leftovers(out) == [] and not (out / STATE_DIR).exists()
    assert stragglers(out) == []
