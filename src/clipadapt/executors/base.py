"""What every executor shares: its config, the :class:`Executor` interface, how a cell runs in a worker
(:func:`call_cell`) and how a grid's cells are submitted, retried and collected (:func:`run_cells`).

A cell is a picklable, importable function and its argument (a small dataclass) that writes its own run directory
and returns a small result. An :class:`Executor` takes cells with ``submit`` and yields their :class:`Outcome` as
they finish from ``outcomes``; a failing cell is an outcome with an error, never an exception that stops the others.

A cell whose worker died under it (a killed Ray worker, a Slurm job lost with its node or killed past its time) comes
back ``lost``; :func:`run_cells` submits it again, up to ``retries`` times, with its argument's ``resumed()`` (when it
has one): the new attempt continues the run directory's last checkpoint instead of starting over. Engines' own
retries are turned off so that this is the only one (Ray would re-send the first attempt's argument, which replaces
the run directory under ``--overwrite``).
"""


from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from clipadapt.config import option
from clipadapt.errors import ClipAdaptError, ConfigError
from clipadapt.executors.locks import Claim, cell_claim, cell_lock
from clipadapt.registry import Registry

Cell = Callable[[Any], Any]
log = logging.getLogger(__name__)
SLURM_ONLY = ("partition", "time", "array_parallelism", "slurm_settings")
SLURM_CLUSTERS = ("slurm", "local", "debug")


@dataclass
class ExecutorConfig:
    executor: str = option("local", help="where cells run: local (this process, one after another), ray (Ray "
                                         "tasks) or slurm (a Slurm job array through submitit)")
    address: str | None = option(None, help="an existing Ray cluster (HOST:PORT or ray://HOST:PORT); default: a "
                                            "local instance started for the run")
    cpus_per_run: float | None = option(None, help="CPUs each cell asks for and its torch threads (local: all; "
                                                   "ray: 1; slurm: the partition's default)")
    gpus_per_run: float = option(0.0, help="GPUs each cell asks for (ray: fractions share a GPU; slurm: whole GPUs)")
    partition: str | None = option(None, help="slurm: the partition the jobs go to (default: the cluster's)")
    time: str | None = option(None, help="slurm: each job's time limit, as Slurm writes it (MM, HH:MM:SS, "
                                         "D-HH:MM); a cell past it is requeued and resumes its checkpoint")
    mem: str | None = option(None, help="memory per cell (slurm: --mem, e.g. 32G; ray: the task's memory)")
    array_parallelism: int | None = option(None, help="slurm: cells of the job array running at once (default: "
                                                      "as many as the cluster gives)")
    slurm_settings: list[str] = field(default_factory=list, metadata={
        "help": "slurm: more of submitit's Slurm parameters, KEY=VALUE (account, qos, constraint, ...)"})
    slurm_cluster: str = option("slurm", help="slurm: where the jobs go: slurm (sbatch), or submitit's stand-ins "
                                              "on this machine: local (a process per job) or debug (in this "
                                              "process), to try a grid before sending it")
    retries: int = option(2, help="times a cell whose worker died is run again, resuming its checkpoint")

    def __post_init__(self) -> None:
        engine = EXECUTORS.get(self.executor)  # one line with the valid choices
        if self.cpus_per_run is not None and self.cpus_per_run <= 0:
            raise ConfigError(f"--cpus-per-run must be positive, got {self.cpus_per_run}")
        if self.gpus_per_run < 0:
            raise ConfigError(f"--gpus-per-run must be 0 or more, got {self.gpus_per_run}")
        if self.retries < 0:
            raise ConfigError(f"retries must be 0 or more, got {self.retries}")
        if self.address and self.executor != "ray":
            raise ConfigError(f"--address is a Ray cluster's; it needs --executor ray (got --executor "
                              f"{self.executor})")
        given = [name for name in SLURM_ONLY if getattr(self, name) not in (None, [])]
        if self.slurm_cluster != "slurm":
            given.append("slurm_cluster")
        if given and self.executor != "slurm":
            flags = ", ".join("--" + name.replace("_", "-").replace("settings", "setting") for name in given)
            raise ConfigError(f"{flags} {'is' if len(given) == 1 else 'are'} Slurm's; "
                              f"{'it needs' if len(given) == 1 else 'they need'} --executor slurm (got --executor "
                              f"{self.executor})")
        if self.mem is not None and self.executor == "local":
            raise ConfigError("--mem is a request to Ray or Slurm; the local executor runs cells in this process "
                              "(give --executor ray or slurm, or leave --mem out)")
        if self.slurm_cluster not in SLURM_CLUSTERS:
            raise ConfigError(f"unknown --slurm-cluster '{self.slurm_cluster}'; valid choices: "
                              f"{', '.join(SLURM_CLUSTERS)}")
        if self.array_parallelism is not None and self.array_parallelism < 1:
            raise ConfigError(f"--array-parallelism must be 1 or more (cells running at once), got "
                              f"{self.array_parallelism}")
        engine.check(self)  # a missing package, an unreachable cluster or a bad request fails before anything runs


