"""What the image-side prompt methods share: a frozen CLIP, learned inputs, and an optional zero-shot head.

The head starts at the zero-shot text embeddings (``head=zeroshot``) and trains at ``head_lr``, the learning rate
the other methods' heads use, so a comparison shows what the prompt adds on top of a head trained the same way;
with ``train_head=false`` only the prompt trains (the papers' frozen-classifier setting).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clipadapt.config import option, require_positive
from clipadapt.methods.base import Method, MethodConfig


@dataclass
class PromptMethodConfig(MethodConfig):
    train_head: bool = option(True, help="also train the zero-shot-initialised head (false: only the prompt)")
    head_lr: float = option(1e-3, help="peak learning rate of the head (the other methods' head rate)")

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive(self, ("head_lr",), f"{self.section()}:")


class PromptMethod(Method):
    """A method whose own parameters are prompts; the head trains beside them at its own rate, or not at all."""

    def __init__(self, bundle, classnames, config: PromptMethodConfig, templates) -> None:
        super().__init__(bundle, classnames, config, templates)
        self.head.requires_grad_(config.train_head)

    def param_groups(self) -> list[dict[str, Any]]:
        head = {id(p) for p in self.head.parameters()}
        trainable = self.trainable_parameters().values()
        return [{"name": "prompt", "params": [p for p in trainable if id(p) not in head], "lr": self.config.lr},
                {"name": "head", "params": [p for p in trainable if id(p) in head], "lr": self.config.head_lr}]
