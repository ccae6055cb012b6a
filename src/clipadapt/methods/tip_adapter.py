"""``tip-adapter`` and ``tip-adapter-f`` (Zhang et al., 2022): a cache model over the few-shot training features.

Keys are the L2-normalised training features, values their one-hot labels. An image feature ``f`` (normalised)
gets ``zero-shot logits + alpha' * exp(-beta * (1 - f . keys)) @ values``: the zero-shot classifier plus a vote of
the training images it resembles. ``tip-adapter`` is training-free; ``tip-adapter-f`` trains the keys (initialised
from the features) through the engine on cached features, with the zero-shot head frozen.

``alpha`` and ``beta`` are searched on the **validation** split after the cache is built (and again after
tip-adapter-f trains), over the paper's grid shape. The reference code searched on the test split (its issue #11);
here the test split is not read until the run's single final evaluation.

``alpha' = alpha * scale / 100``: the paper's alpha is relative to CLIP's logit scale of 100; scaling by the
model's own scale makes the same range mean the same for models with another scale (identical for CLIP).
Keys are built from augmented views, as the reference
(gaopengcuhk/Tip-Adapter@d0e2d6f8c5feb8b6ce937b757810761f7155d4d5): ``build_cache_model`` (``utils.py:38-60``) encodes
``augment_epoch: 10`` (``configs/*.yaml:30``) passes of random resized crop (0.5, 1) + flip (``main.py:173-180``) and
takes each image's mean over them, normalised (``utils.py:59-60``). Ours: the normalised mean of the cached views
(engine/views.py, ``features.views``, default 10); the reference averages the unnormalised features, so there each view
weighs by its norm. ``tip-adapter-f`` trains through ``train_loader_F`` (``main.py:78-89``, 20 epochs of fresh random
crops and flips); ours trains epoch e on view e mod N of the same cached views (the keys' views, encoded once; the
reference's 20 epochs see each twice).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from clipadapt.config import option
from clipadapt.engine.views import PER_EPOCH
from clipadapt.errors import ConfigError
from clipadapt.methods.base import Method, MethodConfig, freeze, register_method

if TYPE_CHECKING:
    from clipadapt.engine.trainer import FitResult, Trainer

CACHE_KEYS = ("keys", "values", "alpha", "beta")


@dataclass
class TipAdapterConfig(MethodConfig):
    alpha: float = option(1.0, help="weight of the cache logits (start value; searched on val when search=true)")
    beta: float = option(1.0, help="sharpness of the affinity exp(-beta (1 - cos))")
    search: bool = option(True, help="search alpha and beta on the validation split")
    alpha_max: float = option(10.0, help="largest alpha of the search grid (from 0.1)")
    beta_max: float = option(12.0, help="largest beta of the search grid (from 0.1)")
    alpha_steps: int = option(20, help="alpha values in the search grid")
    beta_steps: int = option(40, help="beta values in the search grid")
    lr: float = option(1e-3, help="peak learning rate of the keys (tip-adapter-f)")
    # AdamW's own default, which the reference does not override (gaopengcuhk/Tip-Adapter@
    # d0e2d6f8c5feb8b6ce937b757810761f7155d4d5 main.py:72); used by tip-adapter-f only
    weight_decay: float = option(0.01, help="weight decay of the keys (tip-adapter-f)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.alpha < 0 or self.beta < 0:
            raise ConfigError(f"{self.section()}.alpha and beta must be >= 0, got {self.alpha}, {self.beta}")
        if self.alpha_max <= 0.1 or self.beta_max <= 0.1 or self.alpha_steps < 1 or self.beta_steps < 1:
            raise ConfigError(f"{self.section()}: the search grid needs alpha_max, beta_max > 0.1 and steps >= 1")
        if self.head != "zeroshot":
            raise ConfigError(f"{self.section()}.head must be zeroshot (the cache corrects the zero-shot "
                              f"classifier), got {self.head}")


def search_choices(config: TipAdapterConfig) -> tuple[str, ...]:
    """The search's one choice (the pair), where it searches a grid of more than one cell."""
    return ("alpha,beta",) if config.search and config.alpha_steps * config.beta_steps > 1 else ()


