"""Full-batch training on cached features, for methods whose papers train that way (LP++, ProLIP).

Each iteration is one optimisation step on the whole training split; validation is scored after every iteration
(a matrix product on cached features). ``train.keep=last`` (these methods' recipe) keeps the last iteration and
reads validation only for the history; ``train.keep=best`` keeps the iteration with the best validation accuracy
(then loss), as the LP++ reference code does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from clipadapt.engine.trainer import FitResult, Trainer
    from clipadapt.methods.base import Method

IN_MEMORY_BYTES = 2**31  # views held in memory (float32, on the device) up to this size; above, read one per iteration
Step = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # (features, labels) -> loss, logits


def split_tensors(trainer: Trainer, split: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A split's cached features and labels on ``device``; a copy, since freshly encoded features are inference
    tensors, which autograd refuses to save."""
    encoded = trainer.features(split)
    return (encoded.features.to(device).float().clone(),
            torch.as_tensor(encoded.labels, dtype=torch.long, device=device))


class TrainingInputs:
    """What each full-batch iteration trains on: the clean cached training features, or with feature views
    (features.views) view ``t mod N`` at iteration t (from 1), as ProLIP's reference cycles its 300 views
    (astra-vision/ProLIP@b43e795cbf0b53a9b0aa83cf4f47d9755896ba6f methods/ProLIP.py:181-185: ``cnt`` is 1 at the first
    iteration and wraps to 0 at the N-th). Views that fit in ``IN_MEMORY_BYTES`` are loaded once; larger grids are
    read from their memory map one view per iteration."""

    def __init__(self, trainer: Trainer, device: torch.device) -> None:
        self.device = device
        self.views = trainer.data.feature_views() if trainer.data.views > 0 else None
        if self.views is None:
            features, self.labels = split_tensors(trainer, "train", device)
            self.count, self._all = 1, features[None]
            return
        self.labels = torch.as_tensor(self.views.labels, dtype=torch.long, device=device)
        self.count = len(self.views)
        fits = self.count * len(self.labels) * self.views.dim * 4 <= IN_MEMORY_BYTES
        self._all = torch.stack([self.views.view(v) for v in range(self.count)]).to(device) if fits else None

    def at(self, iteration: int) -> torch.Tensor:
        """The features of iteration ``iteration`` (from 1)."""
        index = iteration % self.count
        return self._all[index] if self._all is not None else self.views.view(index).to(self.device)


@torch.no_grad()
def score(method: Method, features: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(accuracy, cross-entropy) of the method's logits on these features."""
    with method.evaluating():
        logits = method.classify(features).float()
    return float((logits.argmax(-1) == labels).float().mean()), float(nn.functional.cross_entropy(logits, labels))


def train_full_batch(method: Method, trainer: Trainer, iterations: int, step: Step,
                     keep: str | None = None, log_every: int = 10, inputs: TrainingInputs | None = None) -> FitResult:
    """``iterations`` calls of ``step`` on the whole training split (``inputs``: its features at each iteration,
    default the trainer's: a view per iteration where the run has views); returns the engine's FitResult. ``keep``:
    ``last`` or ``best`` (default: ``train.keep``). ``best`` scores validation after every iteration (a history row
    each); ``last`` only every ``log_every`` iterations and after the last, for the history (0: never)."""
    from clipadapt.engine.trainer import FitResult

    keep = keep or trainer.config.keep
    device = trainer.accelerator.device
    method.to(device)
    inputs = inputs or TrainingInputs(trainer, device)
    train_y = inputs.labels
    validated = trainer.has_validation  # a val-free run on a dataset without one draws no validation curve
    val_x, val_y = split_tensors(trainer, "val", device) if validated else (None, None)
    history, best, best_state = [], None, None
    seconds = 0.0
    for iteration in range(1, iterations + 1):
        started = time.perf_counter()
        method.train()
        loss, logits = step(inputs.at(iteration), train_y)
        seconds += time.perf_counter() - started
        if keep != "best" and (log_every <= 0 or (iteration % log_every and iteration != iterations)):
            continue
        row = {"epoch": iteration, "train_loss": float(loss),
               "train_acc": float((logits.detach().argmax(-1) == train_y).float().mean())}
        if validated:
            row["val_acc"], row["val_loss"] = score(method, val_x, val_y)
        history.append(row)
        if keep == "best" and (best is None or (row["val_acc"], -row["val_loss"]) > (best["val_acc"],
                                                                                    -best["val_loss"])):
            best, best_state = row, method.trainable_state()
    if keep == "best" and best_state is not None:
        method.load_trainable_state(best_state, source="best iteration")
        trainer.record_kept_epoch(best["epoch"], len(history),  # every iteration was scored on validation
                                  {"val_acc": best["val_acc"], "val_loss": best["val_loss"]})
    return FitResult(history=history, best_epoch=best["epoch"] if keep == "best" and best else iterations,
                     train_time_s=seconds, train_images=len(train_y) * iterations)
