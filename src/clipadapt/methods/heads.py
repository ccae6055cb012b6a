"""Classification heads on top of CLIP image features.

``zeroshot``: a cosine classifier whose class vectors start at the zero-shot text embeddings (the stronger start,
as in WiSE-FT and LP-FT). ``linear``: a randomly initialised linear layer, what the typical notebook does.
``text``: class vectors recomputed through the text tower at every step, for methods that adapt the text tower.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from clipadapt.data.prompts import TemplateSet
from clipadapt.engine.zeroshot import build_zero_shot_head
from clipadapt.models.bundle import ClipBundle

HEAD_KINDS = ("zeroshot", "linear", "text")


@dataclass
class LinearForm:
    """A head as ``logits = scale * normalize(image_features) @ weight.T + bias``: every head here is one, and that
    is what ``clipadapt export`` writes (head.safetensors), so plain torch reproduces it."""

    weight: torch.Tensor  # (classes, dim); a cosine head's class vectors, normalised
    bias: torch.Tensor  # (classes,)
    scale: torch.Tensor  # ()

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: value.detach().float().cpu().contiguous().clone()
                for name, value in (("weight", self.weight), ("bias", self.bias), ("scale", self.scale))}


def cosine_logits(features: torch.Tensor, class_vectors: torch.Tensor, scale: torch.Tensor,
                  bias: torch.Tensor) -> torch.Tensor:
    """scale * cos(feature, class vector) + bias, for unnormalised features and class vectors."""
    vectors = nn.functional.normalize(class_vectors, dim=-1).to(features.dtype)
    return scale * nn.functional.normalize(features, dim=-1) @ vectors.T + bias


class CosineHead(nn.Module):
    """logits = scale * cos(feature, class vector) (+ SigLIP's bias); class vectors are trainable."""

    def __init__(self, class_vectors: torch.Tensor, scale: float, bias: float | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(class_vectors.detach().clone().float())
        self.register_buffer("scale", torch.tensor(float(scale)), persistent=False)
        self.register_buffer("bias", torch.tensor(float(bias or 0.0)), persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return cosine_logits(features, self.weight, self.scale, self.bias)

    @torch.no_grad()
    def as_linear(self) -> LinearForm:
        return LinearForm(nn.functional.normalize(self.weight, dim=-1), self.bias.expand(len(self.weight)),
                          self.scale)


class LinearHead(nn.Module):
    """A linear layer on the normalised features times the model's logit scale.

    The scale puts the random head on the same footing as the cosine head: the same learning rate moves both
    logits equally fast (on unit-norm features a plain linear layer needs ~100x more steps).
    """

    def __init__(self, dim: int, num_classes: int, scale: float) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, num_classes)
        self.register_buffer("scale", torch.tensor(float(scale)), persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.scale * nn.functional.normalize(features, dim=-1))

    @torch.no_grad()
    def as_linear(self) -> LinearForm:
        return LinearForm(self.linear.weight, self.linear.bias, self.scale)

    def set_weights(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Weights of a classifier on unit-norm features (e.g. a logistic regression): absorb the scale."""
        with torch.no_grad():
            self.linear.weight.copy_(weight / self.scale)
            self.linear.bias.copy_(bias)


class TextHead(nn.Module):
    """Class vectors = mean normalised text embedding of each class's prompts, computed with gradients."""

    def __init__(self, bundle: ClipBundle, classnames: Sequence[str], templates: TemplateSet) -> None:
        super().__init__()
        self._bundle = [bundle]  # not a submodule: the method owns the model
        self.prompts = [p for name in classnames for p in templates.fill(name)]
        self.per_class = len(templates.templates)
        self.num_classes = len(classnames)
        self.register_buffer("scale", bundle.logit_scale.detach().float().clone(), persistent=False)
        bias = bundle.logit_bias
        self.register_buffer("bias", bias.detach().float().clone() if bias is not None else torch.tensor(0.0),
                             persistent=False)
        self._frozen: torch.Tensor | None = None

    def class_vectors(self) -> torch.Tensor:
        if self._frozen is not None:
            return self._frozen
        embeddings = self._bundle[0].encode_text(self.prompts)
        embeddings = embeddings.view(self.num_classes, self.per_class, -1).mean(dim=1)
        return nn.functional.normalize(embeddings, dim=-1)

    def freeze_for_evaluation(self, frozen: bool) -> None:
        """Compute the class vectors once for a whole evaluation instead of at every batch."""
        with torch.no_grad():
            self._frozen = self.class_vectors().detach() if frozen else None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return cosine_logits(features, self.class_vectors(), self.scale, self.bias)

    @torch.no_grad()
    def as_linear(self) -> LinearForm:
        return LinearForm(self.class_vectors(), self.bias.expand(self.num_classes), self.scale)


def build_head(kind: str, bundle: ClipBundle, classnames: Sequence[str], templates: TemplateSet) -> nn.Module:
    scale = float(bundle.logit_scale.detach().float().cpu())
    if kind == "zeroshot":
        bias = bundle.logit_bias
        vectors = build_zero_shot_head(bundle, classnames, templates).cpu()
        return CosineHead(vectors, scale, float(bias.detach().float().cpu()) if bias is not None else None)
    if kind == "linear":
        return LinearHead(bundle.embed_dim, len(classnames), scale)
    if kind == "text":
        return TextHead(bundle, classnames, templates)
    raise ValueError(f"unknown head '{kind}'; valid choices: {', '.join(HEAD_KINDS)}")
