"""Time and size of caching augmented feature views (features.views, engine/views.py).

For each model (random-initialised transformers CLIPs: ``tiny`` and the ViT-B/32-sized ``vit-b-32``; ``--world``
adds world:tiny, built first if it is not cached), N generated 500x375 JPEGs in class folders, and each views count:

* ``clean_s``: encoding the clean split once (the feature cache's entry);
* ``views_s``: encoding V views into the views cache (float16 memory map), ``view_images_per_s`` = V x N / views_s;
* ``again_s``: asking for the same views again (read back from the cache: nothing encoded);
* ``bytes``: the views.npy file, against V x N x dim x 2 (float16);
* ``read_view_ms``: reading one view back from the memory map as float32.

The size of a grid follows from the layout: ImageNet 16-shot x 300 views x 512 dims x 2 bytes = 4.9 GB.

Run: ``python benchmarks/feature_views.py [--images 48] [--views 1,10,30] [--models tiny,vit-b-32] [--world]``
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
sys.path.insert(0, str(Path(__file__).parent))


def imagenet_sizes() -> dict:
    images, dims = 1000 * 16, {"projected (ViT-B, 512)": 512, "pooled (ViT-B/16, 768)": 768}
    return {f"ImageNet 16-shot x {views} views, {name}": f"{images * views * dim * 2 / 1e9:.2f} GB"
            for views in (10, 300) for name, dim in dims.items()}


def measure(model_spec: str, root: Path, views_counts: list[int], batch: int, workers: int) -> list[dict]:
    from clipadapt.data import DataConfig, load_dataset
    from clipadapt.engine.features import FeatureCache, encode_split
    from clipadapt.engine.views import ViewCache, ViewSpec, feature_views
    from clipadapt.models import load_model

    bundle = load_model(model_spec)
    split = load_dataset(DataConfig(dataset=f"imagefolder:{root}", val_fraction=0.0)).split("all")
    start = time.perf_counter()
    encode_split(bundle, split, batch, workers, cache=FeatureCache())
    clean = time.perf_counter() - start
    rows = []
    for count in views_counts:
        spec = ViewSpec(count)
        start = time.perf_counter()
        views = feature_views(bundle, split, spec, batch, workers, cache=ViewCache())
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        again = feature_views(bundle, split, spec, batch, workers, cache=ViewCache())
        again_s = time.perf_counter() - start
        start = time.perf_counter()
        again.view(count - 1)
        read_ms = 1000 * (time.perf_counter() - start)
        path = ViewCache().entry(bundle, split, spec, "projected") / "views.npy"
        rows.append({"model": model_spec if "/" not in model_spec else Path(model_spec).name, "images": len(split),
                     "dim": views.dim, "views": count, "clean_s": round(clean, 3), "views_s": round(seconds, 3),
                     "view_images_per_s": round(count * len(split) / seconds, 1), "again_s": round(again_s, 4),
                     "bytes": path.stat().st_size, "expected_bytes": count * len(split) * views.dim * 2,
                     "read_view_ms": round(read_ms, 3)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--views", default="1,10,30")
    parser.add_argument("--models", default="tiny,vit-b-32")
    parser.add_argument("--world", action="store_true", help="also world:tiny (builds it if it is not cached)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/feature_views.json"))
    args = parser.parse_args()

    from bench_zeroshot import make_jpeg_folder
    from clipadapt.models.random_init import save_random_clip
    from common import header, workspace

    work, _ = workspace("views", preset=None)
    make_jpeg_folder(work / "images", args.images, args.classes)
    counts = [int(v) for v in args.views.split(",")]
    specs = [str(save_random_clip(work / preset, preset=preset)) for preset in args.models.split(",") if preset]
    if args.world:
        specs.append("world:tiny")
    results = header(images=args.images, batch=args.batch, workers=args.workers, views=counts,
                     imagenet=imagenet_sizes(), rows=[])
    for spec in specs:
        results["rows"] += measure(spec, work / "images", counts, args.batch, args.workers)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
