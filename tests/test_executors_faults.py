"""Faults a grid's cells survive (issue 31): a Ray worker killed mid-cell (the cell is retried and resumes its
checkpoint), the driver killed with SIGKILL under Ray and under submitit's local Slurm stand-in (``--skip-existing``
finishes the grid, no cell runs twice to completion, nothing half-written is left), and two drivers on one ``--out``
(the second refuses in one line). The locks behind them are tested on their own in test_executors_locks.py.

Every grid here is the same small one on a tiny random CLIP, so one clean local run (the ``clean`` fixture) is the
reference every faulty run must equal: zero-shot and coop (12 epochs, checkpointed after each) at 8 shots, seeds 1
and 2, on world:shapes-novel. Processes are found with psutil by what they hold open: the process running a cell is
the one with the cell's lock file (locks.cell_lock_path) open, which singles it out among Ray's ``ray::call_cell``
workers or submitit's job processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from clipadapt.executors.locks import STATE_DIR, cell_lock_path
from clipadapt.experiments.benchmark import BenchmarkConfig, plan
from tests.helpers import clipadapt_home, require_ray
from tests.test_benchmark import read_csv, results

GRID = dict(datasets=["world:shapes-novel"], methods=["coop"], shots=[8], seeds=[1, 2])
EPOCHS = 12
SETTINGS = [f"coop.epochs={EPOCHS}", "train.batch_size=8", "run.samples=0", "data.num_workers=0"]
ZEROSHOT = "world-shapes-novel/zeroshot"
COOP = "world-shapes-novel/coop/8shot-seed1"  # the coop cell test 1 kills
OTHER_COOP = "world-shapes-novel/coop/8shot-seed2"
DEADLINE_S = 240.0


# ---------------------------------------------------------------------------------------------------------- helpers

def cells(model: Path, out: Path):
    return plan(BenchmarkConfig(model=str(model), **GRID, out=str(out)))


def cli_args(model: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "clipadapt", "benchmark", "--model", str(model), "--datasets",
            ",".join(GRID["datasets"]), "--methods", ",".join(GRID["methods"]), "--shots", "8", "--seeds", "1,2",
            "--cpus-per-run", "1", "--out", str(out), *[a for s in SETTINGS for a in ("--set", s)], *extra]


def run_grid(model: Path, out: Path, arrived: dict[str, float] | None = None, **options):
    """The grid through the API; returns the result and every outcome by key (on_cell sees them as they arrive, and
    notes when in ``arrived``)."""
    import clipadapt

    seen = {}

    def on_cell(outcome, counts) -> None:
        seen[outcome.key] = outcome
        if arrived is not None:
            arrived[outcome.key] = time.perf_counter()

    result = clipadapt.benchmark(str(model), **GRID, out=out, cpus_per_run=1, overrides=SETTINGS, progress=False,
                                 on_cell=on_cell, **options)
    return result, seen


def record(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / "metrics.json").read_text())


def checkpoint_epoch(run_dir: str | Path) -> int | None:
    """The epoch of a training run's last checkpoint (None before the first, and once the run has finished)."""
    try:
        return json.loads((Path(run_dir) / "checkpoints" / "latest.json").read_text())["epoch"]
    except (OSError, ValueError, KeyError):
        return None


def history_epochs(run_dir: str | Path) -> list[int]:
    lines = (Path(run_dir) / "history.csv").read_text().splitlines()
    return [int(line.split(",")[0]) for line in lines[1:]]


def finished_mtimes(model: Path, out: Path) -> dict[str, int]:
    """metrics.json's mtime of every cell with its result."""
    return {c.key: (Path(c.run_dir) / "metrics.json").stat().st_mtime_ns for c in cells(model, out) if c.complete()}


