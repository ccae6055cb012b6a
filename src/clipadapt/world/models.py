"""``world:tiny``: the built-in pretrained CLIP, resolved to a verified cached copy (built on first use)."""

from __future__ import annotations

import logging
from pathlib import Path

from clipadapt.models.bundle import ClipBundle
from clipadapt.world.cache import ensure_built, recipe_key, weights_fingerprint
from clipadapt.world.pretrain import RECIPE_VERSION, WorldClipRecipe, pretrain_world_clip

log = logging.getLogger(__name__)
WORLD_CLIP_NAME = f"tiny-v{RECIPE_VERSION}"


def world_clip_dir(rebuild: bool = False) -> Path:
    """The cached world:tiny (default recipe); built on first use, or now with ``rebuild``."""

    def build(staging: Path) -> None:
        if not rebuild:
            log.warning("world:tiny is not cached yet: pretraining it now (4-6 minutes on one CPU thread, once)")
        pretrain_world_clip(staging, WorldClipRecipe())

    return ensure_built(WORLD_CLIP_NAME, recipe_key(WorldClipRecipe()), build, force=rebuild)


def load_world_clip(spec: str = "world:tiny") -> ClipBundle:
    from clipadapt.models.hf import load_transformers

    path = world_clip_dir()  # verified there; the manifest is only read again for the weights' hash
    bundle = load_transformers(str(path), spec=spec)
    bundle.fingerprint = weights_fingerprint("world:tiny", path)
    bundle.name = spec
    return bundle
