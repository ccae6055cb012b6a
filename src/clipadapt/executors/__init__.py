"""Where the cells of a grid run (a benchmark, a comparison, a sweep): one module per engine, one interface.

A cell is a picklable, importable function and its argument (a small dataclass) that writes its own run directory
and returns a small result. An :class:`Executor` takes cells with ``submit`` and yields their :class:`Outcome` as
they finish from ``outcomes``; a failing cell is an outcome with an error, never an exception that stops the others.

* ``local`` (:mod:`clipadapt.executors.local`, the default): this process, one cell after another; nothing to install.
* ``ray`` (:mod:`clipadapt.executors.ray`, ``pip install 'clipadapt[ray]'``): every cell a Ray task asking for
  ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs, on a local instance started for the run or an existing cluster
  (``address``).

Another engine (Slurm through submitit, a process pool) is one more module here: a class with ``submit``,
``outcomes`` and ``close`` registered with ``@register_executor("name")`` (docs/benchmark.md walks through it).
"""

from __future__ import annotations

import importlib
import logging
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

from clipadapt.config import option
from clipadapt.errors import ClipAdaptError, ConfigError
from clipadapt.registry import Registry

Cell = Callable[[Any], Any]
log = logging.getLogger(__name__)


@dataclass
class ExecutorConfig:
    executor: str = option("local", help="where cells run: local (this process, one after another) or ray")
    address: str | None = option(None, help="an existing Ray cluster (HOST:PORT or ray://HOST:PORT); default: a "
                                            "local instance started for the run")
    cpus_per_run: float | None = option(None, help="CPUs each cell asks for and its torch threads (local: all; "
                                                   "ray: 1)")
    gpus_per_run: float = option(0.0, help="GPUs each cell asks for (ray; fractions share a GPU)")

    def __post_init__(self) -> None:
        engine = EXECUTORS.get(self.executor)  # one line with the valid choices
        if self.cpus_per_run is not None and self.cpus_per_run <= 0:
            raise ConfigError(f"--cpus-per-run must be positive, got {self.cpus_per_run}")
        if self.gpus_per_run < 0:
            raise ConfigError(f"--gpus-per-run must be 0 or more, got {self.gpus_per_run}")
        if self.address and self.executor != "ray":
            raise ConfigError(f"--address is a Ray cluster's; it needs --executor ray (got --executor "
                              f"{self.executor})")
        engine.check(self)  # a missing package or an unreachable cluster fails before anything is planned


@dataclass
class Outcome:
    """What became of one cell: its result, or the error that stopped it (one line) and where it came from."""

    key: str
    result: Any = None
    error: str | None = None
    seconds: float = 0.0
    trace: str = ""

    @property
    def failed(self) -> bool:
        return self.error is not None


def call_cell(key: str, cell: Cell, argument: Any, threads: int | None = None) -> Outcome:
    """Run one cell here, with ``threads`` torch threads when given; every executor runs cells through this."""
    start = time.perf_counter()
    previous = None
    if threads is not None:
        import torch

        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
    try:
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


class Executor:
    """Runs cells; subclasses are one engine each (module docstring)."""

    name: ClassVar[str] = ""

    def __init__(self, config: ExecutorConfig) -> None:
        self.config = config
        self.on_start: Callable[[str], None] = lambda key: None  # a cell starts (local) or is dispatched (ray)

    @classmethod
    def check(cls, config: ExecutorConfig) -> None:
        """Refuse, in one line, a config this engine cannot run (its package missing, its cluster unreachable)."""

    def threads(self) -> int | None:
        """Torch threads of a cell: its CPU request, rounded down (None: leave the process's setting)."""
        cpus = self.config.cpus_per_run
        return max(1, int(cpus)) if cpus is not None else None

    def resources(self) -> dict[str, float]:
        """What each cell asks the engine for."""
        return {"num_cpus": self.config.cpus_per_run or 1, "num_gpus": self.config.gpus_per_run}

    def submit(self, key: str, cell: Cell, argument: Any) -> None:
        raise NotImplementedError

    def outcomes(self) -> Iterator[Outcome]:
        """The outcome of every submitted cell, as each finishes."""
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
EXECUTOR_MODULES = {"local": "clipadapt.executors.local", "ray": "clipadapt.executors.ray"}


def register_executor(name: str):
    def wrap(cls: type[Executor]) -> type[Executor]:
        cls.name = name
        EXECUTORS.register(name, cls, help=(cls.__doc__ or "").strip().splitlines()[0])
        return cls

    return wrap


for _module in EXECUTOR_MODULES.values():  # the modules import only their engine's package when opened
    importlib.import_module(_module)


@contextmanager
def open_executor(config: ExecutorConfig) -> Iterator[Executor]:
    executor = EXECUTORS.get(config.executor)(config)
    try:
        yield executor
    finally:
        executor.close()


def run_cells(executor: Executor, cells: list[tuple[str, Cell, Any]],
              on_outcome: Callable[[Outcome, dict[str, int]], None] | None = None,
              on_start: Callable[[str], None] | None = None) -> dict[str, Outcome]:
    """Submit every cell, collect every outcome (by key, in the order given); ``on_outcome`` sees each as it
    arrives with the counts so far (``done``, ``failed``, ``running``, ``queued``, ``total``), ``on_start`` each key
    as its cell starts (local) or is handed to the engine (ray)."""
    if on_start is not None:
        executor.on_start = on_start
    for key, cell, argument in cells:
        executor.submit(key, cell, argument)
    found: dict[str, Outcome] = {}
    counts = {"done": 0, "failed": 0, "running": 0, "queued": 0, "total": len(cells)}
    for outcome in executor.outcomes():
        found[outcome.key] = outcome
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
