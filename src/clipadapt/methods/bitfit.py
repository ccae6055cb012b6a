"""``bitfit``: train only the bias terms of the image tower, plus the head (Ben Zaken et al., 2022)."""

from __future__ import annotations

from dataclasses import dataclass

from clipadapt.config import option
from clipadapt.methods.base import Method, MethodConfig, register_method


@dataclass
class BitFitConfig(MethodConfig):
    lr: float = option(1e-3, help="peak learning rate of the biases and the head")


@register_method("bitfit", BitFitConfig)
class BitFit(Method):
    """Only the bias terms of the vision tower (and the head) are trained."""

    export_refusal = None  # its changes are CLIP weights, its classifier the head
    changes_towers = True

    starts_at_zero_shot = True

    def __init__(self, bundle, classnames, config, templates) -> None:
        super().__init__(bundle, classnames, config, templates)
        for module in bundle.image_tower_modules():
            for name, param in module.named_parameters():
                if name.endswith("bias"):
                    param.requires_grad_(True)
