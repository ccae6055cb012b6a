"""Prompt-method benchmarks (issue 9), on a random-initialised ViT-B/32-sized transformers CLIPModel:

* ``coop-cache``: CoOp trained twice on the same generated JPEG task, once on cached image features (the default:
  the images are encoded once, then only the text tower runs per step) and once re-encoding the images every step
  (``coop.image_features=recompute``, what the paper's implementation does). Reports the time per epoch of each,
  their ratio (target >= 10x) and both test accuracies (which must agree).
* ``step``: one fresh process per method and variant (``clipadapt.experiments.bench.measure_training_step``,
  the code behind ``clipadapt bench --methods``): batch 32 of 224 px images, a warm-up step, then timed training
  steps. Training images/s, peak memory, saved activations and tensor memory for visual-prompt, vpt shallow and deep,
  vision-prefix and coop beside lora and full fine-tuning.

Run: ``python benchmarks/bench_prompt_methods.py [--images 200] [--epochs 2] [--parts coop-cache,step]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CLIPADAPT_PROGRESS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent))

STEP_VARIANTS = [  # (row label, method, settings)
    ("visual-prompt (padding 30)", "visual-prompt", []),
    ("vpt shallow (8 tokens)", "vpt", []),
    ("vpt deep (8 tokens)", "vpt", ["vpt.depth=deep"]),
    ("vision-prefix (length 10, MLP)", "vision-prefix", []),
    ("coop (16 ctx, cached features)", "coop", []),
    ("coop (16 ctx, re-encoding)", "coop", ["coop.image_features=recompute"]),
    ("lora (q,v; r=8)", "lora", []),
    ("full-ft", "full-ft", []),
]


def coop_cache(work: Path, model_dir: Path, n_images: int, classes: int, epochs: int) -> dict:
    from bench_zeroshot import make_jpeg_folder
    from clipadapt.classification.experiment import load_experiment
    from clipadapt.classification.training import run_training

    print(f"generating {n_images} JPEGs ...", flush=True)
    make_jpeg_folder(work / "images", n_images, classes)
    runs = {}
    for mode in ("cached", "recompute"):
        start = time.perf_counter()
        output = run_training(load_experiment("coop", None, [
            f"model.spec={model_dir}", "model.device=cpu", f"data.dataset=imagefolder:{work / 'images'}",
            f"train.epochs={epochs}", "train.patience=0", f"coop.image_features={mode}",
            f"run.out={work / ('coop-' + mode)}", "run.overwrite=true"]))
        wall = time.perf_counter() - start
        history = _history(output.run_dir)
        steady = [row["seconds"] for row in history[1:]] or [history[0]["seconds"]]
        runs[mode] = {"epoch_s": round(sum(steady) / len(steady), 3), "first_epoch_s": history[0]["seconds"],
                      "train_time_s": output.record["cost"]["train_time_s"], "run_wall_s": round(wall, 2),
                      "test_acc1": output.record["metrics"]["acc1"],
                      "train_images_per_s": output.record["cost"]["train_images_per_s"]}
        print(mode, runs[mode], flush=True)
    return {"images": n_images, "classes": classes, "epochs": epochs, "runs": runs,
            "epoch_speedup": round(runs["recompute"]["epoch_s"] / runs["cached"]["epoch_s"], 1),
            "same_test_acc1": runs["cached"]["test_acc1"] == runs["recompute"]["test_acc1"]}


def _history(run_dir: Path) -> list[dict]:
    import csv

    with (run_dir / "history.csv").open() as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def steps(model_dir: Path, batch: int, n_steps: int) -> list[dict]:
    from clipadapt.experiments.bench import measure_in_child

    rows = []
    for label, method, settings in STEP_VARIANTS:
        row = measure_in_child("training", model=str(model_dir), method_name=method, batch=batch, steps=n_steps,
                               device="auto", settings=settings, detail=True)
        rows.append({"variant": label, **row})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--parts", default="coop-cache,step")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/prompt_methods.json"))
    args = parser.parse_args()

    from common import header, workspace

    work, model_dir = workspace("prompts")
    results = header(batch=args.batch)
    parts = args.parts.split(",")
    if "coop-cache" in parts:
        results["coop_cache"] = coop_cache(work, model_dir, args.images, args.classes, args.epochs)
    if "step" in parts:
        results["step"] = steps(model_dir, args.batch, args.steps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "step"}, indent=2))


if __name__ == "__main__":
    main()
