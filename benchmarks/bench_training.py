"""Training benchmarks (issue 4), all on a random-initialised ViT-B/32-sized transformers CLIPModel:

* ``lp-cache``: a linear probe twice in one process with the same feature cache; the first run encodes
  train/val/test images, the second reads the cache. Reports the ratio (target >= 20x).
* ``step``: one process per method (fresh, so peak RSS belongs to that method alone): batch 32 of 224 px
  images, a warm-up step, then timed training steps (forward, backward, AdamW). Reports training images/s and
  peak memory (CUDA peak allocated on a GPU, peak RSS on CPU); target: LoRA <= 0.7x full fine-tuning.

Run: ``python benchmarks/bench_training.py [--images 600] [--steps 3] [--parts lp-cache,step]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CLIPADAPT_PROGRESS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def lp_cache(work: Path, model_dir: Path, n_images: int, classes: int) -> dict:
    from bench_zeroshot import make_jpeg_folder
    from clipadapt.data import DataConfig, load_dataset
    from clipadapt.engine.features import FeatureCache
    from clipadapt.engine.inputs import TrainingData
    from clipadapt.engine.trainer import TrainConfig, Trainer, make_accelerator
    from clipadapt.methods import METHODS
    from clipadapt.models import load_model
    from clipadapt.training import build_method

    print(f"generating {n_images} JPEGs ...", flush=True)
    make_jpeg_folder(work / "images", n_images, classes)
    dataset = load_dataset(DataConfig(dataset=f"imagefolder:{work / 'images'}"))
    start = time.perf_counter()
    bundle = load_model(str(model_dir))
    load_s = time.perf_counter() - start
    cache = FeatureCache(work / "features")
    accelerator = make_accelerator(torch.device("cpu"), "fp32")
    runs = []
    for attempt in ("first (encodes)", "second (cached)"):
        start = time.perf_counter()
        method = build_method(METHODS.get("linear-probe"), bundle, dataset,
                              METHODS.get("linear-probe").config_class())
        data = TrainingData(dataset, bundle, eval_batch_size=32, cache=cache)
        trainer = Trainer(TrainConfig(), data, accelerator)
        fit = method.fit(trainer)
        evaluation = trainer.evaluate(method, "test")
        seconds = time.perf_counter() - start
        runs.append({"run": attempt, "seconds": round(seconds, 3), "sweep_s": round(fit.train_time_s, 3),
                     "C": fit.selection["C"], "test_acc1": evaluation.metrics["acc1"]})
        print(runs[-1], flush=True)
    return {
        "images": {s: len(dataset.split(s)) for s in ("train", "val", "test")}, "classes": classes,
        "model_load_s": round(load_s, 3), "runs": runs,
        "speedup": round(runs[0]["seconds"] / runs[1]["seconds"], 2),
        "speedup_including_model_load": round((runs[0]["seconds"] + load_s) / (runs[1]["seconds"] + load_s), 2),
    }


def step_child(model_dir: Path, method_name: str, batch: int, steps: int, checkpointing: bool) -> dict:
    """Runs in its own process: peak memory of one method's training step."""
    from clipadapt.data.base import ClassificationDataset, InMemorySource, Split
    from clipadapt.engine.cost import peak_memory_mb, peak_rss_mb, reset_peak_memory
    from clipadapt.methods import METHODS
    from clipadapt.models import load_model, resolve_device
    from clipadapt.training import build_method

    device = resolve_device("auto")
    bundle = load_model(str(model_dir), device=device)
    names = [f"class {i}" for i in range(10)]
    empty = Split(InMemorySource([], np.zeros(0, dtype=int), "none"), [], "train")
    dataset = ClassificationDataset("bench", names, {"train": empty}, templates=["simple"])
    entry = METHODS.get(method_name)
    method = build_method(entry, bundle, dataset, entry.config_class()).to(device)
    if checkpointing:
        method.enable_activation_checkpointing()
    optimizer = torch.optim.AdamW(method.param_groups())
    generator = torch.Generator().manual_seed(0)
    dim = bundle.embed_dim
    if method.inputs == "features":
        inputs = torch.nn.functional.normalize(torch.randn(batch, dim, generator=generator), dim=-1)
    else:
        size = bundle.info["image_size"]
        inputs = torch.randn(batch, 3, size, size, generator=generator)
    batch_data = {"inputs": inputs.to(device), "labels": torch.randint(0, 10, (batch,), generator=generator).to(device)}
    method.train()
    baseline_rss = peak_rss_mb()
    reset_peak_memory(device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        method(batch_data)["loss"].backward()
        optimizer.step()

    step()  # warm-up: allocates gradients and AdamW state
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    counts = method.num_parameters()
    peak = peak_memory_mb(device)
    saved = saved_activation_mb(method, batch_data)  # after the peak was read: this forward leaves garbage
    model_mb = sum(p.numel() * p.element_size() for p in method.parameters()) / 2**20
    if method.inputs == "features":
        model_mb += sum(p.numel() * p.element_size() for p in bundle.model.parameters()) / 2**20
    trainable_mb = counts["trainable"] * 4 / 2**20
    return {"method": method_name, "inputs": method.inputs, "device": str(device), "checkpointing": checkpointing,
            "train_images_per_s": round(batch * steps / seconds, 2), "peak_mem_mb": round(peak, 1),
            "rss_before_step_mb": round(baseline_rss, 1), "step_mem_mb": round(peak - baseline_rss, 1),
            "saved_activations_mb": round(saved, 1),
            # what a CUDA peak-allocated figure counts: weights + gradients + AdamW moments + saved activations
            "tensor_mem_mb": round(model_mb + 3 * trainable_mb + saved, 1),
            "trainable": counts["trainable"], "trainable_pct": counts["trainable_pct"]}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--parts", default="lp-cache,step,step-checkpointing",
                        help="step-checkpointing: the pixel methods again with train.activation_checkpointing")
    parser.add_argument("--methods", default="")
    parser.add_argument("--child", nargs=2, metavar=("MODEL_DIR", "METHOD"), help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/training.json"))
    args = parser.parse_args()

    if args.child:
        print(json.dumps(step_child(Path(args.child[0]), args.child[1], args.batch, args.steps, args.checkpointing)))
        return

    from clipadapt.methods import list_methods
    from clipadapt.models.random_init import save_random_clip

    work = Path(tempfile.mkdtemp(prefix="clipadapt-bench-train-"))
    os.environ["CLIPADAPT_HOME"] = str(work / "home")
    model_dir = save_random_clip(work / "vit-b-32", preset="vit-b-32")
    results: dict = {"date": date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                     "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "batch": args.batch}
    parts = args.parts.split(",")
    if "lp-cache" in parts:
        results["lp_cache"] = lp_cache(work, model_dir, args.images, args.classes)
    for part, checkpointing in (("step", False), ("step-checkpointing", True)):
        if part not in parts:
            continue
        rows = []
        names = args.methods.split(",") if args.methods else list_methods()
        if checkpointing:
            names = [n for n in names if n in ("bitfit", "lora", "full-ft")]  # nothing to recompute on features
        for name in names:
            command = [sys.executable, __file__, "--child", str(model_dir), name, "--batch", str(args.batch),
                       "--steps", str(args.steps)] + (["--checkpointing"] if checkpointing else [])
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(done.stderr[-3000:])
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
        key = part.replace("-", "_")
        results[key] = rows
        by_name = {r["method"]: r for r in rows}
        if {"lora", "full-ft"} <= set(by_name):
            lora, full = by_name["lora"], by_name["full-ft"]
            results[f"{key}_lora_over_full_ft"] = {k: round(lora[k] / full[k], 3)
                                                   for k in ("peak_mem_mb", "step_mem_mb", "tensor_mem_mb")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if not k.startswith("step") or k.endswith("full_ft")},
                     indent=2))


if __name__ == "__main__":
    main()
