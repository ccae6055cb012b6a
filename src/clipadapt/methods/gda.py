"""``gda`` (Wang et al., ICLR 2024, "A Hard-to-Beat Baseline for Training-free CLIP-based Adaptation").

Gaussian discriminant analysis on the cached, L2-normalised training features: class means ``mu_c``, one covariance
shared by all classes, and the Bayes classifier it implies, which is linear:
``w_c = Sigma^-1 mu_c``, ``b_c = log p_c - mu_c^T Sigma^-1 mu_c / 2`` with uniform priors ``p_c = 1 / K``. Its
logits are added to the zero-shot logits: ``zero-shot + alpha' (f w^T + b)``.

The precision is the reference code's (mrflogs/ICLR24, ``main_few_shots.py``) shrinkage estimate:
``Sigma^-1 = D ((N - 1) S + tr(S) I)^+`` with ``S`` the covariance of the class-centred features (N of them, D
wide) and ``^+`` the pseudo-inverse. ``alpha`` is chosen on the **validation** split over the reference grid
(1e-4 ... 100, one per decade). ``alpha' = alpha * scale / 100``, as in Tip-Adapter here: the reference adds
``alpha`` times the GDA logits to ``100 * cos``, so scaling by the model's own logit scale keeps the balance
for models whose scale is not CLIP's 100 (identical for CLIP). Nothing is trained: the classifier is state.

The statistics are estimated over augmented views of the training images, as the reference: 10 views
(``configs/few_shots/*.yaml:10`` ``augment_epoch: 10``) of random resized crop (0.5, 1) + flip
(``main_few_shots.py:24-29``), every view a sample (``main_few_shots.py:45-60``: the means over all views of a class, N
in ``(N - 1) S`` counting views; mrflogs/ICLR24@560fe211700964c915442ff98dbe47dd09656a35). Ours are the cached views
(engine/views.py, ``features.views``, default 10). Without views a 1-shot split has no within-class scatter, so the
precision is 0 and GDA returns zero-shot exactly; with views it does not. The reference's ImageNet loader crops with
(0.08, 1) (``datasets/imagenet.py:210``); ours takes ``train.crop_scale``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from clipadapt.config import option
from clipadapt.engine.views import FeatureViews
from clipadapt.errors import ConfigError, DataError
from clipadapt.methods.base import Method, freeze, register_method
from clipadapt.methods.heads import build_head

if TYPE_CHECKING:
    from clipadapt.engine.trainer import FitResult, Trainer

GDA_STATE = ("weight", "bias", "alpha")
ABSENT_CLASS_BIAS = -1e4  # the linear probe's: classes without training images
REFERENCE_ALPHAS = [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0]


@dataclass
class GdaConfig:
    alphas: list[float] = option(REFERENCE_ALPHAS, help="weights of the GDA logits tried on the validation split "
                                                        "(the reference grid)")
    search: bool = option(True, help="choose alpha on the validation split; false: use alpha as given")
    alpha: float = option(1.0, help="weight of the GDA logits when search=false (0: zero-shot exactly)")

    def __post_init__(self) -> None:
        if self.alpha < 0 or any(a < 0 for a in self.alphas):
            raise ConfigError(f"gda.alpha and gda.alphas must be >= 0, got {self.alpha}, {self.alphas}")
        if self.search and not self.alphas:
            raise ConfigError("gda.alphas must not be empty when gda.search=true")


def gda_classifier(features: torch.Tensor, labels: torch.Tensor,
                   num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight (K, D), bias (K,))`` of the shared-covariance Gaussian classifier, uniform priors, computed in
    float64 as the reference code estimates it."""
    x = features.double()
    counts = torch.bincount(labels, minlength=num_classes)
    present = counts > 0
    if len(labels) < 2 or int(present.sum()) < 2:
        raise DataError(f"gda needs training images of at least two classes, got {len(labels)} images of "
                        f"{int(present.sum())}")
    means = torch.zeros(num_classes, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, labels, x)
    means /= counts.clamp(min=1).unsqueeze(1).to(x.dtype)
    centred = x - means[labels]
    covariance = centred.T.cov()
    dim = x.shape[1]
    precision = dim * torch.linalg.pinv((len(labels) - 1) * covariance
                                        + covariance.trace() * torch.eye(dim, dtype=x.dtype, device=x.device))
    weight = means @ precision  # precision is symmetric: rows are Sigma^-1 mu_c
    bias = math.log(1.0 / int(present.sum())) - 0.5 * (weight * means).sum(dim=1)
    # a class without training images has no mean: as in the linear probe, it can never win through this term
    bias[~present] = ABSENT_CLASS_BIAS
    return weight.float(), bias.float()


