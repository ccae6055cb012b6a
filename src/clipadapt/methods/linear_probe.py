"""``linear-probe``: logistic regression on frozen image features (CLIP paper, appendix A.3).

scikit-learn's L-BFGS solver on cached, L2-normalised features. The regularisation strength C is chosen on the
validation split by the paper's parametric search: start with C = 10^-6, 10^-4, ..., 10^6, then repeatedly halve the
step around the best value until it reaches 8 steps per decade. No gradient training of the backbone.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from clipadapt.config import option
from clipadapt.errors import ConfigError, DataError
from clipadapt.methods.base import Method, register_method
from clipadapt.methods.heads import LinearHead, build_head
from clipadapt.progress import progress_bar

if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegression

    from clipadapt.engine.trainer import FitResult, Trainer

ABSENT_CLASS_BIAS = -1e4  # classes with no training image can never win


@dataclass
class LinearProbeConfig:
    c_min_exp: int = option(-6, help="smallest C of the initial grid, as a power of 10")
    c_max_exp: int = option(6, help="largest C of the initial grid, as a power of 10")
    steps_per_decade: int = option(8, help="resolution the search refines to around the best C")
    max_iter: int = option(1000, help="L-BFGS iterations per fit")
    warm_start: bool = option(True, help="start each fit from the fit at the nearest C tried (faster)")

    def __post_init__(self) -> None:
        if self.c_min_exp >= self.c_max_exp:
            raise ConfigError(f"linear_probe.c_min_exp ({self.c_min_exp}) must be below c_max_exp ({self.c_max_exp})")
        if self.steps_per_decade <= 0 or self.max_iter <= 0:
            raise ConfigError("linear_probe.steps_per_decade and linear_probe.max_iter must be positive")


@dataclass
class ProbeFit:
    weight: np.ndarray  # (classes, dim), for unit-norm features
    bias: np.ndarray  # (classes,)
    c: float
    sweep: list[dict]


def _fit(c: float, x: np.ndarray, y: np.ndarray, max_iter: int,
         start: LogisticRegression | None = None) -> LogisticRegression:
    """L-BFGS fit; ``start`` (the fit at the nearest C) warm-starts it, which follows the regularisation path
    in a fraction of the iterations of a cold start."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, max_iter=max_iter, solver="lbfgs", warm_start=start is not None)
    if start is not None:
        model.coef_, model.intercept_ = start.coef_.copy(), start.intercept_.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        # one or two shots per class: sklearn warns that many classes for few samples may be a regression target
        warnings.filterwarnings("ignore", message="The number of unique classes is greater than 50%")
        return model.fit(x, y)


