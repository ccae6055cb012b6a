"""The Slurm executor without a cluster. Through submitit's stand-ins (``--slurm-cluster local``: a process per job,
real pickling; ``debug``: in this process) a benchmark equals the local executor's cell for cell, and a job sent its
time-limit signal is requeued and resumes its checkpoint to the uninterrupted result. Bad input, a machine without
Slurm and a Slurm that refuses (fake ``sinfo``/``sbatch``/``srun`` on PATH) are one line that writes nothing; the
requests become the sbatch lines submitit writes.

The two runs on the world are marked slow (collected late, conftest.py: the world is built by then)."""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
import threading
import time
from pathlib import Path

import pytest

from clipadapt.cli import app
from clipadapt.errors import ConfigError
from clipadapt.executors import ExecutorConfig
from clipadapt.executors.slurm_options import ONE_TASK, OWN_OPTIONS, memory_bytes, parse_settings, time_minutes
from tests.test_benchmark import FAST, read_csv, results, runner
from tests.test_executors import command

SMALL = dict(model="world:tiny", datasets=["world:shapes-novel"], methods=["linear-probe", "coop"], shots=[1],
             seeds=[1, 2])
KEYS = ["world-shapes-novel/zeroshot", "world-shapes-novel/linear-probe/1shot-seed1",
        "world-shapes-novel/linear-probe/1shot-seed2", "world-shapes-novel/coop/1shot-seed1",
        "world-shapes-novel/coop/1shot-seed2"]
COOP = "world-shapes-novel/coop/1shot-seed1"
EPOCHS = 12  # the interrupted coop run's (50 short epochs with coop's schedule): signalled at epoch 2


def metrics(out: Path) -> dict[str, dict]:
    """Every run's metrics, by its run directory under ``out/runs``."""
    return {p.parent.relative_to(out / "runs").as_posix(): json.loads(p.read_text())["metrics"]
            for p in sorted((out / "runs").rglob("metrics.json"))}


def listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def run_small(out: Path, **executor):
    """SMALL on ``executor``, one CPU per cell; the result and what on_cell saw: (key, counts) as each finished."""
    from clipadapt.api import benchmark

    seen: list[tuple[str, dict]] = []
    result = benchmark(**SMALL, out=out, cpus_per_run=1, overrides=FAST, progress=False,
                       on_cell=lambda outcome, counts: seen.append((outcome.key, dict(counts))), **executor)
    assert not result.failed, result.failed
    return result, seen


@pytest.mark.slow
def test_slurm_local_and_debug_equal_the_local_executor_cell_for_cell(with_world, tmp_path):
    run_small(tmp_path / "local")
    expected_rows, expected = results(read_csv(tmp_path / "local" / "benchmark.csv")), metrics(tmp_path / "local")
    assert sorted(expected) == sorted(KEYS) and len(expected_rows) == len(KEYS)
    for cluster in ("local", "debug"):
        out = tmp_path / f"slurm-{cluster}"
        result, seen = run_small(out, executor="slurm", slurm_cluster=cluster)
        assert results(read_csv(out / "benchmark.csv")) == expected_rows, cluster
        assert metrics(out) == expected, cluster
        assert result.kept == [] and all(o.attempts == 1 for o in result.outcomes.values()), cluster
        # on_cell: every cell once, with the counts so far
        assert sorted(key for key, _ in seen) == sorted(KEYS), cluster
        assert [(c["done"], c["failed"], c["total"], c["retried"]) for _, c in seen] == [
            (n, 0, len(KEYS), 0) for n in range(1, len(KEYS) + 1)], cluster
        # jobs.json names every cell's job and its log; those jobs' folders are all there is under OUT/slurm
        jobs = json.loads((out / "slurm" / "jobs.json").read_text())
        assert sorted(jobs) == sorted(KEYS), cluster
        ids = {job["job_id"] for job in jobs.values()}
        assert len(ids) == len(KEYS) and all(job["attempt"] == 1 for job in jobs.values()), jobs
        for key, job in jobs.items():
            for log in (Path(job["stdout"]), Path(job["stderr"])):
                assert log.is_file() and log.parent == out / "slurm" / job["job_id"], (cluster, key, job)
        assert sorted(p.name for p in (out / "slurm").iterdir()) == sorted([*ids, "jobs.json"]), cluster
        # the locks are gone (OUT/.clipadapt); the rest is what the local executor wrote, and the jobs
        assert sorted(p.name for p in out.iterdir()) == sorted(
            [p.name for p in (tmp_path / "local").iterdir()] + ["slurm"]), cluster


