"""The Slurm executor: a grid's cells as one Slurm job array, through submitit (``pip install 'clipadapt[slurm]'``).

The vision codebases most labs know launch on Slurm the same way (DINOv2's ``run/submit.py``, the
``run_with_submitit.py`` of DeiT, DINO, DETR, ConvNeXt). Each cell is one job of the array asking for
``--cpus-per-run`` CPUs (``cpus_per_task``), ``--gpus-per-run`` whole GPUs (``gpus_per_node``), ``--mem`` and
``--time`` on ``--partition``; ``--array-parallelism`` caps the jobs running at once, ``--slurm-setting KEY=VALUE``
passes any other of submitit's Slurm parameters (account, qos, constraint, ...). Every job's script, log and
submitit's files go under ``OUT/slurm/<job id>/``, and ``OUT/slurm/jobs.json`` says which job ran which cell.

Pre-emption and time limits: Slurm signals a job (USR2, 90 s before its limit); submitit then calls the cell's
``checkpoint`` (:class:`SlurmCell`, a ``submitit.helpers.Checkpointable`` by duck typing, as submitit requeues any
callable with that method) and requeues the job. The requeued job runs the cell again with its argument's
``resumed()``: training continues from the run directory's last checkpoint (saved after every epoch), so a cell
longer than ``--time`` still finishes, and equals an uninterrupted one. A job lost otherwise (its node died, it was
killed) comes back as a lost outcome, and base.run_cells submits it again, resumed.

``--slurm-cluster local`` and ``debug`` use submitit's stand-ins on this machine (a process per job, or every job in
this process when its result is asked for), to try a grid, and the tests, without a cluster; local runs as many
jobs at once as ``--array-parallelism`` (default: this machine's CPUs divided by ``--cpus-per-run``).
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import redirect_stderr, suppress
from pathlib import Path
from typing import Any

from clipadapt.errors import ConfigError
from clipadapt.executors.base import Cell, Executor, ExecutorConfig, Outcome, call_cell, register_executor, resumed
from clipadapt.executors.locks import Claim
from clipadapt.executors.slurm_options import memory_bytes, parse_settings, time_minutes
from clipadapt.io import atomic_write_json

log = logging.getLogger(__name__)
# between looks at the jobs: Slurm's states come from sacct, which submitit calls at most every few seconds; the local
# stand-in's are a process's exit, seen at once
POLL_S = {"slurm": 2.0, "local": 0.2, "debug": 0.0}
JOB_NAME = "clipadapt"
# --slurm-cluster local without --time: a week (submitit's own default, 2 minutes, would signal every job after
# 90 s and fail a cell still running after four of them)
LOCAL_LIMIT_MIN = 7 * 24 * 60


def _import_submitit():
    try:
        import submitit
    except ImportError:
        raise ConfigError("--executor slurm needs submitit: pip install 'clipadapt[slurm]' (valid choices without "
                          "it: local, ray)") from None
    return submitit


def slurm_parameters(config: ExecutorConfig) -> dict[str, Any]:
    """What each job of the array asks Slurm for, as submitit's SlurmExecutor parameters (one-line errors)."""
    submitit = _import_submitit()
    params: dict[str, Any] = {"job_name": JOB_NAME}
    params.update(parse_settings(config.slurm_settings, submitit.SlurmExecutor._valid_parameters()))
    if config.partition:
        params["partition"] = config.partition
    if config.time is not None:
        params["time"] = time_minutes(config.time)
    if config.cpus_per_run is not None:
        if config.cpus_per_run != int(config.cpus_per_run):
            raise ConfigError(f"--cpus-per-run {config.cpus_per_run}: Slurm gives whole CPUs; valid: 1, 2, 3, ...")
        params["cpus_per_task"] = int(config.cpus_per_run)
    if config.gpus_per_run:
        if config.gpus_per_run != int(config.gpus_per_run):
            raise ConfigError(f"--gpus-per-run {config.gpus_per_run}: Slurm gives whole GPUs; valid: 0, 1, 2, ...")
        params["gpus_per_node"] = int(config.gpus_per_run)
    if config.mem is not None:
        memory_bytes(config.mem)  # checked here; Slurm reads the text itself
        params["mem"] = config.mem
    if config.array_parallelism is not None:
        params["array_parallelism"] = config.array_parallelism
    try:  # submitit's own check of the values (the sbatch script it would write)
        job_script(params, "python -m submitit.core._submit FOLDER")
    except (ValueError, TypeError) as e:
        raise ConfigError(f"--slurm-setting: submitit refuses {str(e).strip().splitlines()[0]}") from None
    return params


