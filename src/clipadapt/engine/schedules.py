"""Learning-rate schedules of the engine (``train.schedule``), each a ``LambdaLR`` stepped once per optimizer step.

* ``cosine``: linear warmup over the first ``train.warmup`` share of the steps, then a cosine per iteration down to
  ``train.min_lr`` at the last step (with ``min_lr=0`` the numbers of transformers'
  ``get_cosine_schedule_with_warmup``, which the engine used before). CLIP-LoRA and 2SFS anneal to 1e-6 with
  ``torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total_iters, eta_min=1e-6)`` stepped per iteration
  (MaxZanella/CLIP-LoRA@358f0d7361f59e66c0b2d0b672a3dafb143a759b lora.py:76;
  FarinaMatteo/rethinking_fewshot_vlms@64ac143c7d22803bfeeaadfe42f570220ab29b06 fs/twostage.py:263 and :297, one
  schedule per stage): with ``warmup=0`` this is the same curve.
* ``dassl``: Dassl's ``ConstantWarmupScheduler`` around ``CosineAnnealingLR(optimizer, max_epoch)``, stepped once per
  epoch (KaiyangZhou/Dassl.pytorch@c61a1b570ac6333bd50fb5ae06aea59002fb20bb dassl/optim/lr_scheduler.py:35-54 and
  :128-141; the trainers call ``update_lr`` after an epoch's last batch,
  KaiyangZhou/CoOp@ff61507c790454bce7c5052c3ac39e60772f1f89 trainers/coop.py:281-282). Epoch ``e`` (from 0) trains at
  ``warmup_lr`` while ``e < warmup_epochs``, then at
  ``min_lr + (lr - min_lr) (1 + cos(pi (e - warmup_epochs) / epochs)) / 2`` (``WARMUP_RECOUNT=True``, Dassl's
  default, dassl/config/defaults.py:185: the cosine starts at its own step 0 after the warmup, so it never reaches
  its minimum inside the run). The CoOp, CoCoOp and MaPLe configs use one warmup epoch at 1e-5
  (configs/trainers/CoOp/*.yaml:15-22).

A schedule depends only on the step number, so the scheduler's state (``last_epoch``) in the checkpoint is all a
resumed run needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR

from clipadapt.errors import ConfigError

SCHEDULES = ("cosine", "dassl")


def _cosine(warmup_steps: int, total: int, base: float, min_lr: float) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return float(step) / float(max(1, warmup_steps))
        progress = float(step - warmup_steps) / float(max(1, total - warmup_steps))
        decay = max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
        return decay if min_lr == 0 else (min_lr + (base - min_lr) * decay) / base

    return factor


def _dassl(steps_per_epoch: int, epochs: int, warmup_epochs: int, warmup_lr: float, base: float,
           min_lr: float) -> Callable[[int], float]:
    def factor(step: int) -> float:
        epoch = step // steps_per_epoch
        if epoch < warmup_epochs:
            return warmup_lr / base
        decay = 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / epochs))
        return (min_lr + (base - min_lr) * decay) / base

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, config, steps_per_epoch: int, total_steps: int) -> LambdaLR:
    """The scheduler ``config.schedule`` names (a ``TrainConfig``), one factor per parameter group (each group's
    floor is the same absolute ``min_lr``, as ``CosineAnnealingLR``'s ``eta_min``)."""
    bases = [float(group["lr"]) for group in optimizer.param_groups]
    low = [(group.get("name", str(i)), lr) for i, (group, lr) in enumerate(zip(optimizer.param_groups, bases,
                                                                                strict=True)) if lr < config.min_lr]
    if low:
        raise ConfigError(f"train.min_lr={config.min_lr} is above the learning rate {low[0][1]} of parameter group "
                          f"'{low[0][0]}'; use a train.min_lr below every group's learning rate")
    if config.schedule == "dassl":
        epochs = math.ceil(total_steps / steps_per_epoch)
        factors = [_dassl(steps_per_epoch, epochs, config.warmup_epochs, config.warmup_lr, base, config.min_lr)
                   for base in bases]
    else:
        warmup = round(config.warmup * total_steps)
        factors = [_cosine(warmup, total_steps, base, config.min_lr) for base in bases]
    return LambdaLR(optimizer, factors)


def check_schedule(config) -> None:
    """One-line errors for the schedule's settings of a ``TrainConfig``."""
    if config.steps is not None and config.steps <= 0:
        raise ConfigError(f"train.steps must be positive, got {config.steps}")
    if not 0 <= config.warmup < 1:
        raise ConfigError(f"train.warmup must be in [0, 1), got {config.warmup}")
    if config.schedule not in SCHEDULES:
        raise ConfigError(f"unknown train.schedule '{config.schedule}'; valid choices: {', '.join(SCHEDULES)}")
    if not (config.min_lr >= 0 and math.isfinite(config.min_lr)):
        raise ConfigError(f"train.min_lr must be a finite number >= 0, got {config.min_lr}")
    if config.warmup_epochs < 0:
        raise ConfigError(f"train.warmup_epochs must be >= 0, got {config.warmup_epochs}")
    if not (config.warmup_lr > 0 and math.isfinite(config.warmup_lr)):
        raise ConfigError(f"train.warmup_lr must be a positive number, got {config.warmup_lr}")
