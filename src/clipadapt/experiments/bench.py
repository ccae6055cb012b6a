"""``clipadapt bench``: inference speed, latency and memory per model, and each method's training step.

Every measurement runs in a fresh process: on CPU the peak memory figure is the process's peak RSS, which only a
new process can attribute to one measurement. On a GPU it is CUDA's peak allocated memory. The processes are forked
from a multiprocessing forkserver that has imported torch, transformers and clipadapt once (it never touches the
model or CUDA), so each measurement starts in well under a second instead of paying the ~6 s of imports again;
``python -m clipadapt.experiments.bench JSON`` runs one measurement in the current process. Inference is measured with
``torch.inference_mode()`` and with gradients enabled (what a training forward pays), on random pixels of the
model's input size.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipadapt.errors import ClipAdaptError
from clipadapt.reports.report import Figure, Table

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _random_batch(preprocess, batch: int, seed: int = 0) -> torch.Tensor:
    """Random pixels of the size ``preprocess`` produces."""
    size = preprocess.config.crop
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_inference(model: str, batch: int, dtype: str, mode: str, iterations: int, device: str) -> dict:
    """Images/s and per-batch latency of the image tower (forward only), in one process."""
    from clipadapt.engine.cost import peak_memory_mb, reset_peak_memory
    from clipadapt.models import load_model, resolve_device

    target = resolve_device(device)
    bundle = load_model(model, device=target)
    bundle.to(dtype=DTYPES[dtype])
    bundle.model.requires_grad_(mode == "grad_enabled")
    pixels = _random_batch(bundle.preprocess, batch).to(target)
    reset_peak_memory(target)
    context = torch.inference_mode if mode == "inference_mode" else torch.enable_grad
    latencies = []
    with context():
        for i in range(iterations + 2):  # two warm-up batches
            _sync(target)
            start = time.perf_counter()
            features = bundle.encode_image(pixels)  # with gradients: autograd records and keeps activations
            _sync(target)
            if i >= 2:
                latencies.append(time.perf_counter() - start)
            del features
    latencies_ms = np.array(latencies) * 1000
    return {"model": model, "mode": mode, "dtype": dtype, "batch": batch, "device": str(target),
            "images_per_s": round(batch / float(np.mean(latencies)), 2),
            "latency_ms_p50": round(float(np.percentile(latencies_ms, 50)), 2),
            "latency_ms_p95": round(float(np.percentile(latencies_ms, 95)), 2),
            "peak_mem_mb": round(peak_memory_mb(target), 1), "params": bundle.num_parameters()}


def measure_training_step(model: str, method_name: str, batch: int, steps: int, device: str,
                          checkpointing: bool = False, settings: list[str] | None = None,
                          detail: bool = False) -> dict:
    """Training images/s and peak memory of one method's step (forward, backward, optimizer) on random data.

    ``detail`` adds the activations autograd saves and the tensor memory a GPU would count (weights, gradients,
    AdamW moments and saved activations), measured after the peak was read.
    """
    from clipadapt.classification.experiment import build_method, load_experiment
    from clipadapt.config import override_section
    from clipadapt.data.base import ClassificationDataset, InMemorySource, Split
    from clipadapt.engine.cost import current_rss_mb, peak_memory_mb, reset_peak_memory
    from clipadapt.engine.trainable import build_optimizer
    from clipadapt.methods import METHODS
    from clipadapt.models import load_model, resolve_device

    target = resolve_device(device)
    bundle = load_model(model, device=target)
    names = [f"class {i}" for i in range(10)]
    empty = Split(InMemorySource([], np.zeros(0, dtype=int), "none"), [], "train")
    dataset = ClassificationDataset("bench", names, {"train": empty}, templates=["simple"])
    entry = METHODS.get(method_name)
    mine = [s for s in settings or [] if override_section(s) == entry.section]
    method = build_method(load_experiment(method_name, None, mine), bundle, dataset)
    method = method.to(target)
    if checkpointing:
        method.enable_activation_checkpointing()
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(len(names)).repeat_interleave(16)  # 16 random "shots" per class (Tip-Adapter's cache)
    method.state_from_features(torch.randn(len(labels), method.feature_dim, generator=generator).to(target),
                               labels.numpy())
    training_free = not method.trainable_parameters()
    optimizer = None if training_free else build_optimizer(method)
    if method.inputs == "features":
        inputs = torch.randn(batch, method.feature_dim, generator=generator)
        inputs = torch.nn.functional.normalize(inputs, dim=-1) if method.feature_kind == "projected" else inputs
    else:
        inputs = _random_batch(method.preprocess, batch)  # the baselines bring their own input size
    data = {"inputs": inputs.to(target), "labels": torch.randint(0, 10, (batch,), generator=generator).to(target)}
    method.train()
    rss_before = current_rss_mb()
    reset_peak_memory(target)

    def step() -> None:
        if optimizer is None:  # training-free: its "step" is the forward pass it costs per image
            with torch.no_grad():
                method(data)
            return
        optimizer.zero_grad(set_to_none=True)
        method(data)["loss"].backward()
        optimizer.step()

    step()  # warm-up: allocates gradients and AdamW state
    _sync(target)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(target)
    seconds = time.perf_counter() - start
    counts = method.num_parameters()
    peak = peak_memory_mb(target)
    row = {"model": model, "method": method_name, "inputs": method.inputs, "device": str(target),
           "checkpointing": checkpointing, "batch": batch, "train_images_per_s": round(batch * steps / seconds, 2),
           "peak_mem_mb": round(peak, 1), "trainable": counts["trainable"], "trainable_pct": counts["trainable_pct"]}
    if target.type == "cpu":
        row |= {"rss_before_step_mb": round(rss_before, 1), "step_mem_mb": round(peak - rss_before, 1)}
    if detail:
        saved = saved_activation_mb(method, data)
        weights = sum(p.numel() * p.element_size() for p in method.parameters())
        if method.inputs == "features":
            weights += sum(p.numel() * p.element_size() for p in bundle.model.parameters())
        row |= {"saved_activations_mb": round(saved, 1),
                "tensor_mem_mb": round((weights + 3 * 4 * counts["trainable"]) / 2**20 + saved, 1)}
    return row


def saved_activation_mb(method, batch: dict) -> float:
    """Bytes autograd keeps for the backward pass of one forward (each storage counted once)."""
    seen, total = set(), [0]

    def pack(tensor):
        key = (tensor.data_ptr(), tensor.numel(), tensor.dtype)
        if key not in seen:
            seen.add(key)
            total[0] += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        method(batch)["loss"]
    return total[0] / 2**20


MEASUREMENTS = {"inference": measure_inference, "training": measure_training_step}
PRELOAD = ["clipadapt.experiments.bench", "clipadapt.classification.training"]


def _call_quietly(environment: dict[str, str], function: Callable, args: tuple, kwargs: dict) -> Any:
    """In the child: the caller's environment as it is now (the server's is the one it had when it started),
    library chatter (warnings, logs) sent to /dev/null, then ``function``."""
    os.environ.clear()
    os.environ.update(environment)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    return function(*args, **kwargs)


def run_in_child(function: Callable, *args: Any, **kwargs: Any) -> Any:
    """``function(*args, **kwargs)`` in a process of its own, forked from the preloaded forkserver.

    ``function`` must be importable by name (a module-level function); its exception is raised here.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    with ProcessPoolExecutor(max_workers=1, mp_context=context, max_tasks_per_child=1) as pool:
        return pool.submit(_call_quietly, dict(os.environ), function, args, kwargs).result()


