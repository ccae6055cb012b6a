"""``prolip`` and ``prolip-val`` (Fahes et al., "CLIP's Visual Embedding Projector is a Few-shot Cornucopia";
first titled "Fine-tuning CLIP's Last Visual Projector").

Only the image tower's final projection ``W`` (transformers' ``visual_projection``, a Linear without bias) trains,
from its pretrained value ``W0``, under ``cross-entropy + lambda ||W - W0||_F^2``; the classifier is the frozen
zero-shot one. It runs on cached **pooled** features (the tower's output before the projection), so a run is one
small matrix product per step. Definitions from the reference code (astra-vision/ProLIP, ``methods/ProLIP.py``):
full batch, Adam (eps 1e-4), cosine annealing to 0 over 300 iterations, no warmup, no weight decay,
``lambda = 1 / N`` for N shots (``lambda_funct_1_N``) and lr 1e-5 (``configs/base.yaml``'s ``lr_v``) in the
validation-free setting.

``prolip`` chooses nothing on validation (the paper's validation-free setting: the last iteration is kept).
``prolip-val`` trains every (lr, lambda) of the reference grid (lr 1e-2 ... 1e-8, lambda 10 ... 1e-4 and 0) and keeps
the one with the best validation accuracy (then loss), as the reference's ``search_lr``. Each iteration trains on
another augmented view of the training images, as the reference: 300 views (``configs/base.yaml:22`` ``aug_views``,
random resized crop (0.5, 1) + flip, ``main.py:72-74,110-112``), iteration t on view t mod 300
(``methods/ProLIP.py:181-185``; astra-vision/ProLIP@b43e795cbf0b53a9b0aa83cf4f47d9755896ba6f). Ours are the cached
views of the pooled kind (engine/views.py, ``features.views``); validation runs on the clean images, as the
reference's ``val_loader`` (``tfm=preprocess``). The logit scale is the model's own (CLIP's 100 in the reference).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from clipadapt.config import option
from clipadapt.engine.views import PER_ITERATION
from clipadapt.errors import ConfigError
from clipadapt.methods.base import Method, MethodConfig, freeze, register_method
from clipadapt.methods.full_batch import TrainingInputs, split_tensors, train_full_batch
from clipadapt.models.bundle import ClipBundle

if TYPE_CHECKING:
    from clipadapt.engine.trainer import FitResult, Trainer

REFERENCE_LRS = [1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8]
REFERENCE_LAMBDAS = [10.0, 1.0, 0.1, 0.01, 0.001, 0.0001, 0.0]


@dataclass
class ProlipConfig(MethodConfig):
    lr: float = option(1e-5, help="Adam learning rate of the projection (the reference's validation-free lr_v)")
    lam: float = option(-1.0, help="weight of ||W - W0||_F^2; negative: 1 / N for N training images per class "
                                   "(the paper's validation-free choice)")
    iterations: int = option(300, help="full-batch iterations (cosine annealing to 0 over them)")
    eps: float = option(1e-4, help="Adam epsilon (the reference's)")
    lrs: list[float] = option(REFERENCE_LRS, help="prolip-val: learning rates tried on validation")
    lams: list[float] = option(REFERENCE_LAMBDAS, help="prolip-val: lambdas tried on validation")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.head != "zeroshot":
            raise ConfigError(f"prolip.head must be zeroshot (the classifier is the frozen zero-shot one), "
                              f"got {self.head}")
        if self.iterations < 1 or self.eps <= 0:
            raise ConfigError(f"prolip.iterations must be >= 1 and prolip.eps > 0, got {self.iterations}, {self.eps}")
        if not self.lrs or not self.lams or min(self.lrs) <= 0 or min(self.lams) < 0:
            raise ConfigError("prolip.lrs must be positive and prolip.lams >= 0, neither empty")


def image_projection(bundle) -> nn.Module | None:
    return bundle.image_projection_fn(bundle.model)


@register_method("prolip", ProlipConfig)
class Prolip(Method):
    """Fine-tunes only the image tower's final projection, regularised towards its start (val-free, lambda = 1/N)."""

    inputs = "features"
    feature_kind = "pooled"
    # the frozen text classifier from the dataset's CoOp prompt (seven templates on ImageNet):
    # astra-vision/ProLIP@b43e795cbf0b53a9b0aa83cf4f47d9755896ba6f main.py:81-82
    train_defaults = {"keep": "last", "patience": 0, "head_templates": "coop"}
    views, view_use = 300, PER_ITERATION  # the reference's aug_views
    search = False

    @classmethod
    def check(cls, config, bundle, classnames) -> None:
        projection = image_projection(bundle)
        if bundle.pooled_image_features_fn is None or not isinstance(projection, nn.Linear) or \
                projection.bias is not None:
            raise ConfigError(f"{cls.name} trains the image tower's final projection (a Linear without bias, "
                              f"visual_projection in transformers' CLIP); model '{bundle.spec}' has none apart")

    def __init__(self, bundle, classnames, config: ProlipConfig, templates) -> None:
        super().__init__(bundle, classnames, config, templates)
        freeze(self.head)
        pretrained = image_projection(bundle)
        self.projection = nn.Linear(pretrained.in_features, pretrained.out_features, bias=False)
        with torch.no_grad():
            self.projection.weight.copy_(pretrained.weight.float())
        self.register_buffer("initial", pretrained.weight.detach().float().clone(), persistent=False)
        self.lam = config.lam if config.lam >= 0 else None  # None: 1 / N, known once the training split is

    @property
    def feature_dim(self) -> int:
        return self.projection.in_features

    def classify(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.projection(inputs.to(self.projection.weight.dtype)))

    def regulariser(self) -> torch.Tensor:
        return ((self.projection.weight - self.initial) ** 2).sum()

    changes_towers = True  # the image tower's final projection

    @contextmanager
    def adapted_towers(self) -> Iterator[ClipBundle]:
        """The image tower with the trained projection in place of the pretrained one; the text tower as it was."""
        bundle, projection = self.bundle, self.projection

        def features(model, pixels):
            return projection(bundle.pooled_image_features_fn(model, pixels).to(projection.weight.dtype))

        with self.evaluating():
            yield dataclasses.replace(bundle, image_features_fn=features)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = super().forward(batch)
        if "loss" in out:
            out["loss"] = out["loss"] + (self.lam or 0.0) * self.regulariser()
        return out

    def param_groups(self):
        return [{"name": "projection", "params": [self.projection.weight], "lr": self.config.lr}]

    def per_class_state(self) -> list[str]:
        """None: the projection is shared by all classes, so a run classifies new classes too."""
        return []

    # -- fitting ------------------------------------------------------------------------------------------
    def shots_lambda(self, inputs: TrainingInputs) -> float:
        """1 / N, N the mean number of training images per class that has any (the shots of a few-shot split, also
        when the classifier names classes without training images, as world:shapes-novel's 48; views do not count)."""
        labels = inputs.labels.cpu().numpy()
        return len(np.unique(labels)) / max(len(labels), 1)

    def train_once(self, trainer: Trainer, lr: float, lam: float, keep: str | None = None,
                   log_every: int = 10, inputs: TrainingInputs | None = None) -> FitResult:
        """From W0: the reference's full-batch Adam with cosine annealing, at this lr and lambda."""
        with torch.no_grad():
            self.projection.weight.copy_(self.initial)
        self.lam = lam
        optimizer = torch.optim.Adam([self.projection.weight], lr=lr, eps=self.config.eps)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, self.config.iterations)

        def step(features: torch.Tensor, labels: torch.Tensor):
            out = self({"inputs": features, "labels": labels})
            optimizer.zero_grad()
            out["loss"].backward()
            optimizer.step()
            scheduler.step()
            return out["loss"].detach(), out["logits"].detach()

        return train_full_batch(self, trainer, self.config.iterations, step, keep, log_every, inputs)

    def fit(self, trainer: Trainer) -> FitResult:
        self.to(trainer.accelerator.device)
        inputs = TrainingInputs(trainer, self.projection.weight.device)  # the views, loaded once for every cell
        lam = self.config.lam if self.config.lam >= 0 else self.shots_lambda(inputs)
        if not self.search:
            fit = self.train_once(trainer, self.config.lr, lam, inputs=inputs)
            fit.details = {**fit.details, "lr": self.config.lr, "lambda": lam}
            return fit
        return self.grid_search(trainer, inputs)

    def grid_search(self, trainer: Trainer, inputs: TrainingInputs) -> FitResult:
        """Every (lr, lambda) cell trained from W0 and scored once on val at its end; the trainer chooses the cell
        (accuracy, then loss), which is then trained again from W0 (the same weights: a cell is deterministic), so no
        cell's weights are held while the others train. Under train.keep=best that last training chooses its best
        iteration on val too, recorded after the cell; the grid's own trainings record nothing."""
        started = time.perf_counter()
        if len(self.config.lrs) * len(self.config.lams) == 1:  # one cell is no choice: it needs no validation split
            fit = self.train_once(trainer, self.config.lrs[0], self.config.lams[0], inputs=inputs)
            fit.details = {**fit.details, "lr": self.config.lrs[0], "lambda": self.config.lams[0]}
            return fit
        val_x, val_y = split_tensors(trainer, "val", self.projection.weight.device)
        cells = []
        with trainer.selections.discarded():  # the cells' own choices; the chosen cell's second training records
            for lr in self.config.lrs:
                for lam in self.config.lams:
                    self.train_once(trainer, lr, lam, log_every=0, inputs=inputs)  # scored once, at its end
                    val_acc, neg_loss = _val_scores(self, val_x, val_y)
                    cells.append({"step": len(cells), "lr": lr, "lambda": lam, "val_acc": val_acc,
                                  "val_loss": -neg_loss})
        best = trainer.choose("lr,lambda", cells, lambda c: (c["val_acc"], -c["val_loss"]),
                              value=lambda c: {"lr": c["lr"], "lambda": c["lambda"]},
                              scores=lambda c: {"val_acc": c["val_acc"], "val_loss": c["val_loss"]})
        fit = self.train_once(trainer, best["lr"], best["lambda"], log_every=0, inputs=inputs)
        fit.history = cells  # one row per cell of the grid, as Tip-Adapter's search writes it
        fit.train_time_s = time.perf_counter() - started
        fit.train_images *= len(cells) + 1
        return fit


