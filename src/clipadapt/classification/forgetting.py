"""Forgetting: does adapting CLIP to my data make it forget what it knew? (``eval.control=DATASET``)

A run with a control dataset classifies the control's split zero-shot (its class names in its own templates, the
dataset's recommended sets as one ensemble, so nothing is chosen) twice: with the frozen model before training and
with the run's adapted towers after it (``Method.adapted_towers``: LoRA merged, fine-tuned weights and biases,
prompts inside a tower, a pixel prompt, ProLIP's projection, CLIP-Adapter's residual MLP). metrics.json's
``control`` holds both accuracies and ``kept = after / before`` ("control accuracy kept" in the reports).

A method whose towers stay the frozen model's (``changes_towers`` false: a head, per-class statistics, a prompt of
its own that the control's templates replace) is not evaluated twice: ``after`` is ``before`` (``towers:
"unchanged"``). That is a property of the method, tested for every registered method (tests/test_forgetting.py:
its towers compute the same features after training, bit for bit), not an approximation.

The control is read only here, after the run has chosen everything on its validation split: it never chooses.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from clipadapt.classification.experiment import EvalConfig, head_templates
from clipadapt.data import ClassificationDataset, DataConfig, load_dataset
from clipadapt.data.prompts import TemplateSet
from clipadapt.engine.features import FeatureCache, encode_split
from clipadapt.engine.metrics import classification_metrics
from clipadapt.engine.zeroshot import build_zero_shot_head, zero_shot_logits
from clipadapt.methods import METHODS, Method
from clipadapt.models.bundle import ClipBundle


@dataclass
class ControlScore:
    metrics: dict
    loss: float
    predictions: np.ndarray


@dataclass
class Control:
    """A run's control dataset and split, loaded before anything is written (a bad one fails the run there)."""

    dataset: ClassificationDataset
    split: str
    templates: TemplateSet
    batch_size: int
    num_workers: int
    strict: bool
    refusal: str | None = None  # why the run's method has no towers to classify it
    before: ControlScore | None = None

    def score(self, bundle: ClipBundle, cache: FeatureCache | None = None,
              autocast: AbstractContextManager | None = None) -> ControlScore:
        """Zero-shot on the control through ``bundle``'s towers (``cache``: only for the frozen model)."""
        with torch.inference_mode(), autocast or nullcontext():
            encoded = encode_split(bundle, self.dataset.split(self.split), self.batch_size, self.num_workers,
                                   self.strict, cache)
            head = build_zero_shot_head(bundle, self.dataset.classnames, self.templates)
            logits = zero_shot_logits(bundle, encoded.features, head)
        labels = torch.as_tensor(np.asarray(encoded.labels), dtype=torch.long)
        loss = float(torch.nn.functional.cross_entropy(logits.float(), labels))
        return ControlScore(classification_metrics(logits, encoded.labels), loss, logits.argmax(dim=1).numpy())

    def measure_before(self, bundle: ClipBundle, cache: FeatureCache | None = None,
                       autocast: AbstractContextManager | None = None) -> None:
        """The frozen model's score: call it before the method is built (LoRA and prompts attach at construction)."""
        if self.refusal is None:
            self.before = self.score(bundle, cache, autocast)

    def record(self, method: Method, autocast: AbstractContextManager | None = None) -> dict:
        """metrics.json's ``control``: ``before``/``after`` acc1, ``kept``, and how ``after`` was obtained."""
        out: dict = {"dataset": self.dataset.name, "split": self.split,
                     "images": len(self.dataset.split(self.split)), "classes": self.dataset.num_classes,
                     "templates": len(self.templates.templates)}
        if self.refusal is not None or self.before is None:
            return {**out, "before": None, "after": None, "kept": None, "towers": None, "reason": self.refusal}
        if method.changes_towers:
            with method.adapted_towers() as towers:
                after = self.score(towers, None, autocast)  # never the cache: the towers are not the frozen model's
        else:
            after = self.before
        before_acc, after_acc = self.before.metrics["acc1"], after.metrics["acc1"]
        return {**out, "before": before_acc, "after": after_acc,
                "kept": round(after_acc / before_acc, 6) if before_acc > 0 else None,
                "towers": "adapted" if method.changes_towers else "unchanged",
                "agreement": float(np.mean(after.predictions == self.before.predictions)),
                "before_metrics": self.before.metrics, "after_metrics": after.metrics,
                "before_loss": round(self.before.loss, 6), "after_loss": round(after.loss, 6)}


def load_control(config: EvalConfig, data: DataConfig, method: str) -> Control | None:
    """The run's control (None without ``eval.control``): the dataset loaded and its split checked, so that a bad
    one fails before the run directory is written. Its splits are the dataset's own (nothing carved out of train)."""
    if config.control is None:
        return None
    dataset = load_dataset(DataConfig(dataset=config.control, val_fraction=0.0, batch_size=data.batch_size,
                                      num_workers=data.num_workers, strict=data.strict,
                                      max_image_pixels=data.max_image_pixels))
    dataset.split(config.control_split)  # one line naming the valid splits
    return Control(dataset, config.control_split, head_templates(dataset), data.batch_size, data.num_workers,
                   data.strict, refusal=METHODS.get(method).method_class.control_refusal)