def job_script(params: dict[str, Any], command: str, folder: str = "OUT/slurm/%j", cells: int | None = None) -> str:
    """The sbatch script submitit writes for ``params``: one job, or the array of ``cells`` jobs (docs,
    benchmarks/executors.py)."""
    from submitit.slurm.slurm import _make_sbatch_string  # the text SlurmExecutor submits

    return _make_sbatch_string(command=command, folder=folder, map_count=cells, **params)


def check_cluster(config: ExecutorConfig) -> None:
    """Slurm is here (sbatch, and the srun submitit's job scripts call, on PATH) and knows the partition (sinfo),
    before anything is written."""
    missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
    if missing:
        raise ConfigError(f"--executor slurm needs Slurm's sbatch and srun, and this machine has no "
                          f"{' or '.join(missing)}; run from a Slurm login node, or try the grid here with "
                          f"--slurm-cluster local")
    if config.partition and shutil.which("sinfo"):
        try:
            found = subprocess.run(["sinfo", "--all", "--noheader", "--format=%R"], capture_output=True, text=True,
                                   timeout=30, check=True).stdout.split()
        except (OSError, subprocess.SubprocessError):
            return  # sbatch will say
        unknown = [p for p in config.partition.split(",") if p not in found]  # sbatch takes a list: any of them
        if found and unknown:
            raise ConfigError(f"unknown --partition '{unknown[0]}'; valid choices (sinfo): "
                              f"{', '.join(sorted(set(found)))}")
    if config.time is None:  # submitit would write --time=5: every cell requeued every few minutes, then failed
        raise ConfigError("--executor slurm needs --time, each job's limit (e.g. 4:00:00; valid forms: "
                          "MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS); `sinfo -o '%P %l'` lists the partitions' "
                          "limits")


class SlurmCell:
    """One cell as a submitit job: ``call_cell``, plus the ``checkpoint`` submitit calls on pre-emption or time
    limit, which requeues the cell resumed."""

    def __call__(self, key: str, cell: Cell, argument: Any, threads: int | None, claim: Claim | None) -> Outcome:
        outcome = call_cell(key, cell, argument, threads, claim)
        if outcome.error and outcome.error.startswith("UncompletedJobError"):  # out of requeues (submitit raises
            outcome.lost = True  # it inside the cell): a new job continues the checkpoint (base.run_cells)
        return outcome

    def checkpoint(self, key: str, cell: Cell, argument: Any, threads: int | None, claim: Claim | None):
        from submitit.helpers import DelayedSubmission

        log.warning("%s: pre-empted or out of time; requeued to resume its last checkpoint", key)
        return DelayedSubmission(self, key, cell, resumed(argument), threads, claim)


