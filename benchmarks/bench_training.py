"""Training benchmarks (issue 4), all on a random-initialised ViT-B/32-sized transformers CLIPModel:

* ``lp-cache``: a linear probe twice in one process with the same feature cache; the first run encodes
  train/val/test images, the second reads the cache. Reports the ratio (target >= 20x).
* ``step``: one process per method (``clipadapt.experiments.bench.measure_training_step``, the code behind ``clipadapt
  bench --methods``): batch 32 of 224 px images, a warm-up step, then timed training steps (forward, backward,
  AdamW). Reports training images/s and peak memory (CUDA peak allocated on a GPU, the process's VmHWM on CPU);
  target: LoRA <= 0.7x full fine-tuning.

Run: ``python benchmarks/bench_training.py [--images 600] [--steps 3] [--parts lp-cache,step]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CLIPADAPT_PROGRESS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def lp_cache(work: Path, model_dir: Path, n_images: int, classes: int) -> dict:
    from bench_zeroshot import make_jpeg_folder
    from clipadapt.classification.experiment import build_method, load_experiment
    from clipadapt.data import DataConfig, load_dataset
    from clipadapt.engine.features import FeatureCache
    from clipadapt.engine.inputs import TrainingData
    from clipadapt.engine.trainer import TrainConfig, Trainer, make_accelerator
    from clipadapt.models import load_model

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
        method = build_method(load_experiment("linear-probe"), bundle, dataset)
        data = TrainingData(dataset, bundle, eval_batch_size=32, cache=cache)
        trainer = Trainer(TrainConfig(), data, accelerator)
        fit = method.fit(trainer)
        evaluation = trainer.evaluate(method, "test")
        seconds = time.perf_counter() - start
        runs.append({"run": attempt, "seconds": round(seconds, 3), "sweep_s": round(fit.train_time_s, 3),
                     "C": fit.details["C"], "test_acc1": evaluation.metrics["acc1"]})
        print(runs[-1], flush=True)
    return {
        "images": {s: len(dataset.split(s)) for s in ("train", "val", "test")}, "classes": classes,
        "model_load_s": round(load_s, 3), "runs": runs,
        "speedup": round(runs[0]["seconds"] / runs[1]["seconds"], 2),
        "speedup_including_model_load": round((runs[0]["seconds"] + load_s) / (runs[1]["seconds"] + load_s), 2),
    }


def save_random_resnet18(path: Path) -> Path:
    """A random transformers ResNet-18 (microsoft/resnet-18's geometry) for the baseline methods."""
    from transformers import ConvNextImageProcessorPil, ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2],
                          layer_type="basic", num_labels=1000)
    ResNetForImageClassification(config).save_pretrained(path)
    ConvNextImageProcessorPil(size={"shortest_edge": 224}, crop_pct=0.875, image_mean=[0.485, 0.456, 0.406],
                              image_std=[0.229, 0.224, 0.225]).save_pretrained(path)
    return path


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
    parser.add_argument("--settings", nargs="*", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/training.json"))
    args = parser.parse_args()

    if args.child:
        from clipadapt.experiments.bench import measure_training_step

        print(json.dumps(measure_training_step(args.child[0], args.child[1], args.batch, args.steps, "auto",
                                               checkpointing=args.checkpointing, detail=True,
                                               settings=args.settings)))
        return

    from clipadapt.methods import list_methods
    from common import header, workspace

    work, model_dir = workspace("train")
    settings = [f"baseline.classifier={save_random_resnet18(work / 'resnet-18')}"]
    results = header(batch=args.batch)
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
                       "--steps", str(args.steps)] + (["--checkpointing"] if checkpointing else []) + [
                       "--settings", *settings]
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
