"""``cocoop``: Conditional Context Optimization (Zhou et al., CVPR 2022): CoOp's context, shifted per image.

A meta-network (Linear(d, d/16), ReLU, Linear(d/16, width), as in the reference ``trainers/cocoop.py``) maps each
image's normalised feature to a vector pi that is added to every context vector, so each image gets its own prompts
``[SOS] v_1+pi ... v_n+pi <name of c> . [EOS]``. The context and the meta-network train; the context is shared by
all classes, so a trained run classifies classes it never saw (base-to-novel).

Cost: the class vectors depend on the image, so the text tower runs batch x classes prompts per step (CoOp runs
classes), and an evaluation runs images x classes prompts. Prompts of several images go through the tower together
(``prompts_per_pass`` at most, at least one image), and the start token and context of each image are encoded once
and shared by its classes (CoOp's shared-prefix encoding, one prefix per image). Trains on cached image features,
like ``coop``: epoch e on augmented view e mod N (``features.views``, default 10, one per epoch of its 10), as the
reference trains on a fresh random resized crop + flip each epoch
(``configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml:13``, ``trainers/cocoop.py:248``;
KaiyangZhou/CoOp@ff61507c790454bce7c5052c3ac39e60772f1f89).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from clipadapt.config import option
from clipadapt.engine.trainable import OptimizerConfig
from clipadapt.engine.views import PER_EPOCH
from clipadapt.errors import ConfigError
from clipadapt.methods.base import Method, register_method
from clipadapt.methods.coop import CoOpConfig, PromptLearner, build_prompt_tokens
from clipadapt.methods.towers import text_token_embedding
from clipadapt.models.bundle import ClipBundle


@dataclass
class CoCoOpConfig(OptimizerConfig):
    n_ctx: int = option(4, help="learned context vectors (random init; an init phrase sets its own length)")
    init: str = option("a photo of a", help="initialise the context from this phrase (empty: random, N(0, 0.02))")
    prompts_per_pass: int = option(1024, help="at most this many prompts (images x classes) through the text "
                                              "tower at once; at least one image's")
    share_prefix: bool = option(True, help="encode each image's start token and context once for all its classes "
                                           "instead of once per class: the same numbers, less work")
    lr: float = option(2e-3, help="peak learning rate (the reference's SGD at 0.002)")
    optimizer: str = option("sgd", help="adamw or sgd (the reference: SGD, momentum 0.9)")
    weight_decay: float = option(5e-4, help="weight decay (the reference's, Dassl's default 5e-4)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_ctx <= 0:
            raise ConfigError(f"cocoop.n_ctx must be positive, got {self.n_ctx}")
        if self.prompts_per_pass <= 0:
            raise ConfigError(f"cocoop.prompts_per_pass must be positive, got {self.prompts_per_pass}")

    def context_config(self) -> CoOpConfig:
        """The shared context as CoOp builds it (class name at the end, one context for all classes)."""
        return CoOpConfig(n_ctx=self.n_ctx, init=self.init, share_prefix=self.share_prefix)


class ConditionalPromptLearner(PromptLearner):
    """CoOp's context plus the meta-network's per-image shift; logits of each image against its own class vectors."""

    def __init__(self, bundle: ClipBundle, classnames: Sequence[str], config: CoCoOpConfig) -> None:
        super().__init__(bundle, classnames, config.context_config())
        image_dim, width = int(bundle.info["embed_dim"]), self.ctx.shape[-1]
        hidden = max(1, image_dim // 16)
        self.meta_net = nn.Sequential(OrderedDict([("linear1", nn.Linear(image_dim, hidden)), ("relu", nn.ReLU()),
                                                   ("linear2", nn.Linear(hidden, width))]))
        self.images_per_pass = max(1, config.prompts_per_pass // self.num_classes)

    def freeze_for_evaluation(self, frozen: bool) -> None:
        """Nothing to precompute: the class vectors depend on each image."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        features = nn.functional.normalize(features.float(), dim=-1)
        contexts = self.ctx[None] + self.meta_net(features)[:, None]  # (images, n_ctx, width)
        logits = []
        for image, context in zip(features.split(self.images_per_pass), contexts.split(self.images_per_pass),
                                  strict=True):
            class_vectors = self.encode(context)  # (images, classes, dim), normalised
            logits.append(self.scale * torch.einsum("id,icd->ic", image, class_vectors) + self.bias)
        return torch.cat(logits)


@register_method("cocoop", CoCoOpConfig)
class CoCoOp(Method):
    """Conditional prompts (CoCoOp): CoOp's context plus a per-image shift from a meta-network; text tower per image."""

    inputs = "features"
    views, view_use = 10, PER_EPOCH  # one per epoch of the reference's 10
    # val-free by its recipe (train.keep=last): the reference trains a fixed number of epochs and keeps the last
    # no gradient clipping: Dassl's model_backward_and_update is zero_grad, backward, step
    # (KaiyangZhou/Dassl.pytorch@c61a1b570ac6333bd50fb5ae06aea59002fb20bb dassl/engine/trainer.py:290-303); the
    # schedule, 10 epochs and batch 1: KaiyangZhou/CoOp@ff61507c790454bce7c5052c3ac39e60772f1f89
    # configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml:3,15-22 (engine/schedules.py: dassl); its views
    # crop 8-100% of the image, Dassl's RRCROP_SCALE (configs/...ctxv1.yaml:10-13, Dassl dassl/config/defaults.py:40)
    train_defaults = {"keep": "last", "epochs": 10, "batch_size": 1, "schedule": "dassl", "grad_clip": 0.0,
                      "crop_scale": [0.08, 1.0]}

    @classmethod
    def check(cls, config: CoCoOpConfig, bundle, classnames) -> None:
        text_token_embedding(bundle, "cocoop")
        build_prompt_tokens(bundle, classnames, config.context_config())  # the context must fit the text encoder

    def per_class_state(self) -> list[str]:
        """The context and the meta-network serve any classes."""
        return []

    def make_head(self, bundle, templates) -> nn.Module:
        return ConditionalPromptLearner(bundle, self.classnames, self.config)