@register_method("gda", GdaConfig)
class Gda(Method):
    """Gaussian discriminant analysis on cached features added to zero-shot (training-free); alpha chosen on val."""

    inputs = "features"
    # the zero-shot classifier from the dataset's CoOp prompt (seven templates on ImageNet): clip_classifier(
    # dataset.classnames, dataset.template, ...) at mrflogs/ICLR24@560fe211700964c915442ff98dbe47dd09656a35
    # main_few_shots.py:139
    train_defaults = {"head_templates": "coop"}
    views, view_use = 10, "statistics over every view (class means, shared covariance; N counts views)"

    @classmethod
    def planned_choices(cls, config: GdaConfig, train) -> tuple[str, ...]:
        return ("alpha",) if config.search and len(config.alphas) > 1 else ()

    def __init__(self, bundle, classnames, config: GdaConfig, templates) -> None:
        super().__init__(bundle, classnames, config, templates)
        freeze(self.head)
        self.register_buffer("weight", torch.zeros(len(self.classnames), bundle.embed_dim))
        self.register_buffer("bias", torch.zeros(len(self.classnames)))
        self.register_buffer("alpha", torch.tensor(float(config.alpha)))
        self.chosen: dict = {}

    def make_head(self, bundle, templates) -> nn.Module:
        return build_head("zeroshot", bundle, self.classnames, templates)

    def param_groups(self):
        return [{"name": "none", "params": [], "lr": 0.0}]  # nothing trains

    # -- the classifier -----------------------------------------------------------------------------------
    def state_from_features(self, features: torch.Tensor, labels) -> None:
        """Class means and the shared covariance of the training features (normalised)."""
        x = nn.functional.normalize(features.float(), dim=-1).to(self.weight.device)
        y = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=x.device)
        self.weight, self.bias = gda_classifier(x, y, len(self.classnames))

    def gda_logits(self, features: torch.Tensor) -> torch.Tensor:
        x = nn.functional.normalize(features, dim=-1)
        return x @ self.weight.to(x.dtype).T + self.bias.to(x.dtype)

    def blend(self, zero_shot: torch.Tensor, gda: torch.Tensor, alpha) -> torch.Tensor:
        return zero_shot + (alpha * self.head.scale / 100.0) * gda

    def classify(self, inputs: torch.Tensor) -> torch.Tensor:
        features = self.image_features(inputs)
        return self.blend(self.head(features), self.gda_logits(features), self.alpha)

    # -- fitting ------------------------------------------------------------------------------------------
    def prepare(self, trainer: Trainer) -> None:
        train = training_samples(trainer)
        self.state_from_features(*train)

    @torch.no_grad()
    def search(self, trainer: Trainer) -> list[dict]:
        """Every alpha of the grid scored on val; the trainer chooses the best (accuracy, then loss)."""
        val = trainer.features("val")
        features = val.features.to(self.weight.device).float()
        labels = torch.as_tensor(val.labels, device=features.device)
        with self.evaluating():
            zero_shot, gda = self.head(features).float(), self.gda_logits(features).float()
        rows = []
        for alpha in self.config.alphas:
            logits = self.blend(zero_shot, gda, alpha)
            rows.append({"step": len(rows), "alpha": float(alpha),
                         "val_acc": float((logits.argmax(-1) == labels).float().mean()),
                         "val_loss": float(nn.functional.cross_entropy(logits, labels))})
        best = trainer.choose("alpha", rows, lambda r: (r["val_acc"], -r["val_loss"]), value=lambda r: r["alpha"],
                              scores=lambda r: {"val_acc": r["val_acc"], "val_loss": r["val_loss"]})
        self.alpha.fill_(best["alpha"])
        self.chosen = best
        return rows

    def fit(self, trainer: Trainer) -> FitResult:
        from clipadapt.engine.trainer import FitResult

        start = time.perf_counter()
        self.to(trainer.accelerator.device)
        self.prepare(trainer)
        rows = self.search(trainer) if self.config.search else []
        return FitResult(history=rows, best_epoch=self.chosen.get("step", 0),
                         train_time_s=time.perf_counter() - start,
                         train_images=trainer.data.num_items("features", "train") * max(trainer.data.views, 1),
                         details={"alpha": self.chosen.get("alpha", float(self.config.alpha))})  # as given

    # -- weights: the classifier is state, not trained weights ----------------------------------------------
    def per_class_state(self) -> list[str]:
        """One weight vector and bias per training class."""
        return ["weight", "bias"]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight.clone(), "bias": self.bias.clone(), "alpha": self.alpha.clone()}

    def load_trainable_state(self, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        if set(state) != set(GDA_STATE):
            raise ConfigError(f"{source} does not fit this {self.name} model: expected {', '.join(GDA_STATE)}, "
                              f"got {', '.join(sorted(state))}")
        if state["weight"].shape != self.weight.shape:
            raise ConfigError(f"{source} does not fit this model: classifier of shape "
                              f"{tuple(state['weight'].shape)}, expected {tuple(self.weight.shape)}")
        with torch.no_grad():
            for name in GDA_STATE:
                getattr(self, name).copy_(state[name])


def training_samples(trainer: Trainer) -> tuple[torch.Tensor, np.ndarray]:
    """The samples the statistics are estimated from: every view of every training image where the run has views
    (views x images), else the clean cached features."""
    if trainer.data.views > 0:
        views: FeatureViews = trainer.data.feature_views()
        return views.stacked()
    train = trainer.features("train")
    return train.features, train.labels