def _val_scores(method: Method, features: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    from clipadapt.methods.full_batch import score

    accuracy, loss = score(method, features, labels)
    return accuracy, -loss


@register_method("prolip-val", ProlipConfig, section="prolip")
class ProlipVal(Prolip):
    """ProLIP with lr and lambda chosen on validation over the reference grid (49 runs of 300 full-batch steps)."""

    search = True

    @classmethod
    def validation_shots(cls, shots: int) -> int:
        """K validation images per class, as the reference's search validates (astra-vision/ProLIP@
        b43e795cbf0b53a9b0aa83cf4f47d9755896ba6f main.py:84-89: ``random.seed(seed)``, then
        ``generate_fewshot_dataset_(shots, "train")`` and ``(shots, "val")``, datasets/oxford_pets.py:127-135), drawn
        after the training shots from the same stream as ours. Where ours differs: the reference's copy of Dassl's
        function repeats the images of a class with fewer than K (datasets/utils.py:211 ``repeat=True``, 241-242)
        where ours keeps them once (CoOp's ``repeat=False``, so the training images stay every method's); its
        ImageNet draws 2K per class from train and splits them K/K (datasets/imagenet.py:206-234)."""
        return shots

    @classmethod
    def planned_choices(cls, config: ProlipConfig, train) -> tuple[str, ...]:
        cells = len(config.lrs) * len(config.lams)  # the cell, then (keep=best) the chosen cell's best iteration
        return (("lr,lambda",) if cells > 1 else ()) + super().planned_choices(config, train)
