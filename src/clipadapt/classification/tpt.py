"""TPT: test-time prompt tuning on each image's augmented views (Shu et al., "Test-Time Prompt Tuning for Zero-Shot
Generalization in Vision-Language Models", NeurIPS 2022; reference code github.com/azshue/TPT at 63ecbac).

Per image of the stream, with no label (``tpt_classification.py:237-310``):

1. the prompt is reset to its initial context, "a photo of a" (``scripts/test_tpt.sh``: ``ctx_init=a_photo_of_a``;
   four context vectors from those words, CoOp's prompt learner: ``methods.coop.PromptLearner``), and so is the
   optimizer's state (``optimizer.load_state_dict(optim_state)``, line 275): each image starts from the same place;
2. the image and 63 augmented views (``batch_size 64``, line 322, minus one; ``data.augmix.augmented_views``: AugMix
   on the fine-grained datasets, plain random resized crops on ImageNet and its variants, lines 171-172: ``tpt.augmix``
   unset makes the same choice by dataset and the run records it);
3. ``tta_steps`` (1, line 331) AdamW steps (lr 5e-3, line 323; torch's defaults otherwise, line 145) minimising the
   entropy of the mean probability (``avg_entropy``, lines 46-51) of the ``selection_p`` (0.1, line 330) most
   confident views (lowest entropy, ``select_confident_samples``, lines 41-44);
4. the answer: the image itself (view 0) with the tuned prompt (line 294).

The reference runs in float16 autocast on a GPU with a GradScaler (lines 62, 149); ours in float32 on any device.
Its views come from NumPy's global generator; ours from a generator seeded by (``seed``, the image's position in the
split), so an image's answer does not depend on the images before it (it resets per image, as the reference), and the
stream order changes nothing but the order of work. Only the CLIP text tower of transformers can be prompted this way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from clipadapt.classification.testtime import VIEW_DATASETS, encoded_views, most_confident
from clipadapt.config import option
from clipadapt.errors import ConfigError
from clipadapt.methods.coop import CoOpConfig, PromptLearner
from clipadapt.methods.towers import text_token_embedding
from clipadapt.models.bundle import ClipBundle

IMAGENET_FAMILY = ("imagenet", *VIEW_DATASETS)  # the reference's one-letter set_ids: I, A, V, R, K


@dataclass
class TptConfig:
    steps: int = option(1, help="prompt-tuning steps per image (tta_steps)")
    lr: float = option(5e-3, help="AdamW learning rate")
    views: int = option(63, help="augmented views per image, besides the image itself (batch_size - 1)")
    selection: float = option(0.1, help="fraction of the most confident views the entropy is taken over "
                                        "(selection_p)")
    init: str = option("a photo of a", help="the prompt's initial context, one vector per token (ctx_init)")
    augmix: bool | None = option(None, help="AugMix views (default, null: as the reference, off on ImageNet and "
                                            "its variants, on elsewhere; resolved by run_test_time, on when a "
                                            "Tpt is built with it unresolved)")
    seed: int = option(0, help="seed of every image's views (with its position in the split)")

    def check(self) -> None:
        if self.steps < 0:
            raise ConfigError(f"tpt.steps must be 0 or more, got {self.steps}")
        if self.views < 1:
            raise ConfigError(f"tpt.views must be at least 1, got {self.views}")
        if not 0 < self.selection <= 1 or int((self.views + 1) * self.selection) < 1:
            raise ConfigError(f"tpt.selection must keep at least one of the {self.views + 1} views, got "
                              f"{self.selection}")
        if not self.init.strip():
            raise ConfigError("tpt.init must be a phrase (the reference's 'a photo of a')")

    def augmix_for(self, dataset: str) -> bool:
        """Whether the views of ``dataset``'s images are AugMix'd (unset: the reference's ``augmix=len(set_id) > 1``,
        ``tpt_classification.py:171-172``, off on ImageNet and its variants A, V2, R, Sketch)."""
        if self.augmix is not None:
            return self.augmix
        return dataset not in IMAGENET_FAMILY


def average_entropy(logits: torch.Tensor) -> torch.Tensor:
    """The entropy of the mean of the rows' probabilities (the reference's ``avg_entropy``)."""
    log_probabilities = logits - logits.logsumexp(dim=-1, keepdim=True)
    mean = log_probabilities.logsumexp(dim=0) - math.log(logits.shape[0])
    mean = torch.clamp(mean, min=torch.finfo(mean.dtype).min)
    return -(mean * mean.exp()).sum(dim=-1)


class Tpt:
    """TPT for one model and class list: ``answer(image, position)`` gives the image's logits after tuning."""

    def __init__(self, bundle: ClipBundle, classnames: list[str], config: TptConfig) -> None:
        config.check()
        text_token_embedding(bundle, "tpt")  # a one-line refusal for a model whose text tower cannot be prompted
        self.bundle, self.config = bundle, config
        self.learner = PromptLearner(bundle, classnames, CoOpConfig(init=config.init, share_prefix=False))
        self.learner.to(bundle.device)
        self.initial = self.learner.ctx.detach().clone()

    @property
    def trainable(self) -> int:
        """The values tuned per image (the context vectors; reset for the next image)."""
        return self.learner.ctx.numel()

    def close(self) -> None:
        """Remove the learner's hook on the model's token embedding (the model may serve others after)."""
        self.learner._hook.remove()

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.learner(features)

    def answer(self, image: Image.Image, position: int) -> torch.Tensor:
        """(classes,) logits of ``image`` (its ``position`` in the split seeds its views) after tuning from the
        initial prompt."""
        config = self.config
        with torch.no_grad():
            self.learner.ctx.copy_(self.initial)
        features = encoded_views(self.bundle, image, config.views, config.augmix is not False, config.seed, position)
        optimizer = torch.optim.AdamW([self.learner.ctx], lr=config.lr)  # a fresh state per image
        selected: torch.Tensor | None = None
        for _ in range(config.steps):
            logits = self.logits(features)
            if selected is None:  # the views are chosen at the first step and kept (lines 68-71)
                selected = most_confident(logits, config.selection)
            loss = average_entropy(logits[selected])
            # the gradient of the context only: the model's own parameters (shared, maybe trainable elsewhere)
            # neither receive a .grad nor need freezing
            (self.learner.ctx.grad,) = torch.autograd.grad(loss, [self.learner.ctx])
            optimizer.step()
        with torch.no_grad():
            return self.logits(features[:1])[0].cpu()


def tpt_stream(bundle: ClipBundle, classnames: list[str], load: Callable[[int], Image.Image], count: int,
               order: np.ndarray, config: TptConfig, on_image: Callable[[], None] | None = None
               ) -> tuple[torch.Tensor, int]:
    """TPT over the stream ``order`` of the ``count`` images ``load(i)`` returns: (count, classes) logits in the
    split's own order, and the number of values tuned per image. ``load`` gives images only: no label reaches the
    method."""
    method = Tpt(bundle, classnames, config)
    out = torch.empty(count, len(classnames))
    try:
        for position in np.asarray(order, dtype=np.int64):
            out[int(position)] = method.answer(load(int(position)), int(position))
            if on_image is not None:
                on_image()
    finally:
        method.close()
    return out, method.trainable
