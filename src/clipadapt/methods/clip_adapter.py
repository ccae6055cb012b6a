"""``clip-adapter`` (Gao et al., 2021): a residual bottleneck MLP on the image features, trained on cached features.

``f' = ratio * MLP(f) + (1 - ratio) * f`` with ``MLP = Linear(d, d / reduction) -> ReLU -> Linear(d / reduction, d)
-> ReLU`` (no biases, as in the paper), then the zero-shot cosine classifier, frozen by default. ``ratio = 0`` is
zero-shot exactly. The paper's best residual ratio on few-shot ImageNet is 0.2 with reduction 4.

The reference trains on Dassl's training batches (``clip_adapter.py:155-158``;
gaopengcuhk/CLIP-Adapter@08d07f8b2ecafc6f1479fe636b26d464d7a5574e), which CoOp's configs augment with a random resized
crop + flip every epoch; ours trains epoch e on the cached augmented view e mod N (``features.views``, default 10).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from clipadapt.config import option, require_positive
from clipadapt.engine.views import PER_EPOCH
from clipadapt.errors import ConfigError
from clipadapt.methods.base import Method, MethodConfig, freeze, register_method
from clipadapt.models.bundle import ClipBundle


@dataclass
class ClipAdapterConfig(MethodConfig):
    reduction: int = option(4, help="bottleneck width = feature width / reduction")
    ratio: float = option(0.2, help="residual ratio: share of the adapted feature in the blend (0: zero-shot)")
    train_head: bool = option(False, help="also train the classifier (the paper keeps the text classifier fixed)")
    lr: float = option(1e-2, help="peak learning rate of the adapter (a randomly initialised MLP: 1e-3 barely "
                                  "moves it in 10 few-shot epochs, docs/methods.md)")

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive(self, ("reduction",), "clip_adapter:")
        if not 0 <= self.ratio <= 1:
            raise ConfigError(f"clip_adapter.ratio must be in [0, 1], got {self.ratio}")


class ResidualAdapter(nn.Module):
    def __init__(self, dim: int, reduction: int, ratio: float) -> None:
        super().__init__()
        hidden = max(1, dim // reduction)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, dim, bias=False), nn.ReLU(inplace=True))
        self.ratio = ratio

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.ratio == 0:
            return features
        return self.ratio * self.mlp(features) + (1 - self.ratio) * features


@register_method("clip-adapter", ClipAdapterConfig)
class ClipAdapter(Method):
    """A residual bottleneck MLP on cached image features before the frozen zero-shot classifier."""

    export_refusal = "its residual MLP runs on the image features, outside the model's weights"

    inputs = "features"
    views, view_use = 10, PER_EPOCH

    def __init__(self, bundle, classnames, config: ClipAdapterConfig, templates) -> None:
        super().__init__(bundle, classnames, config, templates)
        self.adapter = ResidualAdapter(bundle.embed_dim, config.reduction, config.ratio)
        if not config.train_head:
            freeze(self.head)

    def classify(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.adapter(self.image_features(inputs)))

    changes_towers = True  # the residual MLP transforms every image's features, whatever the classes

    @contextmanager
    def adapted_towers(self) -> Iterator[ClipBundle]:
        """The image tower followed by the adapter (what ``classify`` runs on any image); the text tower as it was."""
        bundle, adapter = self.bundle, self.adapter
        weight = next(adapter.parameters())

        def features(model, pixels):
            return adapter(bundle.image_features_fn(model, pixels).to(weight.dtype))

        with self.evaluating():
            yield dataclasses.replace(bundle, image_features_fn=features)
