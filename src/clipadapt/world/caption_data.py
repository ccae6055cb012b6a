"""``world:captions``: a COCO-style caption dataset of world scenes (``captions_{split}.json`` + images)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from clipadapt.io import atomic_write_text
from clipadapt.world.cache import ensure_built
from clipadapt.world.captions import captions
from clipadapt.world.scenes import SceneSpec, generate_images

CAPTIONS_VERSION = "1"
CAPTION_SPLITS = {"train": (201, 2000), "val": (202, 250), "test": (203, 250)}  # seed, images
CAPTIONS_PER_IMAGE = 5


def write_caption_dataset(root: str | Path, splits: dict[str, tuple[int, int]] | None = None,
                          resolution: int = 64) -> Path:
    """Write ``root/images/<split>/<id>.png`` and ``root/captions_<split>.json`` (COCO ``images`` +
    ``annotations``); one and two-object scenes, five captions each."""
    root = Path(root)
    spec = SceneSpec(resolution=resolution, min_objects=1, max_objects=2)
    annotation_id = 0
    for split, (seed, count) in (splits or CAPTION_SPLITS).items():
        folder = root / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        images, scenes = generate_images(spec, seed, count)
        records, annotations = [], []
        for image, scene in zip(images, scenes, strict=True):
            image_id = len(records)
            file_name = f"images/{split}/{image_id:06d}.png"
            Image.fromarray(image).save(root / file_name)
            records.append({"id": image_id, "file_name": file_name, "width": resolution, "height": resolution,
                            "attributes": scene.attributes()})
            for text in captions(scene, seed, CAPTIONS_PER_IMAGE):
                annotations.append({"id": annotation_id, "image_id": image_id, "caption": text})
                annotation_id += 1
        atomic_write_text(root / f"captions_{split}.json",
                          json.dumps({"images": records, "annotations": annotations}) + "\n")
    return root


def world_captions_dir() -> Path:
    return ensure_built(f"captions-v{CAPTIONS_VERSION}", CAPTIONS_VERSION, lambda d: write_caption_dataset(d))