def measure_in_child(kind: str, **kwargs: Any) -> dict:
    """Run one measurement in a process of its own and return its row."""
    try:
        return run_in_child(MEASUREMENTS[kind], **kwargs)
    except BrokenProcessPool as error:  # killed: out of memory, a signal
        raise ClipAdaptError(f"bench {kind} {kwargs.get('model')} failed: the process died ({error})") from None
    except ClipAdaptError:
        raise
    except Exception as error:  # noqa: BLE001 - any failure inside the measurement, reported in one line
        raise ClipAdaptError(f"bench {kind} {kwargs.get('model')} failed: {type(error).__name__}: {error}") from None


def run_bench(models: list[str], batch: int = 32, dtype: str = "fp32", methods: list[str] | None = None,
              iterations: int = 10, steps: int = 3, device: str = "auto", on_result=None,
              settings: list[str] | None = None) -> dict:
    """``settings``: ``section.key=value`` for the methods' configs (e.g. ``baseline.classifier=...``)."""
    if dtype not in DTYPES:
        raise ClipAdaptError(f"unknown dtype '{dtype}'; valid choices: {', '.join(DTYPES)}")
    if batch <= 0 or iterations <= 0 or steps <= 0:
        raise ClipAdaptError("batch, iterations and steps must be positive")
    from clipadapt.methods import METHODS

    for name in methods or []:
        METHODS.get(name)
    notify = on_result or (lambda row: None)
    results: dict = {"batch": batch, "dtype": dtype, "inference": [], "training": []}
    for model in models:
        for mode in ("inference_mode", "grad_enabled"):
            row = measure_in_child("inference", model=model, batch=batch, dtype=dtype, mode=mode,
                                   iterations=iterations, device=device)
            results["inference"].append(row)
            notify(row)
        for method in methods or []:
            row = measure_in_child("training", model=model, method_name=method, batch=batch, steps=steps,
                                   device=device, settings=list(settings or []))
            results["training"].append(row)
            notify(row)
    return results


