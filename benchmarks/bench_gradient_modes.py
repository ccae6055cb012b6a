"""Gradient modes (issue 23): CLIP image towers and transformers image classifiers with gradients, under
``torch.no_grad`` and under ``torch.inference_mode``, through ``clipadapt bench`` (``run_bench``, one fresh process
per measurement).

Models: ``world:tiny`` (its image tower), ``world:tiny-resnet``, and two random classifiers built from configs: a
ResNet-18 geometry (``ResNetConfig`` with depths [2, 2, 2, 2], basic blocks, hidden sizes [64, 128, 256, 512]; the
config's defaults are ResNet-50-like) and a ViT-B/16 geometry (``ViTConfig()``'s defaults: 12 layers of width 768,
patch 16, 224 px), both with 1,000 classes. The whole grid runs ``--repeats`` times, interleaved, and the table takes
the median of each (model, mode), so that load from other processes on a shared machine spreads over all modes.

Run: ``CLIPADAPT_HOME=... python benchmarks/bench_gradient_modes.py [--batch 4] [--iterations 3] [--repeats 3]
[--threads=1]``
(the world models are built on first use if $CLIPADAPT_HOME lacks them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

THREADS = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--threads=")), "1")
os.environ["OMP_NUM_THREADS"] = THREADS  # before torch loads here or in the measuring processes
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CLIPADAPT_PROGRESS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def save_random_vit_b16(path: Path) -> Path:
    """A random transformers ViT-B/16 image classifier (google/vit-base-patch16-224's geometry)."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    ViTForImageClassification(ViTConfig(num_labels=1000)).save_pretrained(path)
    ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(path)
    return path


def summarise(rows: list[dict]) -> list[dict]:
    """Median images/s, latency and peak memory of each (model, mode) over the repeats, with the two ratios."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["mode"]), []).append(row)
    table = []
    for (model, mode), group in groups.items():
        table.append({"model": model, "mode": mode, "repeats": len(group),
                      "images_per_s": statistics.median(r["images_per_s"] for r in group),
                      "images_per_s_all": [r["images_per_s"] for r in group],
                      "latency_ms_p50": statistics.median(r["latency_ms_p50"] for r in group),
                      "latency_ms_p95": statistics.median(r["latency_ms_p95"] for r in group),
                      "peak_mem_mb": statistics.median(r["peak_mem_mb"] for r in group),
                      "forward_params": group[0]["forward_params"]})
    speed = {(r["model"], r["mode"]): r["images_per_s"] for r in table}
    for row in table:
        if row["mode"] == "no_grad" and (row["model"], "grad_enabled") in speed:
            row["no_grad_over_grad"] = round(row["images_per_s"] / speed[row["model"], "grad_enabled"], 3)
        if row["mode"] == "inference_mode" and (row["model"], "no_grad") in speed:
            row["inference_mode_over_no_grad"] = round(row["images_per_s"] / speed[row["model"], "no_grad"], 3)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="world:tiny,world:tiny-resnet,resnet-18,vit-b-16",
                        help="resnet-18 and vit-b-16 are the random classifiers built here")
    parser.add_argument("--threads", default="1", help="torch threads per measurement, as --threads=N (one "
                        "thread keeps a shared, loaded machine's measurements steady)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/gradient_modes.json"))
    args = parser.parse_args()

    from bench_training import save_random_resnet18
    from clipadapt.experiments.bench import run_bench
    from common import header

    work = Path(tempfile.mkdtemp(prefix="clipadapt-bench-modes-"))
    builders = {"resnet-18": save_random_resnet18, "vit-b-16": save_random_vit_b16}
    models = [str(builders[m](work / m)) if m in builders else m for m in args.models.split(",")]
    rows = []
    for repeat in range(args.repeats):
        results = run_bench(models, batch=args.batch, iterations=args.iterations, device="cpu",
                            on_result=lambda row: print(json.dumps(row), flush=True))
        rows += [row | {"repeat": repeat} for row in results["inference"]]
    names = {model: Path(model).name if model.startswith(str(work)) else model for model in models}
    table = [row | {"model": names[row["model"]]} for row in summarise(rows)]
    output = header(threads=int(THREADS), batch=args.batch, iterations=args.iterations, repeats=args.repeats,
                    load_average=os.getloadavg(), summary=table, rows=rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(output, indent=2) + "\n")
    print("| model | mode | images/s (median) | p50 ms | p95 ms | peak MB | ratio |")
    for row in table:
        ratio = row.get("no_grad_over_grad") or row.get("inference_mode_over_no_grad") or ""
        print(f"| {row['model']} | {row['mode']} | {row['images_per_s']:.1f} {row['images_per_s_all']} | "
              f"{row['latency_ms_p50']:.1f} | {row['latency_ms_p95']:.1f} | {row['peak_mem_mb']:.0f} | {ratio} |")


if __name__ == "__main__":
    main()
