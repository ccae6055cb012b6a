"""``linear-head``: a torch classifier on frozen, cached image features, trained by the engine.

No reference code: by default it trains on the clean features; ``features.views=N`` trains epoch e on augmented
view e mod N."""

from __future__ import annotations

from dataclasses import dataclass

from clipadapt.config import option
from clipadapt.engine.views import PER_EPOCH
from clipadapt.methods.base import Method, MethodConfig, register_method


@dataclass
class LinearHeadConfig(MethodConfig):
    lr: float = option(1e-3, help="peak learning rate of the head")


@register_method("linear-head", LinearHeadConfig)
class LinearHeadMethod(Method):
    """A head on frozen cached features, zero-shot-initialised (default) or random (head=linear)."""

    export_refusal = None  # its changes are CLIP weights, its classifier the head

    starts_at_zero_shot = True

    inputs = "features"
    view_use = PER_EPOCH  # no recipe views (views = 0): ours, without a reference