def signal_when_checkpointed(out: Path, key: str, epoch: int, sent: dict, stop: threading.Event,
                             timeout_s: float) -> None:
    """The watcher (a thread): once ``key``'s checkpoint has ``epoch`` epochs, send SIGUSR2 (Slurm's "time is nearly
    up") to the python process running the cell's submitit local job (a child of the job's controller, whose pid is
    the job id), stopped meanwhile so that the signal surely lands before its training ends. ``sent`` says what was
    done, or ``error`` why not."""
    import psutil

    latest, jobs = out / "runs" / key / "checkpoints" / "latest.json", out / "slurm" / "jobs.json"
    deadline = time.monotonic() + timeout_s
    workers: list = []
    try:
        while not stop.is_set():
            if time.monotonic() > deadline:
                sent["error"] = f"no checkpoint of {epoch} epochs in {latest} after {timeout_s:.0f} s"
                return
            try:
                if not workers:  # found before training starts: nothing to look for once it is time
                    job_id = int(json.loads(jobs.read_text())[key]["job_id"])
                    workers = [p for p in psutil.Process(job_id).children(recursive=True)
                               if "submitit.core._submit" in " ".join(p.cmdline())]
                    sent["limit_s"] = psutil.Process(job_id).environ().get("SUBMITIT_LOCAL_TIMEOUT_S")
                at = json.loads(latest.read_text())["epoch"] if workers else -1
            except (OSError, ValueError, KeyError):  # not there yet, or being replaced
                at = -1
            if at < epoch:
                time.sleep(0.02)
                continue
            for worker in workers:
                worker.suspend()
            try:
                at = json.loads(latest.read_text())["epoch"]
                if (out / "runs" / key / "metrics.json").exists():
                    sent["error"] = f"the run finished before the watcher stopped it (epoch {at})"
                    return
                for worker in workers:
                    worker.send_signal(signal.SIGUSR2)
            finally:
                for worker in workers:
                    worker.resume()
            sent.update(epoch=at, job_id=job_id, pids=[w.pid for w in workers])
            return
    except psutil.Error as e:
        sent["error"] = f"the job's processes: {e}"


def training_curve(run: Path) -> list[tuple]:
    """Every epoch's training loss, accuracy and learning rate (history.csv; validation, which only draws the curve
    of a val-free method, also runs where a run was resumed)."""
    return [(row["epoch"], row["train_loss"], row["train_acc"], row["lr"]) for row in read_csv(run / "history.csv")]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_job_out_of_time_is_requeued_and_resumes_to_the_uninterrupted_result(with_world, tmp_path):
    from clipadapt.api import benchmark

    grid = dict(model="world:tiny", datasets=["world:shapes-novel"], methods=["coop"], shots=[1], seeds=[1],
                cpus_per_run=1, overrides=[f"train.epochs={EPOCHS}"], progress=False, report=False)
    reference = benchmark(**grid, out=tmp_path / "local")
    assert not reference.failed, reference.failed
    expected = json.loads((tmp_path / "local" / "runs" / COOP / "metrics.json").read_text())
    assert "resumed_at_epochs" not in expected

    out = tmp_path / "slurm"
    sent: dict = {}
    stop = threading.Event()
    watcher = threading.Thread(target=signal_when_checkpointed, args=(out, COOP, 2, sent, stop, 300), daemon=True)
    watcher.start()
    try:  # --time 10: the stand-in's own signal (30 s before the limit) is far away
        result = benchmark(**grid, out=out, executor="slurm", slurm_cluster="local", time="10")
    finally:
        stop.set()
        watcher.join(timeout=30)
    assert "error" not in sent, sent["error"]
    assert sent.get("epoch", 0) >= 2, f"the watcher sent nothing: {sent}"
    assert sent["limit_s"] == "600"  # --time 10 reached the stand-in's controller
    assert not result.failed, result.failed
    job = out / "slurm" / str(sent["job_id"]) / f"{sent['job_id']}_0_log"
    log = Path(f"{job}.out").read_text()
    assert log.count("Requeued job") == 1 and "Job completed successfully" in log, log[-3000:]
    record = json.loads((out / "runs" / COOP / "metrics.json").read_text())
    # resumed where the checkpoint was when the signal came (an epoch later at most: one being saved), not from 0
    assert record.get("resumed_at_epochs") in ([sent["epoch"]], [sent["epoch"] + 1]), (
        f"resumed_at_epochs {record.get('resumed_at_epochs')}, signalled at epoch {sent['epoch']}; the job's log:\n"
        f"{log[-3000:]}")
    assert record["metrics"] == expected["metrics"]  # every number, exactly
    assert training_curve(out / "runs" / COOP) == training_curve(tmp_path / "local" / "runs" / COOP)
    jobs = json.loads((out / "slurm" / "jobs.json").read_text())
    assert jobs[COOP]["job_id"] == str(sent["job_id"]) and jobs[COOP]["attempt"] == 1  # requeued, not resubmitted
    assert [o.attempts for o in result.outcomes.values()] == [1, 1]
    assert not (out / ".clipadapt").exists()


