"""``world:tiny``: the built-in pretrained CLIP, resolved to a verified cached copy (built on first use)."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path

from clipadapt.models.bundle import ClipBundle
from clipadapt.world.cache import ensure_built, verify
from clipadapt.world.pretrain import RECIPE_VERSION, WorldClipRecipe, pretrain_world_clip

log = logging.getLogger(__name__)
WORLD_CLIP_NAME = f"tiny-v{RECIPE_VERSION}"


def recipe_key(recipe: WorldClipRecipe | None = None) -> str:
    data = json.dumps(asdict(recipe or WorldClipRecipe()), sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def world_clip_dir() -> Path:
    def build(staging: Path) -> None:
        log.warning("world:tiny is not cached yet: pretraining it now (about 3 minutes on 2 CPU cores, once)")
        pretrain_world_clip(staging, WorldClipRecipe())

    return ensure_built(WORLD_CLIP_NAME, recipe_key(), build)


def load_world_clip(spec: str = "world:tiny") -> ClipBundle:
    from clipadapt.models.hf import load_transformers

    path = world_clip_dir()
    bundle = load_transformers(str(path), spec=spec)
    manifest = verify(path, recipe_key()) or {}
    weights = manifest.get("files", {}).get("model.safetensors", "")
    bundle.fingerprint = f"world:tiny:{weights[:16]}"
    bundle.name = spec
    return bundle