def _full_weights(model: LogisticRegression, num_classes: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    weight = np.zeros((num_classes, dim), dtype=np.float32)
    bias = np.full(num_classes, ABSENT_CLASS_BIAS, dtype=np.float32)
    classes = model.classes_.astype(int)
    if len(classes) == 2:  # binary problems store one row: p(class 1) = sigmoid(w.x + b) = softmax over (0, w.x + b)
        weight[classes[1]], bias[classes[1]] = model.coef_[0], model.intercept_[0]
        bias[classes[0]] = 0.0
    else:
        weight[classes], bias[classes] = model.coef_, model.intercept_
    return weight, bias


def sweep_logistic_regression(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                              num_classes: int, config: LinearProbeConfig | None = None,
                              choose: Callable[[Sequence[float], Callable], float] | None = None) -> ProbeFit:
    """Fit on train for each C of the search, score on val (accuracy, then log-loss), keep the best. ``choose``
    makes the final choice among the exponents tried, given their score (default: the best, the first among
    equals); ``fit_probe_head`` passes the trainer's, which records it."""
    config = config or LinearProbeConfig()
    if len(np.unique(train_y)) < 2:
        raise DataError("a linear probe needs training images of at least two classes")
    tried: dict[float, tuple[float, float, LogisticRegression]] = {}

    def score(exponent: float) -> tuple[float, float]:
        if exponent not in tried:
            nearest = min(tried, key=lambda e: abs(e - exponent), default=None)
            start = tried[nearest][2] if nearest is not None and config.warm_start else None
            model = _fit(10.0 ** exponent, train_x, train_y, config.max_iter, start)
            probs = np.zeros((len(val_y), num_classes))
            probs[:, model.classes_.astype(int)] = model.predict_proba(val_x)
            accuracy = float((probs.argmax(1) == val_y).mean())
            loss = float(-np.log(np.clip(probs[np.arange(len(val_y)), val_y], 1e-12, 1)).mean())
            tried[exponent] = (accuracy, -loss, model)
            advance()
        return tried[exponent][:2]

    grid = list(range(config.c_min_exp, config.c_max_exp + 1, 2))
    refinements = int(np.ceil(np.log2(2 * config.steps_per_decade)))
    with progress_bar("linear probe: C sweep", total=len(grid) + 2 * refinements, unit="fits") as advance:
        best = max(grid, key=score)
        step = 2.0
        while step > 1.0 / config.steps_per_decade:
            step /= 2
            candidates = [best] + [e for e in (best - step, best + step) if
                                   config.c_min_exp - 1 <= e <= config.c_max_exp + 1]
            best = max(candidates, key=score)
    choose = choose or (lambda candidates, key: max(candidates, key=key))
    best = choose(list(tried), lambda e: tried[e][:2])  # over everything tried, in case refinement wandered
    weight, bias = _full_weights(tried[best][2], num_classes, train_x.shape[1])
    sweep = [{"C": 10.0 ** e, "val_acc": tried[e][0], "val_loss": -tried[e][1]} for e in sorted(tried)]
    return ProbeFit(weight, bias, 10.0 ** best, sweep)


def fit_probe_head(head: LinearHead, trainer: Trainer, num_classes: int,
                   config: LinearProbeConfig | None = None) -> ProbeFit:
    """Fit a logistic regression on the cached train features (C chosen on val) and load it into ``head``."""
    train, val = trainer.features("train"), trainer.features("val")

    def choose(exponents: Sequence[float], score: Callable) -> float:
        return trainer.choose("C", exponents, score, value=lambda e: 10.0 ** e,
                              scores=lambda e: {"val_acc": score(e)[0], "val_loss": -score(e)[1]})

    probe = sweep_logistic_regression(train.features.numpy(), train.labels, val.features.numpy(), val.labels,
                                      num_classes, config, choose)
    head.set_weights(torch.from_numpy(probe.weight), torch.from_numpy(probe.bias))
    return probe


@register_method("linear-probe", LinearProbeConfig)
class LinearProbe(Method):
    """Logistic regression (L-BFGS) on frozen features, C swept on validation (CLIP paper protocol)."""

    export_refusal = None  # its changes are CLIP weights, its classifier the head

    inputs = "features"
    gradient_lr = 1e-3  # only for gradient steps through the shared interface; fit() solves with L-BFGS

    @classmethod
    def planned_choices(cls, config: LinearProbeConfig, train) -> tuple[str, ...]:
        return ("C",)  # the grid always holds several values (c_min_exp < c_max_exp)

    def make_head(self, bundle, templates):
        return build_head("linear", bundle, self.classnames, templates)

    def param_groups(self):
        return [{"name": "head", "params": list(self.trainable_parameters().values()), "lr": self.gradient_lr}]

    def fit(self, trainer: Trainer) -> FitResult:
        from clipadapt.engine.trainer import FitResult

        start = time.perf_counter()
        probe = fit_probe_head(self.head, trainer, len(self.classnames), self.config)
        train_images = len(trainer.features("train").labels)
        elapsed = time.perf_counter() - start
        history = [{"step": i, "C": row["C"], "val_loss": row["val_loss"], "val_acc": row["val_acc"]}
                   for i, row in enumerate(probe.sweep)]
        best_step = next(i for i, row in enumerate(probe.sweep) if row["C"] == probe.c)
        return FitResult(history=history, best_epoch=best_step, train_time_s=elapsed,
                         train_images=train_images * len(probe.sweep),
                         details={"C": probe.c})