def accuracy_vs_speed(results: dict, compare_dir: Path, path: Path) -> list[dict]:
    """Scatter of each compared (model, method)'s test accuracy against the model's inference images/s."""
    from clipadapt.reports import plots
    from clipadapt.reports.collect import find_runs, table_rows

    speed = {r["model"]: r["images_per_s"] for r in results["inference"] if r["mode"] == "inference_mode"}
    points = [{"x": speed[row.model], "y": row.stat("metrics", "acc1")[0], "yerr": row.stat("metrics", "acc1")[1],
               "label": f"{Path(row.model).name} {row.label}"}
              for row in table_rows(find_runs([compare_dir])) if row.model in speed]
    if not points:
        raise ClipAdaptError(f"no run in '{compare_dir}' used a benchmarked model ({', '.join(speed)})")
    plots.plot_accuracy_scatter(points, path, "inference images/s (image tower, log)", "accuracy vs speed")
    return points


def main() -> None:
    request = json.loads(sys.argv[1])
    kind = request.pop("kind")
    print(json.dumps(MEASUREMENTS[kind](**request)))


if __name__ == "__main__":
    main()


def bench_report_blocks(paths: list[str | Path], files: Path) -> list:
    """Tables of every ``clipadapt bench`` result (bench.json) found under ``paths``."""
    blocks: list = []
    for path in sorted({p.resolve() for root in map(Path, paths) for p in root.rglob("bench.json")}):
        bench = json.loads(path.read_text())
        blocks += [("h2", f"Efficiency ({path.parent.name}/bench.json)"),
                   ("p", f"Image tower forward, batch {bench['batch']}, {bench['dtype']}; peak memory is CUDA peak "
                         f"allocated on a GPU, peak RSS of a fresh process on CPU.")]
        inference = Table(["model", "mode", "images/s", "latency p50 (ms)", "latency p95 (ms)", "peak memory (MB)",
                           "params"], [], [])
        for row in bench.get("inference", []):
            inference.rows.append([row["model"], row["mode"], f"{row['images_per_s']:,.1f}",
                                   f"{row['latency_ms_p50']:.1f}", f"{row['latency_ms_p95']:.1f}",
                                   f"{row['peak_mem_mb']:,.0f}", f"{row['params']:,}"])
            inference.row_keys.append(f"bench-{row['mode']}")
        blocks.append(("table", inference))
        if bench.get("training"):
            training = Table(["model", "method", "train images/s", "peak memory (MB)", "trainable", "% of model"],
                             [], [])
            for row in bench["training"]:
                training.rows.append([row["model"], row["method"], f"{row['train_images_per_s']:,.1f}",
                                      f"{row['peak_mem_mb']:,.0f}", f"{row['trainable']:,}",
                                      f"{row['trainable_pct']:.3f}"])
                training.row_keys.append(f"bench-{row['method']}")
            blocks.append(("table", training))
        scatter = path.parent / "accuracy_vs_speed.png"
        if scatter.is_file():
            target = files / f"{path.parent.name}-accuracy_vs_speed.png"
            shutil.copyfile(scatter, target)
            blocks.append(("figure", Figure(target, "Test accuracy against the model's inference speed.")))
    return blocks


