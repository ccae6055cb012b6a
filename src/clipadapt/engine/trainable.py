"""What the engine trains: ``TrainableModule`` (the interface classification methods and caption models share), its
optimizer settings and the optimizer built from the parameter groups it returns.

The engine imports no method and no task: a method hands the engine a module, and the engine builds the optimizer
from ``module.param_groups()`` and ``module.config`` (an ``OptimizerConfig``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from clipadapt.config import option, require_positive
from clipadapt.engine.checkpoint import check_metadata
from clipadapt.errors import ConfigError
from clipadapt.io import atomic_path

if TYPE_CHECKING:
    from clipadapt.engine.trainer import FitResult, Trainer

WEIGHTS_FILE = "trainable.safetensors"


@dataclass
class OptimizerConfig:
    """How a gradient-trained method is optimised; the engine builds the optimizer from these fields."""

    lr: float = option(1e-3, help="peak learning rate (cosine schedule with warmup)")
    weight_decay: float = option(0.0, help="weight decay")
    optimizer: str = option("adamw", help="adamw or sgd")
    momentum: float = option(0.9, help="SGD momentum (sgd only)")

    def __post_init__(self) -> None:
        require_positive(self, ("lr",), f"{self.section()}:")
        if self.weight_decay < 0:
            raise ConfigError(f"{self.section()}: weight_decay must be >= 0, got {self.weight_decay}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown {self.section()}.optimizer '{self.optimizer}'; valid choices: "
                              f"{', '.join(OPTIMIZERS)}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"{self.section()}.momentum must be in [0, 1), got {self.momentum}")

    @classmethod
    def section(cls) -> str:
        return getattr(cls, "_section", cls.__name__)


OPTIMIZERS = {
    "adamw": lambda groups, config: torch.optim.AdamW(groups),
    "sgd": lambda groups, config: torch.optim.SGD(groups, momentum=getattr(config, "momentum", 0.9)),
}


def build_optimizer(method: TrainableModule) -> torch.optim.Optimizer:
    """The optimizer a method's config asks for, over its parameter groups (each with its own lr)."""
    config = method.config
    default_decay = getattr(config, "weight_decay", 0.0)
    groups = [{"params": g["params"], "lr": g["lr"], "name": g.get("name", str(i)),
               "weight_decay": g.get("weight_decay", default_decay)}
              for i, g in enumerate(method.param_groups()) if g["params"]]
    if not groups:
        raise ConfigError(f"method '{method.name}' has no trainable parameters")
    return OPTIMIZERS[getattr(config, "optimizer", "adamw")](groups, config)


class TrainableModule(nn.Module):
    """What the engine needs of anything it trains: the trainable parameters, their state to keep, save and load,
    and the training hooks.

    Classification methods (``Method``) and captioning models (``captioning.training.CaptionModel``) both are one.
    """

    name: ClassVar[str] = ""

    def metadata(self) -> dict[str, str]:
        """What saved weights must match to be loaded here (model fingerprint, method, ...)."""
        raise NotImplementedError

    def prepare(self, trainer: Trainer) -> None:
        """Called once before training (e.g. LP-FT fits its head on cached features here)."""

    def train_steps(self, trainer: Trainer) -> int | None:
        """The method's own iteration budget (optimizer steps in all), used when train.steps is not set; None
        trains train.epochs."""
        return None

    def train_epochs(self, trainer: Trainer) -> int | None:
        """The method's own number of epochs (coop: the reference's count for the run's shots), used when neither
        train.steps nor ``train_steps`` sets a budget; None trains train.epochs."""
        return None

    def fit(self, trainer: Trainer) -> FitResult:
        """Train the method; gradient training by default, a closed-form method overrides this."""
        return trainer.fit(self)

    def enable_activation_checkpointing(self) -> None:
        raise ConfigError(f"{self.name} does not support activation checkpointing")

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        """Evaluation mode for the block, then back to the mode before."""
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """Parameters the method trains, by name (everything else is frozen)."""
        return {name: p for name, p in self.named_parameters() if p.requires_grad}

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().clone() for name, p in self.trainable_parameters().items()}

    def load_trainable_state(self, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        own = self.trainable_parameters()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise ConfigError(f"{source} does not fit this {self.name} model: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
        with torch.no_grad():
            for name, param in own.items():
                if state[name].shape != param.shape:
                    raise ConfigError(f"{source} does not fit this model: '{name}' has shape "
                                      f"{tuple(state[name].shape)}, expected {tuple(param.shape)}")
                param.copy_(state[name].to(param.device, param.dtype))

    def save_weights(self, directory: Path) -> None:
        """The trainable weights only, as safetensors (LoRA overrides this with a peft adapter)."""
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous().cpu() for k, v in self.trainable_state().items()}
        with atomic_path(directory / WEIGHTS_FILE) as tmp:
            save_file(state, str(tmp), metadata=self.metadata())

    def load_weights(self, directory: Path) -> None:
        path = directory / WEIGHTS_FILE
        check_metadata(path, self.metadata())
        self.load_trainable_state(load_file(str(path)), source=str(path))

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer parameter groups (``params``, ``lr``, optional ``name`` and ``weight_decay``); the engine
        scales every group's ``lr`` by the schedule."""
        return [{"name": "all", "params": list(self.trainable_parameters().values()), "lr": self.config.lr}]
