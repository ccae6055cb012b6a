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

Step = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # (features, labels) -> loss, logits


def split_tensors(trainer: Trainer, split: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A split's cached features and labels on ``device``; a copy, since freshly encoded features are inference
    tensors, which autograd refuses to save."""
    encoded = trainer.features(split)
    return (encoded.features.to(device).float().clone(),
            torch.as_tensor(encoded.labels, dtype=torch.long, device=device))


@torch.no_grad()
def score(method: Method, features: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(accuracy, cross-entropy) of the method's logits on these features."""
    with method.evaluating():
        logits = method.classify(features).float()
    return float((logits.argmax(-1) == labels).float().mean()), float(nn.functional.cross_entropy(logits, labels))


def train_full_batch(method: Method, trainer: Trainer, iterations: int, step: Step,
                     keep: str | None = None, log_every: int = 10) -> FitResult:
    """``iterations`` calls of ``step`` on the whole training split; returns the engine's FitResult. ``keep``:
    ``last`` or ``best`` (default: ``train.keep``). ``best`` scores validation after every iteration (a history row
    each); ``last`` only every ``log_every`` iterations and after the last, for the history (0: never)."""
    from clipadapt.engine.trainer import FitResult

    keep = keep or trainer.config.keep
    device = trainer.accelerator.device
    method.to(device)
    train_x, train_y = split_tensors(trainer, "train", device)
    validated = trainer.has_validation  # a val-free run on a dataset without one draws no validation curve
    val_x, val_y = split_tensors(trainer, "val", device) if validated else (None, None)
    history, best, best_state = [], None, None
    seconds = 0.0
    for iteration in range(1, iterations + 1):
        started = time.perf_counter()
        method.train()
        loss, logits = step(train_x, train_y)
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