@dataclass
class Outcome:
    """What became of one cell: its result, or the error that stopped it (one line) and where it came from.
    ``lost``: the cell did not fail, its worker died under it (run_cells runs it again)."""

    key: str
    result: Any = None
    error: str | None = None
    seconds: float = 0.0
    trace: str = ""
    lost: bool = False
    attempts: int = 1

    @property
    def failed(self) -> bool:
        return self.error is not None


def call_cell(key: str, cell: Cell, argument: Any, threads: int | None = None, claim: Claim | None = None) -> Outcome:
    """Run one cell here, with ``threads`` torch threads when given, holding its ``claim`` (locks.cell_lock: its lock,
    and a check that its driver still holds the folder); every executor runs cells through this."""
    start = time.perf_counter()
    previous = None
    if threads is not None:
        import torch

        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
    try:
        with cell_lock(claim, key):
            return Outcome(key, result=cell(argument), seconds=time.perf_counter() - start)
    except ClipAdaptError as e:
        return Outcome(key, error=str(e), seconds=time.perf_counter() - start)
    except Exception as e:  # a bug in one cell is reported with the others' results, not raised over them
        return Outcome(key, error=f"{type(e).__name__}: {e}", seconds=time.perf_counter() - start,
                       trace=traceback.format_exc())
    finally:
        if previous is not None:
            import torch

            torch.set_num_threads(previous)


def resumed(argument: Any) -> Any:
    """A cell's argument for another attempt: its ``resumed()`` (continue the run directory's checkpoint), when the
    argument has one; otherwise the same argument."""
    again = getattr(argument, "resumed", None)
    return again() if callable(again) else argument


class Executor:
    """Runs cells; subclasses are one engine each (module docstring)."""

    name: ClassVar[str] = ""

    def __init__(self, config: ExecutorConfig, out: str | Path | None = None, token: str = "") -> None:
        self.config = config
        self.out = Path(out) if out is not None else None  # the grid's folder: cell locks, logs (slurm)
        self.token = token  # the driver's, from locks.exclusive_out
        self.on_start: Callable[[str], None] = lambda key: None  # a cell starts (local) or is dispatched (ray)

    @classmethod
    def check(cls, config: ExecutorConfig) -> None:
        """Refuse, in one line, a config this engine cannot run (its package missing, its cluster unreachable)."""

    def threads(self) -> int | None:
        """Torch threads of a cell: its CPU request, rounded down (None: leave the process's setting)."""
        cpus = self.config.cpus_per_run
        return max(1, int(cpus)) if cpus is not None else None

    def claim(self, key: str) -> Claim | None:
        """What a cell holds while it runs (None outside a grid folder)."""
        return cell_claim(self.out, key, self.token) if self.out is not None else None

    def submit(self, key: str, cell: Cell, argument: Any) -> None:
        raise NotImplementedError

    def outcomes(self) -> Iterator[Outcome]:
        """The outcome of every submitted cell, as each finishes (cells submitted meanwhile included)."""
        raise NotImplementedError

    def running(self) -> int:
        """Cells started and not finished (for the progress line)."""
        return 0

    def queued(self) -> int:
        """Cells submitted and not started."""
        return 0

    def close(self) -> None:
        """Release what the executor started."""