@register_executor("slurm")
class SlurmExecutor(Executor):
    """Each cell a job of a Slurm job array, through submitit (--partition, --time, --mem, --slurm-setting)."""

    @classmethod
    def check(cls, config: ExecutorConfig) -> None:
        slurm_parameters(config)
        if config.slurm_cluster == "slurm":
            check_cluster(config)

    def __init__(self, config: ExecutorConfig, out=None, token: str = "") -> None:
        super().__init__(config, out, token)
        submitit = _import_submitit()
        self._submitit = submitit
        self._made = None if out is not None else tempfile.mkdtemp(prefix="clipadapt-slurm-")
        self.folder = Path(out if out is not None else self._made) / "slurm"
        self._folder_existed = self.folder.exists()
        self._found = {p.name for p in self.folder.iterdir()} if self._folder_existed else set()
        params = slurm_parameters(config)
        if config.slurm_cluster == "slurm":
            self._executor = submitit.SlurmExecutor(folder=self.folder / "%j")
            self._executor.update_parameters(**params)
            self._slots = None  # Slurm queues and caps (array_parallelism) itself
        else:
            engine = submitit.LocalExecutor if config.slurm_cluster == "local" else submitit.DebugExecutor
            self._executor = engine(folder=self.folder / "%j")
            if config.slurm_cluster == "local":
                self._executor.update_parameters(timeout_min=params.get("time", LOCAL_LIMIT_MIN),
                                                 gpus_per_node=params.get("gpus_per_node", 0))
            cpus = max(1, int(config.cpus_per_run or 1))
            self._slots = config.array_parallelism or max(1, (os.cpu_count() or 1) // cpus)
        self._waiting: list[tuple[str, tuple]] = []  # submitted to us, not yet to submitit
        self._jobs: dict[str, Any] = {}  # key -> its job
        self._started: dict[str, float] = {}
        self._attempts: dict[str, int] = {}
        self._submitted_once = False
        self._refused: list[Outcome] = []  # cells whose (re)submission Slurm refused after the first

    def submit(self, key: str, cell: Cell, argument: Any) -> None:
        self._waiting.append((key, (key, cell, argument, self.threads(), self.claim(key))))

    def _flush(self) -> None:
        """Hand the waiting cells to submitit: all of them as one job array on Slurm; as many as there are slots on
        the local stand-ins."""
        free = len(self._waiting) if self._slots is None else max(0, self._slots - len(self._jobs))
        batch, self._waiting = self._waiting[:free], self._waiting[free:]
        if not batch:
            return
        try:  # submitit also prints sbatch's refusal to stderr: the one line below says it
            with redirect_stderr(io.StringIO()):
                if len(batch) > 1:
                    with self._executor.batch():
                        jobs = [self._executor.submit(SlurmCell(), *args) for _, args in batch]
                else:
                    jobs = [self._executor.submit(SlurmCell(), *batch[0][1])]
        except (self._submitit.core.utils.UncompletedJobError, self._submitit.core.utils.FailedSubmissionError,
                subprocess.SubprocessError, OSError) as e:  # sbatch refused (a partition, a time over its limit)
            message = " ".join(str(e).split())[:300]
            if self._submitted_once:  # a retry or a later batch: those cells fail, the grid goes on
                log.error("Slurm refused %d job(s): %s", len(batch), message)
                self._refused += [Outcome(key, error=f"Slurm refused its job: {message}") for key, _ in batch]
                return
            self._remove_folder()
            raise ConfigError(f"Slurm refused the jobs: {message} (check --partition, --time and "
                              f"--slurm-setting; `sinfo` lists the partitions and their limits)") from None
        self._submitted_once = True
        for (key, _), job in zip(batch, jobs, strict=True):
            self._jobs[key] = job
            self._started[key] = time.perf_counter()
            self._attempts[key] = self._attempts.get(key, 0) + 1
            self.on_start(key)
        self._write_jobs()

    def _write_jobs(self) -> None:
        """``OUT/slurm/jobs.json``: which job runs (or ran) each cell, and where its log is."""
        record = {key: {"job_id": job.job_id, "attempt": self._attempts[key], "stdout": str(job.paths.stdout),
                        "stderr": str(job.paths.stderr)} for key, job in self._jobs.items()}
        path = self.folder / "jobs.json"
        if path.is_file():
            import json

            record = {**json.loads(path.read_text()), **record}
        atomic_write_json(path, record)

    def _remove_folder(self) -> None:
        """Undo a refused submission: the folder when this run made it, else what submitit added to it (its
        submission script and the cells' pickles)."""
        if not self._folder_existed:
            shutil.rmtree(self.folder, ignore_errors=True)
            return
        for path in self.folder.iterdir():
            if path.name in self._found:
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def _collect(self, key: str, job: Any) -> Outcome:
        errors = self._submitit.core.utils
        seconds = time.perf_counter() - self._started[key]
        if self.config.slurm_cluster == "local" and not job.paths.result_pickle.exists():
            # the job's process ended (done) and wrote nothing: killed. submitit would wait 15 s for the file, which
            # on a cluster's shared filesystem may lag; here it cannot
            return Outcome(key, error=f"Slurm job {job.job_id} ended without a result (killed)", lost=True,
                           seconds=seconds)
        try:
            return job.result()
        except errors.FailedJobError as e:  # the job itself failed (a subclass: caught first)
            return Outcome(key, error=f"Slurm job {job.job_id} failed: {str(e).strip().splitlines()[0]} (log: "
                                      f"{job.paths.stderr})", seconds=seconds)
        except errors.UncompletedJobError as e:  # killed, its node lost, or out of requeues: run it again
            return Outcome(key, error=f"Slurm job {job.job_id} ended without a result: "
                                      f"{str(e).strip().splitlines()[0]}", lost=True, seconds=seconds)

    def outcomes(self) -> Iterator[Outcome]:
        self._flush()
        while self._jobs or self._waiting or self._refused:
            while self._refused:
                yield self._refused.pop(0)
            finished = [key for key, job in self._jobs.items()
                        if self.config.slurm_cluster == "debug" or job.done()]
            for key in finished:
                outcome = self._collect(key, self._jobs[key])
                del self._jobs[key]
                self._flush()
                yield outcome  # run_cells may submit it again (a lost cell): _flush sends it on the next turn
            self._flush()
            if not finished and self._jobs:
                time.sleep(POLL_S[self.config.slurm_cluster])

    def running(self) -> int:
        return sum(1 for job in self._jobs.values() if str(job.state).upper().startswith(("RUNNING", "COMPLETING")))

    def queued(self) -> int:
        return len(self._waiting) + len(self._jobs) - self.running()

    def close(self) -> None:
        for job in self._jobs.values():  # a grid stopped early (Ctrl-C, an error) leaves no job behind
            with suppress(Exception):  # best effort: the job may be gone already
                job.cancel(check=False)
        with suppress(OSError):  # the job folder's pattern, which submitit makes and leaves empty
            (self.folder / "%j").rmdir()
        if self._made is not None:
            shutil.rmtree(self._made, ignore_errors=True)