# -- bad input: one line, exit 2, nothing written -------------------------------------------------------------------

BENCHMARK = ["benchmark", "--model", "world:tiny", "--suite", "world", "--methods", "coop", "--shots", "1",
             "--seeds", "1"]
OPTION_ERRORS = [  # (the options, the line's telling part); refused before Slurm's own tools are looked for
    (["--executor", "slurm", "--slurm-setting", "acount=lab"],
     "unknown --slurm-setting 'acount'; valid keys: account, "),
    (["--executor", "slurm", "--slurm-setting", "partition=gpu"],
     "--slurm-setting 'partition' has its own option: give --partition instead"),
    (["--executor", "slurm", "--slurm-setting", "account"], "--slurm-setting 'account' must be KEY=VALUE"),
    (["--executor", "slurm", "--time", "1:2:3:4"],
     "--time '1:2:3:4' is not a Slurm time; valid forms: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS"),
    (["--executor", "slurm", "--time", "0:00"], "--time '0:00' is no time at all"),
    (["--executor", "slurm", "--mem", "lots"], "--mem 'lots' is not an amount of memory"),
    (["--executor", "slurm", "--array-parallelism", "0"], "--array-parallelism must be 1 or more"),
    (["--executor", "slurm", "--gpus-per-run", "0.5"], "--gpus-per-run 0.5: Slurm gives whole GPUs"),
    (["--executor", "slurm", "--cpus-per-run", "1.5"], "--cpus-per-run 1.5: Slurm gives whole CPUs"),
    (["--executor", "slurm", "--slurm-cluster", "lsf"], "unknown --slurm-cluster 'lsf'; valid choices: slurm, local,"),
    (["--partition", "gpu"], "--partition is Slurm's; it needs --executor slurm (got --executor local)"),
    (["--executor", "ray", "--time", "10", "--slurm-cluster", "local"],
     "--time, --slurm-cluster are Slurm's; they need --executor slurm (got --executor ray)"),
]


def assert_one_line(result, message: str) -> None:
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1, f"not one line:\n{result.output}"
    assert message in result.output and "Traceback" not in result.output, result.output


def assert_refused(result, message: str, out: Path) -> None:
    assert_one_line(result, message)
    assert not out.exists(), listing(out)


@pytest.mark.parametrize("args, message", OPTION_ERRORS)
def test_bad_slurm_options_are_one_line_and_write_nothing(args, message, tmp_path):
    out = tmp_path / "out"
    assert_refused(runner.invoke(app, [*BENCHMARK, *args, "--out", str(out)]), message, out)


