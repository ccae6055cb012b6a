"""Zero-shot throughput: clipadapt vs transformers' pipeline vs the image tower alone, in one process.

Setup (issue 2): a random-initialised ViT-B/32-sized transformers CLIPModel, N generated 500x375 JPEG files
in 100 class folders, batch 32. Reports images/s for

* ``pipeline``: ``pipeline("zero-shot-image-classification")`` over the files (a subset: it is slow), batch 32;
* ``clipadapt``: ``evaluate_zero_shot`` over all N files, from JPEG decoding to metrics, cache off;
* ``forward-only``: ``vision_model`` + projection on ready tensors, same batch size (the bound);
* ``second template set``: a re-evaluation with another template set, cache on (must not re-encode).

Run: ``python benchmarks/bench_zeroshot.py [--images 1000] [--pipeline-images 128]``
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CLIPADAPT_PROGRESS", "0")


def make_jpeg_folder(root: Path, n_images: int, n_classes: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    y, x = np.mgrid[0:375, 0:500].astype(np.float32)
    for i in range(n_images):
        folder = root / f"class_{i % n_classes:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        a, b, c = rng.uniform(-1, 1, 3)
        base = 128 + 80 * np.sin(a * x / 31 + b * y / 17 + c)
        image = np.stack([base, np.roll(base, 40, axis=1), 255 - base], -1) + rng.normal(0, 10, (375, 500, 3))
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--pipeline-images", type=int, default=128, help="images for the batched pipeline")
    parser.add_argument("--pipeline-default-images", type=int, default=32, help="images for the per-image pipeline")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=-1)
    parser.add_argument("--quick", action="store_true", help="skip the pipeline and the cached re-evaluation")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/zeroshot.json"))
    args = parser.parse_args()

    from transformers import pipeline

    from clipadapt.data import DataConfig, load_dataset
    from clipadapt.engine.features import FeatureCache
    from clipadapt.engine.zeroshot import evaluate_zero_shot
    from clipadapt.models import load_model
    from common import header, workspace

    work, model_dir = workspace("zeroshot")
    print(f"generating {args.images} JPEGs ...", flush=True)
    paths = make_jpeg_folder(work / "images", args.images, args.classes)
    bundle = load_model(str(model_dir))
    dataset = load_dataset(DataConfig(dataset=f"imagefolder:{work / 'images'}", val_fraction=0.0))
    split = dataset.split("all")
    results = header(images=len(split), classes=dataset.num_classes, batch=args.batch, cpus=os.cpu_count())

    # warm-up: one batch through everything
    with torch.inference_mode():
        bundle.encode_image(torch.randn(args.batch, 3, 224, 224))

    # 1. forward-only bound: the image tower on ready tensors
    pixels = torch.randn(args.batch, 3, 224, 224)
    n_batches = (len(split) + args.batch - 1) // args.batch
    start = time.perf_counter()
    with torch.inference_mode():
        for _ in range(n_batches):
            bundle.encode_image(pixels)
    results["forward_only_images_per_s"] = n_batches * args.batch / (time.perf_counter() - start)
    print(f"forward-only: {results['forward_only_images_per_s']:.1f} img/s", flush=True)

    # 2. clipadapt zero-shot, end to end from JPEG files, no cache
    start = time.perf_counter()
    result = evaluate_zero_shot(bundle, dataset, "all", ["simple"], batch_size=args.batch,
                                num_workers=args.workers, cache=None)
    elapsed = time.perf_counter() - start
    results["clipadapt_images_per_s"] = len(split) / elapsed
    results["clipadapt_acc1"] = result.best_result.metrics["acc1"]
    print(f"clipadapt: {results['clipadapt_images_per_s']:.1f} img/s", flush=True)

    if args.quick:
        print(json.dumps(results, indent=2))
        return

    # 3. a second template set with the cache: the image tower must not run again
    cache = FeatureCache()
    evaluate_zero_shot(bundle, dataset, "all", ["simple"], batch_size=args.batch, num_workers=args.workers,
                       cache=cache)
    calls = []
    hook = bundle.vision_tower.register_forward_hook(lambda *a: calls.append(1))
    start = time.perf_counter()
    evaluate_zero_shot(bundle, dataset, "all", ["a picture of a {}."], batch_size=args.batch, cache=cache)
    results["second_template_set_s"] = time.perf_counter() - start
    results["second_template_set_image_tower_calls"] = len(calls)
    hook.remove()

    # 4. transformers pipeline. Called per image (its default, batch_size=1) it re-encodes every class prompt
    #    for every image; with batch_size it encodes the prompts once per batch.
    pipe = pipeline("zero-shot-image-classification", model=str(model_dir), device="cpu")
    labels = dataset.classnames
    pipe(str(paths[0]), candidate_labels=labels)  # warm-up
    subset = [str(p) for p in paths[: args.pipeline_default_images]]
    start = time.perf_counter()
    for path in subset:
        pipe(path, candidate_labels=labels, hypothesis_template="a photo of a {}.")
    results["pipeline_default_images"] = len(subset)
    results["pipeline_default_images_per_s"] = len(subset) / (time.perf_counter() - start)
    print(f"pipeline (default, per image): {results['pipeline_default_images_per_s']:.2f} img/s", flush=True)

    subset = [str(p) for p in paths[: args.pipeline_images]]
    start = time.perf_counter()
    pipe(subset, candidate_labels=labels, hypothesis_template="a photo of a {}.", batch_size=args.batch)
    results["pipeline_batched_images"] = len(subset)
    results["pipeline_batched_images_per_s"] = len(subset) / (time.perf_counter() - start)
    print(f"pipeline (batch_size={args.batch}): {results['pipeline_batched_images_per_s']:.1f} img/s", flush=True)

    results["ratio_vs_pipeline_default"] = results["clipadapt_images_per_s"] / results["pipeline_default_images_per_s"]
    results["ratio_vs_pipeline_batched"] = results["clipadapt_images_per_s"] / results["pipeline_batched_images_per_s"]
    results["forward_only_vs_pipeline_batched"] = (results["forward_only_images_per_s"]
                                                   / results["pipeline_batched_images_per_s"])
    results["ratio_vs_forward_only"] = results["clipadapt_images_per_s"] / results["forward_only_images_per_s"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    print(f"\nclipadapt / pipeline (default): {results['ratio_vs_pipeline_default']:.2f}x (target >= 2.5x)")
    print(f"clipadapt / pipeline (batched): {results['ratio_vs_pipeline_batched']:.2f}x "
          f"(the image tower alone is {results['forward_only_vs_pipeline_batched']:.2f}x)")
    print(f"clipadapt / forward-only: {results['ratio_vs_forward_only']:.2f}x (target >= 0.85x)")


if __name__ == "__main__":
    main()
