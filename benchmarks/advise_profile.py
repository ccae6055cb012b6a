"""The reference profile of ``clipadapt advise`` (issue 30): what each method's step and fit cost on one machine, for
the budgets of the leave-one-dataset-out validation (``experiments/advise/costs.py``, ``reference_cost``).

On a random-initialised ViT-B/32-sized transformers CLIP (``models.random_init`` preset ``vit-b-32``):

* ``per_image_encode_seconds``: encoding generated 500x375 JPEGs (decoding, preprocessing, the image tower at batch
  32, ``engine.features.encode_images``), per image, less the loader's start; ``loader_start_seconds``: encoding one
  image (the loader's start); ``per_image_load_seconds``: the encoding less the tower's forward on ready pixels
  (``measure_inference``), what a pixel method pays per training image;
* per method (every registered one but the baselines, which train an image classifier of their own): a warm-up and
  ``--steps`` timed training steps (``experiments.bench.measure_training_step`` in a process of its own) at the
  recipe's batch (full-batch methods: 16 shots of 10 classes), pixel methods' capped at ``--batch``, with 10 and with
  100 classes (the text tower of prompt methods runs over every class at each step): step seconds and peak memory at
  each, at the probed batch (``costs.profile_step_seconds``: linear in the classes, the rest linear in the batch);
* closed-form methods (linear-probe, gda, tip-adapter): their own ``fit`` (the C sweep, the statistics and alpha
  search, the cache and alpha-beta search) on random unit features of the model's width, 16 shots of 100 classes plus
  CoOp's 4 validation shots, through the Trainer the pilot uses; stored as seconds per training image per class.

Run: ``OMP_NUM_THREADS=1 python benchmarks/advise_profile.py [--steps 2] [--batch 8] [--out PATH]``
(default out: ``src/clipadapt/experiments/advise/reference_profile.json``).
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

OUT = Path(__file__).resolve().parents[1] / "src" / "clipadapt" / "experiments" / "advise" / "reference_profile.json"
CLASSES = (10, 100)
SHOTS = 16
EXCLUDED = ("baseline", "baseline-flip")  # an image classifier of their own, not the CLIP model


def encoding_seconds(work: Path, model_dir: Path, images: int) -> tuple[float, float]:
    """``(seconds per image, the loader's start)`` of encoding generated JPEGs."""
    import numpy as np

    from bench_zeroshot import make_jpeg_folder
    from clipadapt.data import DataConfig, load_dataset
    from clipadapt.engine.features import encode_images
    from clipadapt.models import load_model

    make_jpeg_folder(work / "jpegs", images, 4)
    split = load_dataset(DataConfig(dataset=f"imagefolder:{work / 'jpegs'}", val_fraction=0.0)).split("train")
    bundle = load_model(str(model_dir))
    start = encode_images(bundle, split.subset(np.arange(1)), batch_size=1).encode_time_s
    encoded = encode_images(bundle, split, batch_size=32)
    return (encoded.encode_time_s - start) / len(encoded.labels), start


def closed_form_seconds(model_dir: Path, method: str, classes: int, shots: int = SHOTS) -> float:
    """Seconds of ``method``'s own fit on random unit features (module docstring)."""
    import numpy as np
    import torch

    from clipadapt.classification.experiment import build_method, load_experiment
    from clipadapt.data.base import ClassificationDataset, InMemorySource, Split
    from clipadapt.engine.trainer import make_accelerator
    from clipadapt.experiments.advise.pilot import Pool, fold_trainer
    from clipadapt.models import load_model

    bundle = load_model(str(model_dir))
    val_shots = min(shots, 4)
    labels = np.concatenate([np.repeat(np.arange(classes), shots), np.repeat(np.arange(classes), val_shots)])
    source = InMemorySource([None] * len(labels), labels, "profile")
    n_train = shots * classes
    names = [f"class {i}" for i in range(classes)]
    dataset = ClassificationDataset("profile", names, {"train": Split(source, np.arange(n_train), "train")},
                                    info={"shots": shots})
    features = torch.nn.functional.normalize(torch.randn(len(labels), bundle.embed_dim,
                                                         generator=torch.Generator().manual_seed(0)), dim=-1)
    pool = Pool(dataset, source, features, labels, val_shots / (shots + val_shots))
    experiment = load_experiment(method)
    trainer = fold_trainer(pool, np.arange(n_train), np.arange(n_train, len(labels)), experiment, bundle,
                           make_accelerator(torch.device("cpu"), "fp32"))
    fitted = build_method(experiment, bundle, dataset)
    started = time.perf_counter()
    fitted.fit(trainer)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8, help="largest probed batch")
    parser.add_argument("--images", type=int, default=96, help="JPEGs encoded for the per-image seconds")
    parser.add_argument("--methods", default="", help="comma-separated (default: every registered one but "
                                                      "the baselines)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    from clipadapt.experiments.advise.costs import CLOSED_FORM, recipe_work
    from clipadapt.experiments.bench import measure_in_child
    from clipadapt.methods import METHODS
    from common import header, workspace

    work, model_dir = workspace("advise-profile")
    load_before = os.getloadavg()
    started = time.perf_counter()
    per_image, loader_start = encoding_seconds(work, model_dir, args.images)
    forward = 1.0 / measure_in_child("inference", model=str(model_dir), batch=32, dtype="fp32",
                                     mode="inference_mode", iterations=3, device="cpu")["images_per_s"]
    print(f"encoding: {per_image * 1000:.1f} ms per image, forward {forward * 1000:.1f} ms, loader start "
          f"{loader_start:.2f} s", flush=True)
    methods = [m for m in (args.methods.split(",") if args.methods else METHODS.names()) if m not in EXCLUDED]
    entries = {}
    for method in methods:
        recipe = recipe_work(method, SHOTS * CLASSES[0], CLASSES[0])
        batch = recipe["batch"] or 32  # pixel methods capped (the image tower's share is scaled back linearly)
        batch = min(batch, args.batch) if recipe["inputs"] == "pixels" else batch
        rows = [measure_in_child("training", model=str(model_dir), method_name=method, batch=batch,
                                 steps=args.steps, device="cpu", classes=classes) for classes in CLASSES]
        entry = {"batch": batch, "classes": list(CLASSES),
                 "step_seconds": [round(batch / row["train_images_per_s"], 5) for row in rows],
                 "peak_mem_mb": [row["peak_mem_mb"] for row in rows]}
        if method in CLOSED_FORM:
            seconds = closed_form_seconds(model_dir, method, CLASSES[1])
            entry["fit_seconds"] = round(seconds, 3)
            entry["fit_seconds_per_sample_class"] = seconds / (SHOTS * CLASSES[1] * CLASSES[1])
        entries[method] = entry
        print(method, json.dumps(entry), flush=True)
    profile = {**header(model="random ViT-B/32-sized transformers CLIP (models.random_init preset vit-b-32)",
                        script="benchmarks/advise_profile.py", steps=args.steps, probe_batch_cap=args.batch,
                        load_average_before=[round(x, 2) for x in load_before],
                        load_average_after=[round(x, 2) for x in os.getloadavg()],
                        omp_num_threads=os.environ.get("OMP_NUM_THREADS"),
                        seconds=round(time.perf_counter() - started)),
               "device": "cpu",
               "per_image_encode_seconds": round(per_image, 6),
               "per_image_load_seconds": round(max(0.0, per_image - forward), 6),
               "loader_start_seconds": round(loader_start, 4), "methods": entries}
    args.out.write_text(json.dumps(profile, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