EXECUTORS: Registry[type[Executor]] = Registry("executor")


def register_executor(name: str):
    def wrap(cls: type[Executor]) -> type[Executor]:
        cls.name = name
        EXECUTORS.register(name, cls, help=(cls.__doc__ or "").strip().splitlines()[0])
        return cls

    return wrap


@contextmanager
def open_executor(config: ExecutorConfig, out: str | Path | None = None, token: str = "") -> Iterator[Executor]:
    """The configured executor for the block. With ``out`` (the grid's folder, which the driver holds:
    ``locks.exclusive_out`` gives the ``token``) every cell holds its own lock while it runs."""
    executor = EXECUTORS.get(config.executor)(config, out, token)
    try:
        yield executor
    finally:
        executor.close()


def run_cells(executor: Executor, cells: list[tuple[str, Cell, Any]],
              on_outcome: Callable[[Outcome, dict[str, int]], None] | None = None,
              on_start: Callable[[str], None] | None = None) -> dict[str, Outcome]:
    """Submit every cell, collect every outcome (by key, in the order given); ``on_outcome`` sees each as it
    arrives with the counts so far (``done``, ``failed``, ``running``, ``queued``, ``total``, ``retried``),
    ``on_start`` each key as its cell starts (local) or is handed to the engine (ray, slurm). A lost cell is
    submitted again, resumed, up to ``executor.config.retries`` times; its outcome counts once, with its attempts."""
    if on_start is not None:
        executor.on_start = on_start
    given = {key: (cell, argument) for key, cell, argument in cells}
    attempts = dict.fromkeys(given, 1)
    lost_seconds = dict.fromkeys(given, 0.0)
    for key, cell, argument in cells:
        executor.submit(key, cell, argument)
    found: dict[str, Outcome] = {}
    counts = {"done": 0, "failed": 0, "running": 0, "queued": 0, "total": len(cells), "retried": 0}
    for outcome in executor.outcomes():
        key = outcome.key
        if outcome.lost and attempts[key] <= executor.config.retries:
            attempts[key] += 1
            lost_seconds[key] += outcome.seconds
            counts["retried"] += 1
            log.warning("%s: %s; running it again, resuming its last checkpoint (attempt %d of %d)", key,
                        outcome.error, attempts[key], executor.config.retries + 1)
            cell, argument = given[key]
            given[key] = cell, resumed(argument)
            executor.submit(key, *given[key])
            continue
        outcome.attempts, outcome.seconds = attempts[key], outcome.seconds + lost_seconds[key]
        found[key] = outcome
        counts["failed" if outcome.failed else "done"] += 1
        counts["running"], counts["queued"] = executor.running(), executor.queued()
        if on_outcome is not None:
            on_outcome(outcome, counts)
    return {key: found[key] for key, _, _ in cells if key in found}


def run_with_status(executor: Executor, cell: Cell, todo: dict[str, tuple[Any, Any, str]],
                    notify: Callable[[Any, str], None]) -> dict[str, Outcome]:
    """Run ``cell`` on every ``todo[key] = (item, argument, status)`` (a comparison's runs, a sweep's cells):
    ``notify(item, status)`` as each starts, then ``"done"`` or ``"failed: ..."`` (failures logged, their traceback at
    debug level); a failing cell spoils no other."""
    def finished(outcome: Outcome, counts: dict[str, int]) -> None:
        if outcome.failed:
            log.error("%s failed: %s", outcome.key, outcome.error)
            if outcome.trace:
                log.debug("%s", outcome.trace)
        notify(todo[outcome.key][0], f"failed: {outcome.error}" if outcome.failed else "done")

    return run_cells(executor, [(key, cell, argument) for key, (_, argument, _) in todo.items()], finished,
                     on_start=lambda key: notify(todo[key][0], todo[key][2]))
