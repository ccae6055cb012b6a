"""The frozen image encoder's outputs for captioning, encoded once per model, images and preprocessing.

Every captioning method keeps the CLIP image tower frozen, so what the bridge reads is a fixed function of the
image: the tower's last hidden states (class token, if the model has one, then the patch tokens in row-major grid
order, after the tower's final layer norm) and the pooled, projected, normalised CLIP embedding (what the ``mapper``
bridge and CLIPScore use). They are computed once and kept in safetensors files beside the classification feature
cache, so training epochs never run the image tower (docs/benchmarks.md has the ratio).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from clipadapt.data.base import Split
from clipadapt.engine.features import SkippedImage, SplitCache, readable_batches
from clipadapt.errors import ConfigError
from clipadapt.models.bundle import ClipBundle

ENCODER_CACHE_VERSION = 1


@dataclass
class PatchGeometry:
    grid: tuple[int, int]  # patch rows, columns
    prefix_tokens: int  # tokens before the patches (1 for CLIP's class token, 0 for SigLIP)
    width: int  # hidden size of the tower

    @property
    def num_tokens(self) -> int:
        return self.prefix_tokens + self.grid[0] * self.grid[1]


def patch_geometry(bundle: ClipBundle) -> PatchGeometry:
    """Patch grid of a transformers vision transformer; one clear error for towers without patch tokens."""
    config = getattr(getattr(bundle.vision_tower, "config", None), "patch_size", None)
    if bundle.backend != "transformers" or config is None:
        raise ConfigError(f"'{bundle.spec}' has no patch tokens to caption from (a {bundle.backend} "
                          f"{bundle.info.get('model_type', 'model')}); use a transformers CLIP or SigLIP checkpoint")
    vision = bundle.vision_tower.config
    height, width = bundle.preprocess.config.crop
    grid = (height // vision.patch_size, width // vision.patch_size)
    class_token = getattr(getattr(bundle.vision_tower, "embeddings", None), "class_embedding", None) is not None
    return PatchGeometry(grid, 1 if class_token else 0, vision.hidden_size)


def image_tokens(bundle: ClipBundle, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens, pooled)`` from one pass of the tower: (B, tokens, width) last hidden states after the final
    layer norm, and (B, embed_dim) the L2-normalised CLIP image embedding (what ``bundle.encode_image`` gives)."""
    tower = bundle.vision_tower
    out = tower(pixel_values=pixel_values.to(bundle.device, bundle.dtype))
    hidden = out.last_hidden_state
    post = getattr(tower, "post_layernorm", None)  # CLIP norms only the pooled token; SigLIP's output is normed
    tokens = post(hidden) if post is not None and getattr(tower, "head", None) is None else hidden
    projection = bundle.image_projection_fn(bundle.model)
    pooled = projection(out.pooler_output) if projection is not None else out.pooler_output
    return tokens, torch.nn.functional.normalize(pooled, dim=-1)


@dataclass
class EncodedImages:
    tokens: torch.Tensor  # (N, tokens, width) float32
    pooled: torch.Tensor  # (N, embed_dim) float32, L2-normalised CLIP image embeddings
    positions: np.ndarray  # (N,) positions in the split
    geometry: PatchGeometry
    skipped: list[SkippedImage] = field(default_factory=list)
    encode_time_s: float = 0.0
    from_cache: bool = False


@torch.inference_mode()
def encode_for_captioning(bundle: ClipBundle, split: Split, batch_size: int = 64, num_workers: int = -1,
                          strict: bool = False) -> EncodedImages:
    geometry = patch_geometry(bundle)
    tokens, pooled, positions, skipped = [], [], [], []
    start = time.perf_counter()
    for pixels, batch in readable_batches(split, bundle.preprocess, batch_size, num_workers, strict, skipped,
                                          f"encoding {split.name} for captioning"):
        batch_tokens, batch_pooled = image_tokens(bundle, pixels)
        tokens.append(batch_tokens.float().cpu())
        pooled.append(batch_pooled.float().cpu())
        positions.append(batch["positions"].numpy())
    empty = torch.zeros(0, geometry.num_tokens, geometry.width)
    return EncodedImages(torch.cat(tokens) if tokens else empty,
                         torch.cat(pooled) if pooled else torch.zeros(0, bundle.embed_dim),
                         np.concatenate(positions) if positions else np.zeros(0, dtype=np.int64), geometry,
                         skipped, time.perf_counter() - start)


class EncoderCache(SplitCache):
    """``EncodedImages`` of caption splits, beside the classification feature cache."""

    version = ENCODER_CACHE_VERSION
    folder = "captioning"
    description = "captioning encoder cache"

    def to_file(self, encoded: EncodedImages) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        geometry = {"grid": list(encoded.geometry.grid), "prefix_tokens": encoded.geometry.prefix_tokens,
                    "width": encoded.geometry.width}
        return ({"tokens": encoded.tokens, "pooled": encoded.pooled,
                 "positions": torch.from_numpy(np.ascontiguousarray(encoded.positions))},
                {"geometry": json.dumps(geometry)})

    def from_file(self, tensors, meta, skipped, encode_time_s) -> EncodedImages:
        geometry = PatchGeometry(**json.loads(meta["geometry"]))
        geometry.grid = tuple(geometry.grid)
        return EncodedImages(tensors["tokens"], tensors["pooled"], tensors["positions"].numpy(), geometry, skipped,
                             encode_time_s, from_cache=True)


def encode_cached(bundle: ClipBundle, split: Split, cache: EncoderCache | None = None, batch_size: int = 64,
                  num_workers: int = -1, strict: bool = False) -> EncodedImages:
    """``encode_for_captioning`` through the cache: a second call with the same inputs reads the file."""

    def encode() -> EncodedImages:
        return encode_for_captioning(bundle, split, batch_size, num_workers, strict)

    return cache.through(bundle, split, strict, encode) if cache is not None else encode()