@pytest.mark.parametrize("kind", ["compare", "sweep"])
@pytest.mark.parametrize("args, message", [OPTION_ERRORS[i] for i in (0, 3, 7, 10)])
def test_bad_slurm_options_of_compare_and_sweeps(kind, args, message, tiny_clip_dir, tmp_path):
    out = tmp_path / "out"
    assert_refused(runner.invoke(app, command(kind, tiny_clip_dir, out) + args), message, out)


@pytest.mark.parametrize("kind", ["benchmark", "compare"])
def test_slurm_without_submitit_is_one_line(kind, tiny_clip_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # `import submitit` raises ImportError
    out = tmp_path / "out"
    args = [*BENCHMARK, "--out", str(out)] if kind == "benchmark" else command(kind, tiny_clip_dir, out)
    result = runner.invoke(app, [*args, "--executor", "slurm", "--slurm-cluster", "local"])
    assert_refused(result, "--executor slurm needs submitit: pip install 'clipadapt[slurm]'", out)


def fake_slurm(folder: Path, sbatch_error: str | None = None, tools=("sinfo", "sbatch", "srun")) -> Path:
    """A bin folder holding a fake Slurm: sinfo lists the partitions gpu and cpu, sbatch refuses with
    ``sbatch_error`` on stderr (or prints a job id), srun does nothing; each call is appended to ``folder/calls``."""
    scripts = {"sinfo": 'printf "gpu\\ncpu\\n"',
               "sbatch": f'echo "{sbatch_error}" >&2; exit 1' if sbatch_error else 'echo "Submitted batch job 1234"',
               "srun": "exit 0"}
    bin_dir = folder / "fake-slurm"
    bin_dir.mkdir()
    for tool in tools:
        path = bin_dir / tool
        path.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{folder / "calls"}"\n{scripts[tool]}\n')
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return bin_dir


def calls(folder: Path) -> list[str]:
    """The fake Slurm tools run, in order."""
    path = folder / "calls"
    return [line.split()[0] for line in path.read_text().splitlines()] if path.is_file() else []


@pytest.mark.parametrize("tools, missing", [((), "sbatch or srun"), (("sinfo", "sbatch"), "srun")])
def test_slurm_without_sbatch_or_srun_is_one_line(tools, missing, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(fake_slurm(tmp_path, tools=tools)))  # nothing else: no Slurm tool but these
    out = tmp_path / "out"
    result = runner.invoke(app, [*BENCHMARK, "--executor", "slurm", "--out", str(out)])
    assert_refused(result, f"--executor slurm needs Slurm's sbatch and srun, and this machine has no {missing}; "
                           f"run from a Slurm login node, or try the grid here with --slurm-cluster local", out)
    assert calls(tmp_path) == []


def test_a_partition_sinfo_does_not_list_is_one_line(tmp_path, monkeypatch):
    bin_dir = fake_slurm(tmp_path, "sbatch: error: invalid partition specified: gpux")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    out = tmp_path / "out"
    result = runner.invoke(app, [*BENCHMARK, "--executor", "slurm", "--partition", "gpux", "--out", str(out)])
    assert_refused(result, "unknown --partition 'gpux'; valid choices (sinfo): cpu, gpu", out)
    assert calls(tmp_path) == ["sinfo"]  # refused before anything was submitted


REFUSAL = "sbatch: error: Batch job submission failed: Requested time limit is invalid (missing or exceeds some limit)"


def test_a_real_cluster_needs_time(tmp_path, monkeypatch):
    """Without --time submitit would ask for 5 minutes: every cell requeued every few minutes, then failed."""
    bin_dir = fake_slurm(tmp_path)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    out = tmp_path / "out"
    result = runner.invoke(app, [*BENCHMARK, "--executor", "slurm", "--partition", "gpu", "--out", str(out)])
    assert_refused(result, "--executor slurm needs --time, each job's limit (e.g. 4:00:00; valid forms: MM, MM:SS, "
                           "HH:MM:SS", out)
    assert "sbatch" not in calls(tmp_path)


@pytest.mark.parametrize("kind", ["benchmark", "compare"])
def test_jobs_slurm_refuses_are_one_line_and_leave_out_as_it_was(kind, tiny_clip_dir, tmp_path, monkeypatch):
    """sbatch refuses the jobs (after the grid was planned and checked): one line; a new --out is not made, an
    existing one (a previous run's OUT/slurm in it) is left exactly as it was."""
    monkeypatch.setenv("PATH", f"{fake_slurm(tmp_path, REFUSAL)}:{os.environ['PATH']}")
    message = f"Slurm refused the jobs: {REFUSAL} (check --partition, --time and --slurm-setting; `sinfo` lists"
    existing = tmp_path / "existing"
    (existing / "slurm").mkdir(parents=True)
    (existing / "notes.txt").write_text("mine")
    (existing / "slurm" / "jobs.json").write_text("{}")
    for out in (tmp_path / "new", existing):
        if kind == "benchmark":  # the tiny CLIP on a generated dataset: zero-shot and linear-probe, two jobs
            args = ["benchmark", "--model", str(tiny_clip_dir), "--datasets", "world:shapes-novel", "--methods",
                    "linear-probe", "--shots", "1", "--seeds", "1", "--out", str(out)]
        else:
            args = command(kind, tiny_clip_dir, out)
        result = runner.invoke(app, [*args, "--executor", "slurm", "--partition", "gpu", "--time", "3-00:00:00"])
        assert_one_line(result, message)
    assert not (tmp_path / "new").exists()
    assert listing(existing) == ["notes.txt", "slurm", "slurm/jobs.json"]
    assert (existing / "slurm" / "jobs.json").read_text() == "{}"
    assert calls(tmp_path) == ["sinfo", "sbatch"] * 2


# -- the requests, as Slurm reads them ------------------------------------------------------------------------------

@pytest.mark.parametrize("text, minutes", [
    ("30", 30), (" 45 ", 45), ("0:30", 1), ("1:30", 2), ("30:00", 30),  # MM, MM:SS (seconds round up)
    ("1:30:00", 90), ("1:30:01", 91), ("48:00:00", 2880),  # HH:MM:SS
    ("2-0", 2880), ("2-12", 3600), ("1-02:03", 1563), ("1-02:03:04", 1564), ("2-00:00:00", 2880),  # D-HH[:MM[:SS]]
])
def test_time_minutes_reads_every_slurm_form(text, minutes):
    assert time_minutes(text) == minutes


@pytest.mark.parametrize("text", ["", "1:2:3:4", "90m", "1.5", "-5", "1-", "1-2-3", "0", "0:00", "0-00:00:00"])
def test_time_minutes_refuses_what_is_not_a_limit(text):
    with pytest.raises(ConfigError, match=f"--time '{text}' is (not a Slurm time|no time at all)") as error:
        time_minutes(text)
    assert "MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS" in str(error.value)


@pytest.mark.parametrize("text, size", [
    ("512", 512 << 20), ("512M", 512 << 20), ("100K", 100 << 10), ("32G", 32 << 30), ("32g", 32 << 30),
    ("16GB", 16 << 30), ("2T", 2 << 40), ("256G", 256 << 30)])
def test_memory_bytes(text, size):
    assert memory_bytes(text) == size


@pytest.mark.parametrize("text", ["lots", "1.5G", "0", "0G", "32X", "G", "-1G"])
def test_memory_bytes_refuses_what_is_not_an_amount(text):
    with pytest.raises(ConfigError, match=f"--mem '{text}' is not an amount of memory; valid forms: a whole number "
                                          "with K, M, G or T"):
        memory_bytes(text)


def valid_settings() -> set[str]:
    import submitit

    return submitit.SlurmExecutor._valid_parameters()


def test_parse_settings_reads_values_as_yaml_and_keys_as_submitit_names():
    settings = parse_settings(["account=lab", "qos = high", "exclusive=true", "signal-delay-s=120", "comment=",
                               "mail-type=END", "constraint=a100|h100", "setup=[module load cuda, echo ready]"],
                              valid_settings())
    assert settings == {"account": "lab", "qos": "high", "exclusive": True, "signal_delay_s": 120, "comment": "",
                        "mail_type": "END", "constraint": "a100|h100", "setup": ["module load cuda", "echo ready"]}
    assert parse_settings([], valid_settings()) == {}


def test_parse_settings_refuses_in_one_line():
    valid = valid_settings()
    for key, option in OWN_OPTIONS.items():  # what has its own option is given there, not behind its back
        with pytest.raises(ConfigError, match=f"--slurm-setting '{key}' has its own option: give {option} instead"):
            parse_settings([f"{key}=1"], valid)
    with pytest.raises(ConfigError) as error:
        parse_settings(["acount=lab"], valid)
    keys = str(error.value).split("valid keys: ")[1].split(", ")
    assert keys == sorted(valid - set(OWN_OPTIONS) - ONE_TASK) and "account" in keys and "partition" not in keys
    for key in sorted(ONE_TASK):  # a cell is one task on one node: more tasks would each run it
        with pytest.raises(ConfigError, match=f"--slurm-setting '{key}': each cell is one task on one node"):
            parse_settings([f"{key}=2"], valid)
    for item in ("account", "=lab"):
        with pytest.raises(ConfigError, match=f"--slurm-setting '{item}' must be KEY=VALUE"):
            parse_settings([item], valid)


def test_a_config_becomes_the_sbatch_lines_submitit_writes():
    from clipadapt.executors.slurm import job_script, slurm_parameters

    config = ExecutorConfig("slurm", gpus_per_run=8, cpus_per_run=32, mem="256G", time="2-00:00:00", partition="gpu",
                            slurm_settings=["account=lab"], slurm_cluster="local")
    script = job_script(slurm_parameters(config), "python -m submitit.core._submit OUT/slurm/%j")
    lines = script.splitlines()
    for line in ("#SBATCH --gpus-per-node=8", "#SBATCH --cpus-per-task=32", "#SBATCH --mem=256G",
                 "#SBATCH --time=2880", "#SBATCH --partition=gpu", "#SBATCH --account=lab", "#SBATCH --signal=USR2@90",
                 "#SBATCH --job-name=clipadapt", "#SBATCH --nodes=1"):
        assert line in lines, f"{line} not in:\n{script}"
    assert lines[0] == "#!/bin/bash" and lines[-1].startswith("srun ")
    assert lines[-1].endswith("python -m submitit.core._submit OUT/slurm/%j")
    requests = {line.split("=")[0] for line in lines if line.startswith("#SBATCH")}
    assert not requests & {"#SBATCH --gpus-per-task", "#SBATCH --mem-per-cpu", "#SBATCH --qos", "#SBATCH --array"}

    bare = job_script(slurm_parameters(ExecutorConfig("slurm", slurm_cluster="local")), "cmd").splitlines()
    assert not [line for line in bare if line.startswith(("#SBATCH --gpus", "#SBATCH --cpus", "#SBATCH --mem",
                                                          "#SBATCH --partition", "#SBATCH --account"))]
    capped = slurm_parameters(ExecutorConfig("slurm", array_parallelism=4, slurm_cluster="local"))
    assert capped == {"job_name": "clipadapt", "array_parallelism": 4}
    array = job_script(capped, "cmd", "/shared/out/slurm/%j", cells=10).splitlines()  # 4 of its 10 jobs at once
    assert "#SBATCH --array=0-9%4" in array and "#SBATCH --output=/shared/out/slurm/%A_%a/%A_%a_0_log.out" in array


@pytest.mark.parametrize("limit, minutes", [(None, 7 * 24 * 60), ("1:30:00", 90)])
def test_the_local_stand_in_limits_jobs_to_time_or_a_week(limit, minutes, tmp_path):
    """Not submitit's own default of 2 minutes, which would signal every job of a grid tried locally after 90 s."""
    from clipadapt.executors.slurm import SlurmExecutor

    executor = SlurmExecutor(ExecutorConfig("slurm", time=limit, slurm_cluster="local"), tmp_path)
    executor.close()  # nothing was submitted
    assert executor._executor.parameters["timeout_min"] == minutes
    assert listing(tmp_path) == ["slurm"]  # nothing left but the (empty) jobs' folder
