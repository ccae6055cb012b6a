"""``full-ft``: fine-tune the whole image tower with a lower backbone learning rate; optional LP-FT.

LP-FT (Kumar et al., 2022) first fits a linear probe on frozen features, then fine-tunes everything from that
head, which distorts the pretrained features less than starting from a random head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clipadapt.config import option, require_positive
from clipadapt.methods.base import Method, MethodConfig, register_method
from clipadapt.methods.heads import build_head
from clipadapt.methods.linear_probe import fit_probe_head


@dataclass
class FullFTConfig(MethodConfig):
    lr: float = option(1e-4, help="peak learning rate of the head")
    backbone_lr_scale: float = option(0.1, help="backbone learning rate = lr * this")
    weight_decay: float = option(0.1, help="AdamW weight decay")
    lp_ft: bool = option(False, help="LP-FT: fit a logistic-regression head on frozen features first "
                                     "(the head becomes linear), then fine-tune everything")

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive(self, ("backbone_lr_scale",), "full_ft:")


@register_method("full-ft", FullFTConfig)
class FullFineTune(Method):
    """The whole vision tower trains, at a tenth of the head's learning rate by default."""

    export_refusal = None  # its changes are CLIP weights, its classifier the head
    changes_towers = True

    starts_at_zero_shot = True

    def __init__(self, bundle, classnames, config, templates) -> None:
        super().__init__(bundle, classnames, config, templates)
        for module in bundle.image_tower_modules():
            module.requires_grad_(True)

    @classmethod
    def planned_choices(cls, config: FullFTConfig, train) -> tuple[str, ...]:
        return ("C",) * config.lp_ft + super().planned_choices(config, train)  # LP-FT's probe chooses its C

    def make_head(self, bundle, templates):
        if self.config.lp_ft:
            return build_head("linear", bundle, self.classnames, templates)
        return super().make_head(bundle, templates)

    def param_groups(self) -> list[dict[str, Any]]:
        head = [p for p in self.head.parameters() if p.requires_grad]
        head_ids = {id(p) for p in head}
        backbone = [p for p in self.trainable_parameters().values() if id(p) not in head_ids]
        return [{"name": "head", "params": head, "lr": self.config.lr},
                {"name": "backbone", "params": backbone, "lr": self.config.lr * self.config.backbone_lr_scale}]

    def prepare(self, trainer) -> None:
        if not self.config.lp_ft:
            return
        fit_probe_head(self.head, trainer, len(self.classnames))
