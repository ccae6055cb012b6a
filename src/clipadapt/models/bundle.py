"""ClipBundle: a model with its own preprocessing and tokenizer, behind one small interface.

Every method and evaluation talks to a bundle, never to a backend directly, so the same code serves a
transformers checkpoint, an open_clip model and the built-in world model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clipadapt.data.transforms import ClipPreprocess
from clipadapt.errors import ClipAdaptError


@dataclass
class ClipBundle:
    """A CLIP-style model, ready for zero-shot evaluation and adaptation.

    ``encode_image``/``encode_text`` return L2-normalised embeddings by default; ``logit_scale`` is the
    exponentiated temperature (100 for OpenAI CLIP).
    """

    model: nn.Module
    preprocess: ClipPreprocess
    tokenizer: Callable[[list[str]], dict[str, torch.Tensor]]
    spec: str
    name: str
    backend: str
    fingerprint: str
    image_features_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    text_features_fn: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]
    vision_tower_fn: Callable[[nn.Module], nn.Module]
    text_tower_fn: Callable[[nn.Module], nn.Module]
    logit_scale_fn: Callable[[nn.Module], torch.Tensor]
    logit_bias_fn: Callable[[nn.Module], torch.Tensor | None] = lambda m: None
    image_projection_fn: Callable[[nn.Module], nn.Module | None] = lambda m: getattr(m, "visual_projection", None)
    token_names_fn: Callable[[list[int]], list[str]] | None = None  # token ids -> readable tokens (CoOp's words)
    # writes a model of this architecture with the checkpoint's tokenizer and image processor in transformers'
    # format (``save_pretrained``); None where the backend has no such format (open_clip)
    save_fn: Callable[[nn.Module, Path], None] | None = None
    # the image tower's pooled output before its final projection (None: the backend cannot give it apart)
    pooled_image_features_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    # -- encoders -----------------------------------------------------------------------------------------
    def encode_image(self, pixel_values: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        features = self.image_features_fn(self.model, pixel_values.to(self.device, self.dtype))
        return nn.functional.normalize(features, dim=-1) if normalize else features

    def encode_image_pooled(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The image tower's pooled output before the final projection: ``encode_image(x, normalize=False)`` is
        ``projection(encode_image_pooled(x))``. Never normalised (the projection comes first)."""
        if self.pooled_image_features_fn is None:
            raise ClipAdaptError(f"model '{self.spec}' ({self.backend}) does not give its image features before "
                                 f"the final projection")
        return self.pooled_image_features_fn(self.model, pixel_values.to(self.device, self.dtype))

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        tokens = self.tokenizer(list(texts))
        return {k: v.to(self.device) for k, v in tokens.items()}

    def encode_text(self, texts: Sequence[str], normalize: bool = True) -> torch.Tensor:
        features = self.text_features_fn(self.model, self.tokenize(texts))
        return nn.functional.normalize(features, dim=-1) if normalize else features

    # -- parts, for methods -------------------------------------------------------------------------------
    @property
    def vision_tower(self) -> nn.Module:
        return self.vision_tower_fn(self.model)

    def image_tower_modules(self) -> list[nn.Module]:
        """Every module ``encode_image`` runs through: the vision tower and its projection, if separate."""
        projection = self.image_projection_fn(self.model)
        return [self.vision_tower] + ([projection] if projection is not None else [])

    @property
    def text_tower(self) -> nn.Module:
        return self.text_tower_fn(self.model)

    @property
    def logit_scale(self) -> torch.Tensor:
        """exp(learned temperature): multiply cosine similarities by this to get logits."""
        return self.logit_scale_fn(self.model)

    @property
    def logit_bias(self) -> torch.Tensor | None:
        """SigLIP's learned bias (None for CLIP)."""
        return self.logit_bias_fn(self.model)

    def save_pretrained(self, path: str | Path, model: nn.Module | None = None) -> None:
        """``model`` (default: this bundle's) with its tokenizer and image processor, loadable by transformers'
        ``from_pretrained`` and ``pipeline`` without clipadapt."""
        if self.save_fn is None:
            raise ClipAdaptError(f"model '{self.spec}' ({self.backend}) cannot be written in transformers' format")
        self.save_fn(self.model if model is None else model, Path(path))

    # -- housekeeping -------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> ClipBundle:
        self.model.to(device=device, dtype=dtype)
        return self

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad or not trainable_only)

    @property
    def embed_dim(self) -> int:
        return int(self.info.get("embed_dim", 0))

    def describe(self) -> dict[str, Any]:
        return {"spec": self.spec, "name": self.name, "backend": self.backend, "fingerprint": self.fingerprint,
                **self.info}
