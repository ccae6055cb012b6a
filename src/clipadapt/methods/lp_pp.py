"""``lp++`` (Huang et al., CVPR 2024, "LP++: A Surprisingly Strong Linear Probe for Few-Shot CLIP").

A linear probe whose class weights blend visual prototypes and the class text embeddings:
``logit_ik = f_i . (w_k + alpha_k t_k)`` on L2-normalised features ``f``, ``t_k`` the zero-shot class embeddings
(frozen), ``w_k`` and ``alpha_k`` learned. Full batch on the cached training features, as the paper's block
coordinate descent with data-driven step sizes; definitions from the reference code
(FereshteShakeri/FewShot-CLIP-Strong-Baseline, ``methods/linear_probe_p2.py``):

* ``w`` starts at the per-class **sums** of the training features (``compute_centroids`` without the division);
  ``alpha`` starts at ``250 x`` the mean over classes of the mean similarity of a class's images to its own text
  embedding (``calculate_init_alpha``: ``250 / shots * shots * centroid``).
* ``w``: SGD with momentum 0.9 at ``lr_w = 4 N / lambda_max(F^T F)`` (N training images, F their features);
  ``alpha``: a plain gradient step at ``lr_alpha = N / (4 max_k sum_i (f_i . t_k)^2)`` every 10 iterations.
  The reference never clears alpha's gradient, so each of its steps uses the sum of every gradient since the start;
  that is kept (``alpha_grad=accumulated``); ``fresh`` uses the last ``alpha_every`` iterations' gradients only.
* 300 iterations (the reference's ``train_epoch``).
* One augmented view of each training image (``features.views=1`` by its recipe): the reference encodes the training
  split once through its random resized crop (0.5, 1) + flip (``main.py:69-74``, ``methods/linear_probe_p2.py:69-79``;
  FereshteShakeri/FewShot-CLIP-Strong-Baseline@f81054f995b060f8348d20e7306e15889b70c786) and trains every iteration
  on those features; validation is on clean images (``tfm=preprocess``). With more views, iteration t uses view
  t mod N (methods/full_batch.py), the start and step sizes the first iteration's view.

* A bias per class, as the reference's ``nn.Linear(D, K, bias=True)`` (``linear_probe_p2.py:96``): its weight is
  replaced by the centroids, its bias keeps ``nn.Linear``'s initialisation, uniform in ``+-1/sqrt(D)``, and trains with
  ``w`` (SGD over ``classifier.parameters()``, ``linear_probe_p2.py:116``). The paper's logit has none
  (``lp_pp.bias=false``). What it chooses on validation: nothing by default (the paper is validation-free;
``train.keep=last``); with ``train.keep=best`` it keeps the iteration with the best validation accuracy, which is
what the reference code reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from clipadapt.config import option
from clipadapt.engine.views import PER_ITERATION
from clipadapt.errors import ConfigError, DataError
from clipadapt.methods.base import Method, freeze, register_method
from clipadapt.methods.full_batch import TrainingInputs, train_full_batch
from clipadapt.methods.heads import build_head

if TYPE_CHECKING:
    from clipadapt.engine.trainer import FitResult, Trainer

ALPHA_GRADS = ("accumulated", "fresh")
ALPHA_INIT_SCALE = 250.0  # the reference's constant in calculate_init_alpha


@dataclass
class LpPlusPlusConfig:
    iterations: int = option(300, help="full-batch iterations (the reference's train_epoch)")
    alpha_every: int = option(10, help="update the blending ratios every this many iterations")
    alpha_grad: str = option("accumulated", help="accumulated (the reference: alpha's gradient is never cleared) "
                                                 "or fresh (the gradients since its last update)")
    momentum: float = option(0.9, help="SGD momentum of the visual prototypes")
    bias: bool = option(True, help="a trained bias per class, as the reference's nn.Linear (false: the paper's "
                                   "logit, without)")

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.alpha_every < 1:
            raise ConfigError(f"lp_pp.iterations and lp_pp.alpha_every must be >= 1, got {self.iterations}, "
                              f"{self.alpha_every}")
        if self.alpha_grad not in ALPHA_GRADS:
            raise ConfigError(f"unknown lp_pp.alpha_grad '{self.alpha_grad}'; valid choices: {', '.join(ALPHA_GRADS)}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"lp_pp.momentum must be in [0, 1), got {self.momentum}")


def step_sizes(features: torch.Tensor, text: torch.Tensor) -> tuple[float, float]:
    """``(lr_w, lr_alpha)``: the reference's Lipschitz-based step sizes for normalised features (N, D) and
    normalised class embeddings (K, D)."""
    n = features.shape[0]
    f = features.double()
    lr_w = 4 * n / float(torch.linalg.eigvalsh(f.T @ f).max())
    lr_alpha = n / (4 * float(((f @ text.double().T) ** 2).sum(dim=0).max()))
    return lr_w, lr_alpha


def initial_state(features: torch.Tensor, labels: torch.Tensor, text: torch.Tensor,
                  num_classes: int) -> tuple[torch.Tensor, float]:
    """``(prototypes (K, D), alpha)``: per-class feature sums and ``250 x`` the mean own-class text similarity."""
    counts = torch.bincount(labels, minlength=num_classes)
    present = counts > 0
    if not present.any():
        raise DataError("lp++ needs training images")
    sums = torch.zeros(num_classes, features.shape[1], dtype=features.dtype, device=features.device)
    sums.index_add_(0, labels, features)
    own = (features * text[labels]).sum(dim=1)  # f_i . t_{y_i}
    per_class = torch.zeros(num_classes, dtype=own.dtype, device=own.device).index_add_(0, labels, own)
    # over the classes with training images, as the reference's centroids (classes = the labels present)
    return sums, ALPHA_INIT_SCALE * float((per_class[present] / counts[present]).mean())


@register_method("lp++", LpPlusPlusConfig, section="lp_pp")
class LpPlusPlus(Method):
    """Linear probe blending visual prototypes with text embeddings by learned class-wise ratios (full batch)."""

    inputs = "features"
    # text weights from the dataset's CoOp prompt (seven templates on ImageNet):
    # FereshteShakeri/FewShot-CLIP-Strong-Baseline@f81054f995b060f8348d20e7306e15889b70c786 main.py:78-79
    train_defaults = {"keep": "last", "head_templates": "coop"}
    views, view_use = 1, PER_ITERATION  # the reference's one augmented pass over the training images
    gradient_lr = 1e-3  # only for gradient steps through the shared interface; fit() uses the paper's step sizes

    def __init__(self, bundle, classnames, config: LpPlusPlusConfig, templates) -> None:
        super().__init__(bundle, classnames, config, templates)
        freeze(self.head)
        self.prototypes = nn.Parameter(torch.zeros(len(self.classnames), bundle.embed_dim))
        self.alpha = nn.Parameter(torch.ones(len(self.classnames)))
        # nn.Linear's own bias initialisation, as the reference's classifier (linear_probe_p2.py:96)
        bound = 1 / bundle.embed_dim ** 0.5
        self.bias = nn.Parameter(torch.empty(len(self.classnames)).uniform_(-bound, bound),
                                 requires_grad=config.bias)

    def make_head(self, bundle, templates) -> nn.Module:
        return build_head("zeroshot", bundle, self.classnames, templates)

    def text_embeddings(self) -> torch.Tensor:
        return nn.functional.normalize(self.head.weight, dim=-1)

    def classify(self, inputs: torch.Tensor) -> torch.Tensor:
        f = nn.functional.normalize(self.image_features(inputs), dim=-1)
        logits = f @ self.prototypes.to(f.dtype).T + self.alpha.to(f.dtype) * (f @ self.text_embeddings().to(f.dtype).T)
        return logits + self.bias.to(f.dtype) if self.config.bias else logits

    def param_groups(self):
        return [{"name": "lp++", "params": list(self.trainable_parameters().values()), "lr": self.gradient_lr}]

    def per_class_state(self) -> list[str]:
        """A prototype, a blending ratio and a bias per class."""
        return ["prototypes", "alpha"] + (["bias"] if self.config.bias else [])

    def initialise(self, trainer: Trainer, inputs: TrainingInputs | None = None) -> tuple[float, float]:
        """The paper's data-driven start; returns the step sizes ``(lr_w, lr_alpha)``."""
        inputs = inputs or TrainingInputs(trainer, self.prototypes.device)
        features, labels = nn.functional.normalize(inputs.at(1), dim=-1), inputs.labels
        text = self.text_embeddings().detach()
        prototypes, alpha = initial_state(features, labels, text, len(self.classnames))
        with torch.no_grad():
            self.prototypes.copy_(prototypes)
            self.alpha.fill_(alpha)
        return step_sizes(features, text)

    def fit(self, trainer: Trainer) -> FitResult:
        self.to(trainer.accelerator.device)
        inputs = TrainingInputs(trainer, self.prototypes.device)
        lr_w, lr_alpha = self.initialise(trainer, inputs)
        config = self.config
        weights = [self.prototypes, self.bias] if config.bias else [self.prototypes]  # the reference's nn.Linear
        optimizer = torch.optim.SGD(weights, lr=lr_w, momentum=config.momentum)
        self.alpha.grad = None
        count = [0]

        def step(features: torch.Tensor, labels: torch.Tensor):
            logits = self.classify(features)
            loss = nn.functional.cross_entropy(logits, labels)
            optimizer.zero_grad()  # the prototypes' gradient only: alpha's accumulates
            loss.backward()
            optimizer.step()
            count[0] += 1
            if count[0] % config.alpha_every == 0:
                with torch.no_grad():
                    self.alpha -= lr_alpha * self.alpha.grad
                if config.alpha_grad == "fresh":
                    self.alpha.grad = None
            return loss.detach(), logits.detach()

        fit = train_full_batch(self, trainer, config.iterations, step, inputs=inputs)
        self.alpha.grad = None
        fit.details = {**fit.details, "lr_w": lr_w, "lr_alpha": lr_alpha}  # from the training data, not chosen
        return fit