def search_grid(low: float, high: float, steps: int) -> list[float]:
    """The reference code's grid: ``steps`` values from ``low`` in equal steps, below ``high``."""
    return [low + i * (high - low) / steps for i in range(steps)] if steps > 1 else [low]


@register_method("tip-adapter", TipAdapterConfig)
class TipAdapter(Method):
    """Training-free cache of the few-shot features and labels on the zero-shot head; alpha, beta searched on val."""

    export_refusal = "its cache of training features votes beside the classifier, outside the model's weights"

    inputs = "features"
    train_keys = False
    views, view_use = 10, "keys: the mean of each image's views"  # the reference's augment_epoch
    # the zero-shot classifier from the dataset's CoOp prompt (seven templates on ImageNet): gaopengcuhk/Tip-Adapter@
    # d0e2d6f8c5feb8b6ce937b757810761f7155d4d5 datasets/oxford_pets.py:11, datasets/imagenet.py:177-183, utils.py:18-35
    train_defaults = {"head_templates": "coop"}

    @classmethod
    def planned_choices(cls, config: TipAdapterConfig, train) -> tuple[str, ...]:
        return search_choices(config)

    def __init__(self, bundle, classnames, config: TipAdapterConfig, templates) -> None:
        super().__init__(bundle, classnames, config, templates)
        freeze(self.head)
        if self.train_keys:
            self.keys = nn.Parameter(torch.zeros(0, bundle.embed_dim))
        else:  # state, not a weight: nothing trains in tip-adapter
            self.register_buffer("keys", torch.zeros(0, bundle.embed_dim))
        self.register_buffer("values", torch.zeros(0, len(self.classnames)))
        self.register_buffer("alpha", torch.tensor(float(config.alpha)))
        self.register_buffer("beta", torch.tensor(float(config.beta)))

    # -- the cache ----------------------------------------------------------------------------------------
    def state_from_features(self, features: torch.Tensor, labels: np.ndarray | torch.Tensor) -> None:
        """Keys from training features (normalised), values their one-hot labels."""
        keys = nn.functional.normalize(features.float(), dim=-1).to(self.keys.device)
        labels = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=self.keys.device)
        self._replace_keys(keys.contiguous())
        self.values = nn.functional.one_hot(labels, len(self.classnames)).float()

    def _replace_keys(self, keys: torch.Tensor) -> None:
        """New keys, of any number; a trained parameter stays the same object (the optimizer holds it)."""
        if isinstance(self.keys, nn.Parameter):
            self.keys.data = keys
        else:
            self.keys = keys

    def cache_affinity(self, features: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(features, dim=-1) @ self.keys.to(features.dtype).T

    def blend(self, zero_shot: torch.Tensor, affinity: torch.Tensor, alpha, beta) -> torch.Tensor:
        cache = torch.exp(-beta * (1 - affinity)) @ self.values.to(affinity.dtype)
        return zero_shot + (alpha * self.head.scale / 100.0) * cache

    def classify(self, inputs: torch.Tensor) -> torch.Tensor:
        features = self.image_features(inputs)
        return self.blend(self.head(features), self.cache_affinity(features), self.alpha, self.beta)

    # -- fitting ------------------------------------------------------------------------------------------
    def prepare(self, trainer: Trainer) -> None:
        if trainer.data.views > 0:  # keys: the mean over each image's views
            views = trainer.data.feature_views()
            self.state_from_features(views.mean(), views.labels)
        else:
            train = trainer.features("train")
            self.state_from_features(train.features, train.labels)

    @torch.no_grad()
    def search(self, trainer: Trainer) -> list[dict]:
        """Every (beta, alpha) of the grid scored on val; the trainer chooses the best (accuracy, then loss), one
        choice of the pair. Returns the rows."""
        config = self.config
        val = trainer.features("val")
        features = val.features.to(self.keys.device).float()
        labels = torch.as_tensor(val.labels, device=features.device)
        with self.evaluating():
            zero_shot, affinity = self.head(features).float(), self.cache_affinity(features).float()
        rows = []
        for beta in search_grid(0.1, config.beta_max, config.beta_steps):
            for alpha in search_grid(0.1, config.alpha_max, config.alpha_steps):
                logits = self.blend(zero_shot, affinity, alpha, beta)
                accuracy = float((logits.argmax(-1) == labels).float().mean())
                loss = float(nn.functional.cross_entropy(logits, labels))
                rows.append({"beta": beta, "alpha": alpha, "val_acc": accuracy, "val_loss": loss})
        best = trainer.choose("alpha,beta", rows, lambda r: (r["val_acc"], -r["val_loss"]),
                              value=lambda r: {"alpha": r["alpha"], "beta": r["beta"]},
                              scores=lambda r: {"val_acc": r["val_acc"], "val_loss": r["val_loss"]})
        self.alpha.fill_(best["alpha"])
        self.beta.fill_(best["beta"])
        return rows

    def fit(self, trainer: Trainer) -> FitResult:
        from clipadapt.engine.trainer import FitResult

        start = time.perf_counter()
        self.to(trainer.accelerator.device)
        self.prepare(trainer)
        rows = self.search(trainer) if self.config.search else []
        return FitResult(history=_search_history(rows), best_epoch=0, train_time_s=time.perf_counter() - start,
                         train_images=trainer.data.num_items("features", "train"), details=self.in_use())

    def in_use(self) -> dict:
        """alpha and beta in use (chosen on val where it searched, else as given)."""
        return {"alpha": float(self.alpha), "beta": float(self.beta)}

    # -- weights: the cache is state even where nothing trains ----------------------------------------------
    def per_class_state(self) -> list[str]:
        """The cache's values are one-hot labels of the training classes."""
        return ["values", "keys"]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {"keys": self.keys.detach().clone(), "values": self.values.clone(), "alpha": self.alpha.clone(),
                "beta": self.beta.clone()}

    def load_trainable_state(self, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        if set(state) != set(CACHE_KEYS):
            raise ConfigError(f"{source} does not fit this {self.name} model: expected {', '.join(CACHE_KEYS)}, "
                              f"got {', '.join(sorted(state))}")
        if state["values"].shape[1:] != self.values.shape[1:] or state["keys"].shape[1:] != self.keys.shape[1:]:
            raise ConfigError(f"{source} does not fit this model: cache of shape {tuple(state['keys'].shape)} x "
                              f"{tuple(state['values'].shape)}")
        device = self.keys.device
        with torch.no_grad():
            self._replace_keys(state["keys"].to(device, torch.float32).clone())
            self.values = state["values"].to(device, torch.float32).clone()
            self.alpha.copy_(state["alpha"])
            self.beta.copy_(state["beta"])


def _search_history(rows: list[dict]) -> list[dict]:
    """One history row per beta: its best alpha on val (the full grid would make history.csv thousands of rows)."""
    history = []
    for beta in sorted({r["beta"] for r in rows}):
        best = max((r for r in rows if r["beta"] == beta), key=lambda r: (r["val_acc"], -r["val_loss"]))
        history.append({"step": len(history), **best})
    return history


@register_method("tip-adapter-f", TipAdapterConfig, section="tip_adapter")
class TipAdapterF(TipAdapter):
    """Tip-Adapter with the cache keys fine-tuned on cached features (head frozen); alpha, beta re-searched on val."""

    train_keys = True
    view_use = f"keys: the mean of each image's views; training: {PER_EPOCH}"
    # the reference's fine-tuning (gaopengcuhk/Tip-Adapter@d0e2d6f8c5feb8b6ce937b757810761f7155d4d5): 20 epochs
    # (configs/imagenet.yaml:31; EuroSAT's 100 are not followed), batch 256 (main.py:181), a per-iteration cosine
    # without warmup (main.py:73, :106), no clipping (main.py:103-106)
    train_defaults = {**TipAdapter.train_defaults, "epochs": 20, "batch_size": 256, "warmup": 0.0, "grad_clip": 0.0}

    @classmethod
    def planned_choices(cls, config: TipAdapterConfig, train) -> tuple[str, ...]:
        return Method.planned_choices(config, train) + search_choices(config)  # the engine's epoch, then the search

    def fit(self, trainer: Trainer) -> FitResult:
        fit = trainer.fit(self)  # prepare() builds the cache; the engine trains the keys, selected on val
        started = time.perf_counter()
        if self.config.search:
            self.search(trainer)
        fit.train_time_s += time.perf_counter() - started
        fit.details = {**fit.details, **self.in_use()}
        return fit
