"""The Ray executor: every cell a Ray task (``pip install 'clipadapt[ray]'``).

With no address a local Ray instance is started for the run (all this machine's CPUs and GPUs) and stopped after
it; with ``address`` (``HOST:PORT`` of a running cluster's head, or ``ray://HOST:PORT`` for Ray Client) the cells go
to that cluster, whose workers must see the same ``--out`` folder (a shared filesystem) and have clipadapt
installed. Each task asks for ``num_cpus=cpus_per_run`` (default 1) and ``num_gpus=gpus_per_run``; Ray places as
many at once as the resources allow (on a node with 8 GPUs and ``--gpus-per-run 1``: 8 cells at a time, each seeing
one GPU through ``CUDA_VISIBLE_DEVICES``). clipadapt's and Hugging Face's environment variables (``CLIPADAPT_*``,
``HF_*``) travel with the tasks, so workers use the same caches and offline settings as the driver.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

from clipadapt.errors import ConfigError
from clipadapt.executors.base import Cell, Executor, Outcome, call_cell, register_executor
from clipadapt.executors.slurm_options import memory_bytes

ENV_PREFIXES = ("CLIPADAPT_", "HF_", "TRANSFORMERS_", "TOKENIZERS_")
CONNECT_TIMEOUT_S = 5.0


def check_reachable(address: str) -> None:
    """A one-line error now for an address nothing listens on (Ray itself retries for a minute)."""
    host_port = address.split("://", 1)[-1]
    host, sep, port = host_port.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--address '{address}' must be HOST:PORT (or ray://HOST:PORT) of a Ray cluster's head")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise ConfigError(f"cannot reach a Ray cluster at --address '{address}': {e.strerror or e}; start one "
                          f"with `ray start --head` or leave --address out for a local instance") from None


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray needs Ray: pip install 'clipadapt[ray]' (valid choices without it: "
                          "local)") from None
    return ray


def check_fits_here(config) -> None:
    """Before a local instance starts: a cell asking for more CPUs, GPUs or memory than this machine has would wait
    forever (Ray keeps an infeasible task for an autoscaler): one line instead."""
    import psutil
    import torch

    have = {"--cpus-per-run": (os.cpu_count() or 1, config.cpus_per_run or 1, "CPUs"),
            "--gpus-per-run": (torch.cuda.device_count(), config.gpus_per_run, "GPUs")}
    if config.mem is not None:
        have["--mem"] = (round(psutil.virtual_memory().total / 2**30, 1), memory_bytes(config.mem) / 2**30,
                         "GiB of memory")
    for option, (found, wanted, what) in have.items():
        if wanted > found:
            raise ConfigError(f"{option} asks each cell for more than this machine has ({found:g} {what}); valid: at "
                              f"most that, or --address of a cluster with bigger nodes")


@register_executor("ray")
class RayExecutor(Executor):
    """Each cell a Ray task, on a local instance started for the run or a cluster at --address."""

    @classmethod
    def check(cls, config) -> None:
        _import_ray()
        if config.address:
            check_reachable(config.address)
        else:
            check_fits_here(config)

    def __init__(self, config, out=None, token: str = "") -> None:
        super().__init__(config, out, token)
        self.check(config)
        ray = _import_ray()
        self._ray = ray
        env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)}
        self._started = not ray.is_initialized()
        if self._started:
            ray.init(address=config.address, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING, runtime_env={"env_vars": env} if env else None)
        self._task = ray.remote(call_cell)
        self._pending: dict[Any, tuple[str, float]] = {}  # task -> key, when submitted
        if self._started and not config.address and config.mem is not None:
            self._refuse_infeasible()

    def _refuse_infeasible(self) -> None:
        """The memory check_fits_here cannot make: Ray gives its tasks only part of the machine's memory (the rest
        for its object store), known once it has started; a request above it would wait forever. CPUs and GPUs were
        checked before the start."""
        wanted = self.resources().get("memory") or 0
        have = self._ray.cluster_resources().get("memory", 0)
        if wanted > have:
            self.close()
            raise ConfigError(f"--mem asks each cell for more than this machine has ({have / 2**30:.1f}G of Ray's "
                              f"memory); valid: at most that, or --address of a cluster with bigger nodes")

    def resources(self) -> dict[str, Any]:
        """The task's request: CPUs, GPUs, memory (``--mem``, in bytes), and no retries of Ray's own (base)."""
        request: dict[str, Any] = {"num_cpus": self.config.cpus_per_run or 1, "num_gpus": self.config.gpus_per_run,
                                   "max_retries": 0}
        if self.config.mem is not None:
            request["memory"] = memory_bytes(self.config.mem)
        return request

    def threads(self) -> int:
        return max(1, int(self.config.cpus_per_run or 1))

    def submit(self, key: str, cell: Cell, argument: Any) -> None:
        ref = self._task.options(**self.resources()).remote(key, cell, argument, self.threads(), self.claim(key))
        self._pending[ref] = key, time.perf_counter()
        self.on_start(key)

    def outcomes(self) -> Iterator[Outcome]:
        while self._pending:
            done, _ = self._ray.wait(list(self._pending), num_returns=1)
            key, start = self._pending.pop(done[0])
            try:
                outcome = self._ray.get(done[0])
            except self._ray.exceptions.RayError as e:  # the worker or its node died (killed, out of memory)
                lost = isinstance(e, (self._ray.exceptions.WorkerCrashedError, self._ray.exceptions.NodeDiedError,
                                      self._ray.exceptions.OutOfMemoryError))
                outcome = Outcome(key, error=f"Ray task failed: {str(e).strip().splitlines()[0]}", lost=lost,
                                  seconds=time.perf_counter() - start)
            yield outcome

    def running(self) -> int:
        """Cells running now: those submitted and not finished, up to as many as the cluster's resources fit."""
        total = self._ray.cluster_resources()
        fits = [total.get("CPU", 0) / (self.config.cpus_per_run or 1)]
        if self.config.gpus_per_run:
            fits.append(total.get("GPU", 0) / self.config.gpus_per_run)
        return min(len(self._pending), max(1, int(min(fits))))

    def queued(self) -> int:
        return len(self._pending) - self.running()

    def close(self) -> None:
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
