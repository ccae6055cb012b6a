"""Per-image cost of test-time adaptation against zero-shot (issue 33): the random ViT-B/32-sized CLIP on a few
world:shapes test images, one process, one after another.

* **zero-shot**: encode the image (one forward pass of the image tower) and compare with the class vectors.
* **tda**: the same encoding, then the cache update and the cache logits (``tda_stream``).
* **tpt**: the image and ``--views`` augmented views through the image tower, one step (forward and backward of the
  text tower over every class prompt), and the answer (``Tpt.answer``), the reference's defaults.

Run: ``python benchmarks/testtime.py [--images 16] [--views 63]``; prints a Markdown table (seconds per image and
the ratio to zero-shot).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CLIPADAPT_PROGRESS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import header  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--views", type=int, default=63)
    args = parser.parse_args()
    import tempfile

    from clipadapt.classification.testtime import TdaConfig, stream_order, tda_stream
    from clipadapt.classification.tpt import Tpt, TptConfig
    from clipadapt.data import DataConfig, load_dataset
    from clipadapt.engine.zeroshot import build_zero_shot_head, zero_shot_logits
    from clipadapt.models import load_model
    from clipadapt.models.random_init import save_random_clip

    model = save_random_clip(Path(tempfile.mkdtemp(prefix="clipadapt-bench-tta-")) / "vit-b-32", preset="vit-b-32")
    bundle = load_model(str(model), device="cpu")
    dataset = load_dataset(DataConfig(dataset="world:shapes"))
    split = dataset.split("test")
    images = [split.load(i) for i in range(args.images)]
    head = build_zero_shot_head(bundle, dataset.classnames, ["a photo of a {}."])
    scale = float(bundle.logit_scale.detach())

    def encode(image):
        with torch.no_grad():
            return torch.nn.functional.normalize(bundle.encode_image(bundle.preprocess(image)[None]).float(), dim=-1)

    encode(images[0])  # warm-up
    start = time.perf_counter()
    features = torch.cat([encode(image) for image in images])
    zero_shot_logits(bundle, features, head)
    zero_shot = (time.perf_counter() - start) / len(images)
    start = time.perf_counter()
    features = torch.cat([encode(image) for image in images])
    tda_stream(features, head, scale, TdaConfig(), stream_order(len(images), 1))
    tda = (time.perf_counter() - start) / len(images)
    method = Tpt(bundle, dataset.classnames, TptConfig(views=args.views))
    method.answer(images[0], 0)  # warm-up
    start = time.perf_counter()
    for position, image in enumerate(images):
        method.answer(image, position)
    tpt = (time.perf_counter() - start) / len(images)
    info = header(images=args.images, views=args.views, classes=dataset.num_classes)
    print(f"# Test-time cost per image ({info['date']}, {info['machine']}, torch {info['torch']}, "
          f"{info['torch_threads']} threads; random ViT-B/32, world:shapes, {dataset.num_classes} classes)\n")
    print("| method | s per image | x zero-shot |\n|---|---|---|")
    for name, seconds in (("zero-shot", zero_shot), ("tda", tda), (f"tpt ({args.views} views, 1 step)", tpt)):
        print(f"| {name} | {seconds:.4f} | {seconds / zero_shot:.1f} |")


if __name__ == "__main__":
    main()
