"""Where the cells of a grid run (a benchmark, a comparison, a sweep): one module per engine, one interface
(:mod:`clipadapt.executors.base`), the locks that keep a cell from running twice (:mod:`clipadapt.executors.locks`).

* ``local`` (:mod:`clipadapt.executors.local`, the default): this process, one cell after another; nothing to install.
* ``ray`` (:mod:`clipadapt.executors.ray`, ``pip install 'clipadapt[ray]'``): every cell a Ray task asking for
  ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs, on a local instance started for the run or an existing cluster
  (``address``).
* ``slurm`` (:mod:`clipadapt.executors.slurm`, ``pip install 'clipadapt[slurm]'``): the cells as one Slurm job array
  through submitit, each job asking for ``cpus_per_run`` CPUs, ``gpus_per_run`` GPUs, ``mem`` and ``time``; a job
  pre-empted or past its time is requeued and resumes its cell's checkpoint.

Another engine (a process pool, a Kubernetes job) is one more module here: a class with ``submit``, ``outcomes`` and
``close`` registered with ``@register_executor("name")`` and named in ``EXECUTOR_MODULES`` (docs/benchmark.md walks
through it). Each engine module imports its own package only when an executor is made or checked.
"""

from __future__ import annotations

import importlib

from clipadapt.executors.base import (
    EXECUTORS,
    Cell,
    Executor,
    ExecutorConfig,
    Outcome,
    call_cell,
    open_executor,
    register_executor,
    resumed,
    run_cells,
    run_with_status,
)

EXECUTOR_MODULES = {"local": "clipadapt.executors.local", "ray": "clipadapt.executors.ray",
                    "slurm": "clipadapt.executors.slurm"}

for _module in EXECUTOR_MODULES.values():
    importlib.import_module(_module)

__all__ = ["EXECUTORS", "EXECUTOR_MODULES", "Cell", "Executor", "ExecutorConfig", "Outcome", "call_cell",
           "open_executor", "register_executor", "resumed", "run_cells", "run_with_status"]