def holders(path: Path, among: str) -> list[psutil.Process]:
    """Processes whose command line contains ``among`` and that have ``path`` open (a cell lock: the process running
    the cell, or one waiting for it)."""
    target = os.path.realpath(path)
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if among not in " ".join(process.info["cmdline"] or []):
            continue
        try:
            if any(f.path == target for f in process.open_files()):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def holder_pid(lock: Path) -> int | None:
    """The pid a cell lock names as its holder (locks._write_holder), None while it names none."""
    try:
        return json.loads(lock.read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those still running (a zombie has exited: only its parent's wait is missing)."""
    found = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except psutil.NoSuchProcess:
            continue
    return found


def name_of(process: psutil.Process) -> str:
    try:
        return process.name()
    except psutil.NoSuchProcess:
        return "(gone)"


def kill_all(processes: list[psutil.Process]) -> None:
    for process in alive(processes):
        try:
            process.resume()  # a stopped process dies of SIGKILL too, but its parent may be waiting on it
            process.kill()
        except psutil.NoSuchProcess:
            continue


def wait_for(condition, what: str, process: subprocess.Popen | None = None, timeout: float = DEADLINE_S,
             log: Path | None = None):
    """Poll ``condition`` until it returns something true; fail (with the driver's log) when ``process`` ended or
    the time is up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if process is not None and process.poll() is not None:
            tail = log.read_text()[-3000:] if log is not None and log.is_file() else ""
            pytest.fail(f"the driver ended (exit {process.returncode}) before {what}:\n{tail}")
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def snapshot(out: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``out`` with its size and mtime."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in out.rglob("*")}


def leftovers(out: Path) -> list[str]:
    """What a killed write leaves behind (io.atomic_path's ``.NAME.*.tmp``, io.staged_directory's
    ``.NAME.partial-*`` and ``.NAME.old-*``) and JSON files that do not parse."""
    found = []
    for path in sorted(out.rglob("*")):
        name = path.name
        if name.endswith(".tmp") or ".partial-" in name or ".old-" in name:
            found.append(str(path.relative_to(out)))
        elif path.suffix == ".json" and path.is_file():
            try:
                json.loads(path.read_text())
            except ValueError:
                found.append(f"{path.relative_to(out)} (not JSON)")
    return found


@pytest.fixture(scope="module")
def model(tiny_clip_dir) -> Path:
    return tiny_clip_dir


@pytest.fixture(scope="module")
def clean(model, tmp_path_factory):
    """The grid run once, uninterrupted, by the local executor: the reference (its out folder and outcomes)."""
    home = tmp_path_factory.mktemp("clean-home")
    out = tmp_path_factory.mktemp("clean") / "out"
    with clipadapt_home(home):
        start = time.perf_counter()
        result, outcomes = run_grid(model, out)
        print(f"\nclean local run: {time.perf_counter() - start:.1f} s; cells "
              f"{ {k: round(o.seconds, 1) for k, o in outcomes.items()} }")
    assert not result.failed, result.failed
    return out, outcomes


# ------------------------------------------------------------------------------------ 1. a Ray worker killed mid-cell

@pytest.mark.slow
def test_ray_workers_killed_mid_cell_are_retried_and_resume(model, clean, tmp_path):
    """SIGKILL to the Ray worker running a coop cell at epoch >= 2, and to the one running the zero-shot cell while
    it writes its run directory (staged under .zeroshot.partial-*): each cell comes back lost and is submitted again,
    resumed; coop continues from its last checkpoint (metrics.json's resumed_at_epochs), zero-shot starts over and
    leaves nothing half-written; every cell measures exactly what the uninterrupted local run measured."""
    require_ray()
    out = tmp_path / "ray"
    runs = out / "runs" / "world-shapes-novel"
    keys = [ZEROSHOT, COOP, OTHER_COOP]
    killed: dict[str, dict] = {}
    started: dict[str, float] = {}  # when each coop cell's run directory appeared (its first attempt's start)
    arrived: dict[str, float] = {}  # when each cell's outcome reached the driver
    retried_at: list[float] = []  # when coop's second attempt started

    def kill(key: str, **seen) -> None:
        workers = holders(cell_lock_path(out, key), "ray::call_cell")
        if workers:
            killed[key] = {**seen, "pids": [w.pid for w in workers], "cmdline": workers[0].cmdline(),
                           "at": time.perf_counter()}
            workers[0].kill()  # SIGKILL

    def watch() -> None:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline and (len(killed) < 2 or len(started) < 2 or not retried_at):
            for key in (COOP, OTHER_COOP):
                if key not in started and (out / "runs" / key / "config.yaml").is_file():
                    started[key] = time.perf_counter()
            if COOP in killed and not retried_at and holder_pid(cell_lock_path(out, COOP)) not in (
                    None, *killed[COOP]["pids"]):
                retried_at.append(time.perf_counter())  # the second attempt holds the cell's lock
            epoch = checkpoint_epoch(out / "runs" / COOP)
            if COOP not in killed and epoch is not None and epoch >= 2:
                kill(COOP, epoch=epoch)
            staging = list(runs.glob(".zeroshot.partial-*"))
            if ZEROSHOT not in killed and staging:
                kill(ZEROSHOT, staging=staging[0])
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    start = time.perf_counter()
    result, outcomes = run_grid(model, out, executor="ray", arrived=arrived)
    elapsed = time.perf_counter() - start
    watcher.join(timeout=5)
    assert sorted(killed) == sorted([ZEROSHOT, COOP]), f"killed only {sorted(killed)}"
    assert retried_at, "coop's second attempt never took the cell's lock"
    for seen in killed.values():
        assert len(seen["pids"]) == 1 and seen["cmdline"][0].startswith("ray::call_cell"), seen  # Ray's title
    assert not result.failed, result.failed
    assert {key: o.attempts for key, o in outcomes.items()} == {ZEROSHOT: 2, COOP: 2, OTHER_COOP: 1}

    retried = record(out / "runs" / COOP)
    resumed_at = retried.get("resumed_at_epochs")
    assert resumed_at is not None and len(resumed_at) == 1, resumed_at
    assert killed[COOP]["epoch"] <= resumed_at[0] < EPOCHS  # the last checkpoint before the kill, not epoch 0
    assert history_epochs(out / "runs" / COOP) == list(range(1, EPOCHS + 1))  # every epoch once
    assert "resumed_at_epochs" not in record(out / "runs" / OTHER_COOP)
    clean_out, clean_outcomes = clean
    for key in keys:  # every cell, the retried ones included, equals the uninterrupted local run exactly
        assert record(out / "runs" / key)["metrics"] == record(clean_out / "runs" / key)["metrics"], key
    assert leftovers(out) == [] and not (out / STATE_DIR).exists()  # the killed zero-shot's staging is gone

    spans = {key: arrived[key] - started[key] for key in (COOP, OTHER_COOP)}
    print(f"\nray, coop's worker killed at checkpoint epoch {killed[COOP]['epoch']} (resumed at {resumed_at[0]}), "
          f"{killed[COOP]['at'] - started[COOP]:.1f} s into the cell; its second attempt took the lock "
          f"{retried_at[0] - killed[COOP]['at']:.1f} s after the kill and finished "
          f"{arrived[COOP] - retried_at[0]:.1f} s later. From its run directory's start to its result "
          f"{spans[COOP]:.1f} s, against {spans[OTHER_COOP]:.1f} s for the uninterrupted coop cell beside it: "
          f"{spans[COOP] - spans[OTHER_COOP]:.1f} s lost (the cell locally: {clean_outcomes[COOP].seconds:.1f} s "
          f"in all); the grid {elapsed:.1f} s")


# ----------------------------------------------------------------------------------------- 2. the driver killed

@pytest.mark.slow
@pytest.mark.parametrize("executor", ["ray", "slurm"])
def test_killed_driver_then_skip_existing_runs_no_cell_twice(executor, model, clean, tmp_path):
    """SIGKILL to the driver (the process alone) while one cell has finished and a coop cell trains, then
    ``--skip-existing``: the grid finishes equal to a clean run, finished cells keep their metrics.json, nothing
    half-written is left, and no process outlives the test.

    ray: the local Ray instance dies with its driver (fate sharing; verified here, not assumed), so the coop cell
    killed mid-training is resumed from its checkpoint by the rerun. slurm (submitit's local stand-in): jobs outlive
    their driver, as on a cluster; the orphaned coop job is held (SIGSTOP) until the rerun's attempt of the same cell
    waits on the cell lock, then let go: the rerun keeps the orphan's result instead of training the cell again."""
    if executor == "ray":
        require_ray()
    out = tmp_path / executor
    log = tmp_path / "driver.log"
    extra = ["--executor", executor] + (["--slurm-cluster", "local"] if executor == "slurm" else [])
    planned = {c.key: c for c in cells(model, out)}
    coops = [k for k in planned if "/coop/" in k]

    def finished_and_training():
        done = [k for k, c in planned.items() if c.complete()]
        training = [k for k in coops if k not in done and (checkpoint_epoch(planned[k].run_dir) or 0) in
                    range(1, 4)]  # 9 epochs or more to go: the cell is still training when the driver's end reaches it
        return (done, training[0]) if done and training else None

    tree: list[psutil.Process] = []
    stopped: list[psutil.Process] = []
    with log.open("w") as output:
        driver = subprocess.Popen(cli_args(model, out, *extra), stdout=output, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        done, running = wait_for(finished_and_training, "a finished cell and a coop cell mid-training", driver, log=log)
        if executor == "slurm":  # the job running that cell stays stopped until the rerun waits for it
            stopped = holders(cell_lock_path(out, running), "submitit")
            assert len(stopped) == 1, stopped
            stopped[0].suspend()
        tree = psutil.Process(driver.pid).children(recursive=True)
        names = {p.pid: name_of(p) for p in tree}
        os.kill(driver.pid, signal.SIGKILL)  # the driver alone, not its process group
        killed_at = time.perf_counter()
        driver.wait()
        assert not (out / "benchmark.csv").exists()
        if executor == "ray":  # fate sharing: the Ray instance and its workers end with the driver
            essential = [p for p in tree if names[p.pid].startswith(("ray::call_cell", "raylet", "gcs_server"))]
            assert "ray::call_cell" in names.values(), names
            wait_for(lambda: not alive(essential), "the Ray instance to end with its driver", timeout=60)
            print(f"\nray: workers, raylet and GCS gone {time.perf_counter() - killed_at:.1f} s after the driver's "
                  f"SIGKILL; still running: {[names[p.pid] for p in alive(tree)]}")
            kill_all(tree)  # Ray's dashboard and runtime-env agents outlive it by a minute or more
        else:  # the orphaned jobs live on
            assert stopped[0] in alive(tree) and checkpoint_epoch(planned[running].run_dir) is not None
            assert not planned[running].complete()
        before = finished_mtimes(model, out)
        assert set(done) <= set(before) and running not in before

        let_go: dict = {}
        if stopped:
            lock = cell_lock_path(out, running)

            def release_when_waited_for() -> None:  # the rerun's attempt has the lock open, blocked on it
                deadline = time.monotonic() + DEADLINE_S
                while time.monotonic() < deadline and not [p for p in holders(lock, "submitit")
                                                           if p.pid != stopped[0].pid]:
                    time.sleep(0.1)
                let_go["waited"] = time.monotonic() < deadline
                stopped[0].resume()

            threading.Thread(target=release_when_waited_for, daemon=True).start()
        options = {"executor": executor, **({"slurm_cluster": "local"} if executor == "slurm" else {})}
        result, outcomes = run_grid(model, out, skip_existing=True, **options)
        assert not result.failed, result.failed

        # finished cells are kept, untouched; the rerun ran the others (a cell an orphaned job finished meanwhile is
        # kept too)
        assert set(before) <= set(result.kept) and set(result.kept) | set(outcomes) == set(planned)
        assert set(result.kept).isdisjoint(outcomes)
        assert {k: v for k, v in finished_mtimes(model, out).items() if k in before} == before
        again = record(planned[running].run_dir)
        if executor == "ray":  # the killed cell continued its checkpoint
            assert outcomes[running].result["kept"] is False
            assert again.get("resumed_at_epochs", [0])[0] >= 1, again.get("resumed_at_epochs")
        else:  # the rerun waited for the orphan and kept its result: the cell trained once, never resumed
            assert let_go.get("waited"), "the rerun's attempt never waited on the orphaned cell's lock"
            assert outcomes[running].result["kept"] is True and "resumed_at_epochs" not in again
            jobs = json.loads((out / "slurm" / "jobs.json").read_text())
            assert "is running in another process" in Path(jobs[running]["stderr"]).read_text()
        assert history_epochs(planned[running].run_dir) == list(range(1, EPOCHS + 1))
        assert leftovers(out) == [] and not (out / STATE_DIR).exists()
        clean_out, _ = clean
        assert results(read_csv(out / "benchmark.csv")) == results(read_csv(clean_out / "benchmark.csv"))
        assert wait_for(lambda: not alive(tree), "the orphaned processes to end", timeout=30)
    finally:
        if driver.poll() is None:
            os.kill(driver.pid, signal.SIGKILL)
            driver.wait()
        kill_all(stopped + tree)


# ----------------------------------------------------------------------------------- 3. two drivers on one --out

@pytest.mark.slow
def test_second_benchmark_on_the_same_out_refuses_and_the_first_finishes(model, clean, tmp_path):
    """A second ``clipadapt benchmark`` on the --out of one that runs refuses in one line (exit 2) and writes
    nothing; the first finishes unharmed (equal to the clean run); once it has ended the lock is gone and
    ``--skip-existing`` runs (keeping every cell)."""
    out = tmp_path / "out"
    log = tmp_path / "first.log"
    lock = out / STATE_DIR / "driver.lock"
    with log.open("w") as output:
        first = subprocess.Popen(cli_args(model, out), stdout=output, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    try:
        wait_for(lambda: lock.is_file() and lock.read_text(), "the first benchmark to hold --out", first, log=log)
        os.kill(first.pid, signal.SIGSTOP)  # paused, holding the lock, for as long as the second takes
        try:
            files = snapshot(out)
            second = subprocess.run(cli_args(model, out, "--skip-existing"), capture_output=True, text=True,
                                    timeout=DEADLINE_S)
            assert snapshot(out) == files  # the refused one wrote nothing (the first is paused: nothing moves)
        finally:
            os.kill(first.pid, signal.SIGCONT)
        message = second.stdout + second.stderr
        assert second.returncode == 2, message
        assert len(message.strip().splitlines()) == 1, message
        assert f"another benchmark is running on --out '{out}' (pid {first.pid} on {socket.gethostname()}, since " \
               in message and "wait for it to finish, or give another --out" in message
        assert json.loads(lock.read_text())["pid"] == first.pid
        assert first.wait(timeout=DEADLINE_S) == 0, log.read_text()[-3000:]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    clean_out, _ = clean
    assert results(read_csv(out / "benchmark.csv")) == results(read_csv(clean_out / "benchmark.csv"))
    assert not (out / STATE_DIR).exists()  # the lock went with the first

    result, outcomes = run_grid(model, out, skip_existing=True)
    assert not result.failed and outcomes == {}
    assert sorted(result.kept) == sorted(c.key for c in cells(model, out))
