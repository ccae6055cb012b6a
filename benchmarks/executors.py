"""The same world grid under the local executor, Ray and Slurm's submitit stand-in (issue 31), the time a retried
cell loses to its kill, and what each executor asks for on a node with 8 GPUs.

1. **Wall time**: the grid (``--datasets``, linear-probe and coop, K = 1, 4, seeds 1, 2, one torch thread per cell)
   under ``local``, ``ray`` and ``slurm --slurm-cluster local`` (submitit's LocalExecutor: a process per job, at
   most ``cores`` at once), each into a fresh folder in this one process, one after another. Ideal on this machine:
   the sum of the cells' own seconds (as the local executor measured them) divided by the cores; the ratio is
   wall / ideal (1.0: perfect packing and no per-cell overhead). Every executor's accuracies are checked equal.
2. **A retried cell**: one coop cell (``--epochs`` epochs, with zero-shot beside it) under Ray and under
   submitit-local, uninterrupted, then interrupted when its checkpoint reaches half the epochs: its Ray worker
   SIGKILLed (retried, resumed), its submitit job sent the timeout signal SIGUSR2 (requeued, resumed). The wall time
   of the two grids, the difference (what the interruption cost), the attempts, the epoch it resumed at, and whether
   its metrics equal the uninterrupted cell's.
3. **Requests for 8 GPUs** (``--gpus-per-run 1 --cpus-per-run 4 --mem 32G --time 4:00:00 --partition gpu
   --array-parallelism 8``) for a 165-cell grid: what Ray's task options and submitit's sbatch script say.

Run: ``python benchmarks/executors.py [--out DIR] [--skip-grid]``; writes ``executors.json`` and ``executors.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CLIPADAPT_PROGRESS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil  # noqa: E402  (accelerate's dependency)

import clipadapt  # noqa: E402

GRID = dict(model="world:tiny", methods=["linear-probe", "coop"], shots=[1, 4], seeds=[1, 2])
EXECUTORS = {"local": {"executor": "local"}, "ray": {"executor": "ray"},
             "submitit-local": {"executor": "slurm", "slurm_cluster": "local"}}


def accuracies(out: Path) -> dict[str, float]:
    return {p.parent.relative_to(out).as_posix(): json.loads(p.read_text())["metrics"]["acc1"]
            for p in sorted(out.rglob("metrics.json"))}


def grid(datasets: list[str], root: Path, cores: int) -> dict:
    rows, seen = {}, {}
    for name, options in EXECUTORS.items():
        cells: list = []
        start = time.perf_counter()
        result = clipadapt.benchmark(**GRID, datasets=datasets, out=root / name, cpus_per_run=1, progress=False,
                                     on_cell=lambda outcome, counts, cells=cells: cells.append(outcome.seconds),
                                     **options)
        wall = time.perf_counter() - start
        assert not result.failed, result.failed
        seen[name] = accuracies(root / name)
        rows[name] = {"cells": len(cells), "wall_s": round(wall, 1), "cell_s": round(sum(cells), 1)}
        print(name, rows[name], flush=True)
    ideal = rows["local"]["cell_s"] / cores
    for row in rows.values():
        row["ideal_s"], row["ratio_to_ideal"] = round(ideal, 1), round(row["wall_s"] / ideal, 2)
    rows["equal"] = all(found == seen["local"] for found in seen.values())
    return rows


def interrupt_at(out: Path, key: str, epoch: int, sig: int) -> threading.Thread:
    """Send ``sig`` to the process running cell ``key`` (the one holding its cell lock open: a Ray worker, a submitit
    job) once its checkpoint reaches ``epoch``; the grid's other cells are left alone."""
    from clipadapt.executors.locks import cell_lock_path

    lock = str(cell_lock_path(out, key))

    def watch() -> None:
        latest = out / "runs" / key / "checkpoints" / "latest.json"
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            try:
                if json.loads(latest.read_text())["epoch"] >= epoch:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.02)
        for process in psutil.process_iter(["pid"]):
            try:
                if process.pid != os.getpid() and any(f.path == lock for f in process.open_files()):
                    os.kill(process.pid, sig)
            except (psutil.Error, OSError):
                continue

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def retried(dataset: str, epochs: int, root: Path) -> dict:
    """Each executor's coop cell uninterrupted, then interrupted at half its epochs: the wall time of the same grid
    (the cell and zero-shot) both ways, the difference (what the kill cost), and where the cell resumed."""
    cell = dict(model="world:tiny", datasets=[dataset], methods=["coop"], shots=[4], seeds=[1], cpus_per_run=1,
                overrides=[f"coop.epochs={epochs}"], progress=False)
    key = f"{dataset.replace(':', '-')}/coop/4shot-seed1"
    rows: dict[str, dict] = {}
    metrics: dict[str, dict] = {}
    for name, options, sig in (("ray, worker SIGKILLed", EXECUTORS["ray"], signal.SIGKILL),
                               ("submitit-local, timeout signal (USR2)", EXECUTORS["submitit-local"], signal.SIGUSR2)):
        walls = {}
        for interrupted in (False, True):
            out = root / f"{name.split(',')[0]}-{interrupted}"
            if interrupted:
                interrupt_at(out, key, epochs // 2, sig)
            outcomes: dict = {}
            start = time.perf_counter()
            clipadapt.benchmark(**cell, out=out, on_cell=lambda o, c, seen=outcomes: seen.__setitem__(o.key, o),
                                **options)
            walls[interrupted] = time.perf_counter() - start
            record = json.loads((out / "runs" / key / "metrics.json").read_text())
            metrics[f"{name}-{interrupted}"] = record["metrics"]
        rows[name] = {"uninterrupted_s": round(walls[False], 1), "interrupted_s": round(walls[True], 1),
                      "lost_s": round(walls[True] - walls[False], 1), "attempts": outcomes[key].attempts,
                      "resumed_at_epochs": record.get("resumed_at_epochs", []),
                      "equal": metrics[f"{name}-True"] == metrics[f"{name}-False"]}
        print(name, rows[name], flush=True)
    return rows


def requests() -> dict:
    from clipadapt.executors import ExecutorConfig
    from clipadapt.executors.ray import RayExecutor
    from clipadapt.executors.slurm import job_script, slurm_parameters

    slurm = ExecutorConfig("slurm", None, 4, 1, partition="gpu", time="4:00:00", mem="32G", array_parallelism=8,
                           slurm_cluster="local")
    ray = RayExecutor.__new__(RayExecutor)  # its request without starting Ray
    ray.config = ExecutorConfig("ray", None, 1)  # checked against this machine: the 8-GPU node's request set after
    ray.config.cpus_per_run, ray.config.gpus_per_run, ray.config.mem = 4, 1, "32G"
    return {"local": "nothing: the cells run in this process, one after another, on the GPUs it sees",
            "ray": ray.resources(),
            "slurm": job_script(slurm_parameters(slurm), "python -u -m submitit.core._submit OUT/slurm/%j",
                                cells=165)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench-executors")
    parser.add_argument("--datasets", default="world:shapes-novel,world:colour")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--skip-grid", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    found = {"machine": f"{cores} CPU cores", "date": time.strftime("%Y-%m-%d"), "requests": requests()}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_grid:
            found["grid"] = grid(args.datasets.split(","), Path(tmp) / "grid", cores)
        found["retried"] = retried(args.datasets.split(",")[0], args.epochs, Path(tmp) / "retried")
    (out / "executors.json").write_text(json.dumps(found, indent=2) + "\n")
    print(json.dumps(found, indent=2))


if __name__ == "__main__":
    main()
