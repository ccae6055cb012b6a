"""``world:tiny-resnet``: the world's conventional supervised classifier, for the ``baseline`` method offline.

The analog of an ImageNet ResNet: a real transformers ``ResNetForImageClassification`` trained with cross-entropy
on single-object scenes of the 32 colour-shape pairs that world:tiny saw in pretraining (the 16 held-out pairs
stay unseen for both). The baseline then retrains only its final layer, as classic transfer learning does.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clipadapt.config import option, require_positive
from clipadapt.data.transforms import ClipPreprocess, PreprocessConfig
from clipadapt.io import atomic_write_text
from clipadapt.progress import progress_bar
from clipadapt.world.cache import ensure_built, recipe_key
from clipadapt.world.reproducible import reproducible_build
from clipadapt.world.scenes import SceneSpec, generate_images, held_out_combinations

log = logging.getLogger(__name__)
RESNET_VERSION = "1"
RESNET_NAME = f"tiny-resnet-v{RESNET_VERSION}"
TRAIN_SEED = 7001  # a scene stream of its own (tasks use 101-103 + offsets, CLIP pretraining others)


@dataclass
class WorldResNetRecipe:
    images: int = option(9600, help="training scenes (one object each, the 32 seen pairs)")
    epochs: int = option(3, help="passes over the scenes")
    batch_size: int = option(64, help="scenes per step")
    lr: float = option(2e-3, help="AdamW learning rate (cosine decay)")
    resolution: int = option(48, help="input side in pixels")
    hidden_sizes: list[int] = option([32, 64, 128], help="channels per stage")
    seed: int = option(0, help="weights and order")
    threads: int = option(1, help="torch threads of the build, whatever the caller's (another count gives other "
                                  "weights)")

    def __post_init__(self) -> None:
        require_positive(self, ("threads", "images", "epochs", "batch_size", "lr", "resolution"), "world resnet:")


def seen_pairs() -> list[tuple[str, str]]:
    return SceneSpec(exclude=held_out_combinations()).allowed()


def train_world_resnet(out_dir: Path, recipe: WorldResNetRecipe | None = None) -> dict:
    """Train and save world:tiny-resnet into ``out_dir``: same weights for a recipe whoever calls (reproducible.py)."""
    recipe = recipe or WorldResNetRecipe()
    with reproducible_build(recipe.threads, recipe.seed):
        return _train(Path(out_dir), recipe)


def _train(out_dir: Path, recipe: WorldResNetRecipe) -> dict:
    from transformers import ConvNextImageProcessorPil, ResNetConfig, ResNetForImageClassification
    from transformers.utils import logging as hf_logging

    pairs = seen_pairs()
    labels = [f"{c} {s}" for c, s in pairs]
    forced = [pairs[i % len(pairs)] for i in range(recipe.images)]
    images, _ = generate_images(SceneSpec(min_objects=1, max_objects=1), TRAIN_SEED, recipe.images, combinations=forced)
    targets = torch.tensor([i % len(pairs) for i in range(recipe.images)])
    processor = ConvNextImageProcessorPil(size={"shortest_edge": recipe.resolution}, crop_pct=1.0,
                                          image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    preprocess = ClipPreprocess(PreprocessConfig.from_image_processor(processor))  # exactly what the baseline uses
    pixels = preprocess.normalize(torch.stack([preprocess.to_uint8(Image.fromarray(image)) for image in images]))
    torch.manual_seed(recipe.seed)
    config = ResNetConfig(num_channels=3, embedding_size=recipe.hidden_sizes[0], hidden_sizes=recipe.hidden_sizes,
                          depths=[1] * len(recipe.hidden_sizes), layer_type="basic", num_labels=len(labels),
                          id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    model = ResNetForImageClassification(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.05)
    steps = recipe.epochs * int(np.ceil(recipe.images / recipe.batch_size))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(recipe.seed)
    start, losses = time.perf_counter(), []
    model.train()
    with progress_bar("world:tiny-resnet", total=steps, unit="steps") as advance:
        for _ in range(recipe.epochs):
            order = torch.randperm(recipe.images, generator=generator)
            for i in range(0, recipe.images, recipe.batch_size):
                batch = order[i:i + recipe.batch_size]
                x = pixels[batch]
                flip = torch.rand(len(batch), generator=generator) < 0.5
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
                loss = model(pixel_values=x, labels=targets[batch]).loss
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                losses.append(float(loss.detach()))
                advance(1)
    model.eval()
    hf_logging.disable_progress_bar()
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    summary = {"recipe": asdict(recipe), "train_time_s": round(time.perf_counter() - start, 1),
               "final_loss": float(np.mean(losses[-20:])), "classes": labels}
    atomic_write_text(out_dir / "recipe.json", json.dumps(summary, indent=2) + "\n")
    return summary


def world_resnet_dir(rebuild: bool = False) -> Path:
    """The cached world:tiny-resnet; built on first use (well under a minute on 2 CPU cores)."""

    def build(staging: Path) -> None:
        log.info("building world:tiny-resnet (once)")
        train_world_resnet(staging)

    return ensure_built(RESNET_NAME, recipe_key(WorldResNetRecipe()), build, force=rebuild)
