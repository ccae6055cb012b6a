"""``baseline`` and ``baseline-flip``: classic transfer learning, for comparison with the CLIP methods.

A conventional ImageNet classifier from transformers (``AutoModelForImageClassification``, default
``microsoft/resnet-18``; offline, ``world:tiny-resnet``) with its final layer replaced and retrained on
the task's classes, with its own preprocessing; ``baseline-flip`` adds random horizontal flips. The CLIP model of
the run is not used.

``baseline.train`` chooses which layers train besides the new final layer, for the classic question whether the
first or the last convolutional layers are worth fine-tuning: ``last`` (the final layer only, the default),
``last-stage`` (and the last stage of the encoder), ``first-stage`` (and the stem with the first stage) or ``all``.
Stages are those of transformers' convolutional classifiers (``base_model.encoder.stages`` with an ``embedder`` or
``embeddings`` stem: ResNet, ConvNeXt, RegNet, ...). The trained backbone layers learn at ``lr *
backbone_lr_scale``. BatchNorm keeps its pretrained statistics in every setting (the network stays in eval mode;
its scales and shifts train where their layer does): few-shot batches are too small to re-estimate them, and a run
saves trained weights, not statistics.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clipadapt.config import option, require_positive
from clipadapt.data.transforms import ClipPreprocess, PreprocessConfig
from clipadapt.engine.trainable import OptimizerConfig
from clipadapt.errors import ClipAdaptError, ConfigError
from clipadapt.methods.base import Method, freeze, register_method

log = logging.getLogger(__name__)
WORLD_CLASSIFIER = "world:tiny-resnet"


@dataclass
class BaselineConfig(OptimizerConfig):
    classifier: str = option("microsoft/resnet-18", help="image classifier: hub id, local folder, or "
                                                         "world:tiny-resnet (offline)")
    lr: float = option(1e-2, help="peak learning rate of the new, randomly initialised final layer")
    train: str = option("last", help="which layers train: last (the final layer only), last-stage (and the "
                                     "encoder's last stage), first-stage (and the stem with the first stage), all")
    backbone_lr_scale: float = option(0.1, help="learning rate of trained backbone layers = lr * this")

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive(self, ("backbone_lr_scale",), "baseline:")
        if self.train not in TRAIN_CHOICES:
            raise ConfigError(f"unknown baseline.train '{self.train}'; valid choices: {', '.join(TRAIN_CHOICES)}")


TRAIN_CHOICES = ("last", "last-stage", "first-stage", "all")


def load_classifier(spec: str):
    """``(model, image_processor, fingerprint)`` of an image classifier, quietly."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification
    from transformers.utils import logging as hf_logging

    from clipadapt.models.checkpoints import named_checkpoint
    from clipadapt.models.hf import fingerprint_local

    named = named_checkpoint(spec, "classifier")
    if named is not None:
        location = named.locate()
        fingerprint = named.fingerprint(location)
    else:
        location = Path(spec).expanduser()
        fingerprint = f"local:{fingerprint_local(location)}" if location.is_dir() else f"hub:{spec}"
        location = location if location.is_dir() else spec
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = AutoModelForImageClassification.from_pretrained(str(location))
        processor = AutoImageProcessor.from_pretrained(str(location))
    except (OSError, ValueError) as e:
        raise ClipAdaptError(f"could not load image classifier '{spec}' ({str(e).splitlines()[0][:160]}); "
                             f"offline, use --set baseline.classifier={WORLD_CLASSIFIER} or a local folder") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    return model.eval(), processor, fingerprint


def replace_final_layer(model: nn.Module, num_classes: int) -> nn.Linear:
    """Swap the last ``nn.Linear`` (the ImageNet classifier) for a fresh one with ``num_classes`` outputs."""
    name = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    old = model.get_submodule(name)
    new = nn.Linear(old.in_features, num_classes)
    setattr(parent, name.rsplit(".", 1)[-1], new)
    if hasattr(model, "config"):
        model.config.num_labels = num_classes
    return new


def backbone_layers(model: nn.Module, which: str, spec: str) -> list[nn.Module]:
    """The backbone modules ``baseline.train=which`` trains (none for ``last``), by the model's stem and stages."""
    if which == "last":
        return []
    base = getattr(model, "base_model", model)
    if which == "all":
        return [base]
    stem = next((getattr(base, n) for n in ("embedder", "embeddings") if isinstance(getattr(base, n, None), nn.Module)),
                None)
    stages = getattr(getattr(base, "encoder", None), "stages", None)
    if stem is None or not isinstance(stages, nn.ModuleList) or not len(stages):
        raise ConfigError(f"baseline.train={which} needs a classifier with a stem and encoder stages (ResNet, "
                          f"ConvNeXt, RegNet, ...); '{spec}' has none; valid choices for it: last, all")
    return [stem, stages[0]] if which == "first-stage" else [stages[-1]]


@register_method("baseline", BaselineConfig)
class Baseline(Method):
    """A conventional ImageNet classifier (default ResNet-18) with its final layer retrained (or more layers)."""

    export_refusal = "it is not a CLIP model (an image classifier with its own head)"
    control_refusal = "it is not a CLIP model: an image classifier without a text tower cannot classify other classes"

    def attach_backbone(self, bundle) -> None:
        """The image classifier instead of the CLIP model, which plays no part here."""
        self.net, processor, self.fingerprint = load_classifier(self.config.classifier)
        freeze(self.net)
        self._trained_layers = backbone_layers(self.net, self.config.train, self.config.classifier)
        for module in self._trained_layers:
            module.requires_grad_(True)
        self._preprocess = ClipPreprocess(PreprocessConfig.from_image_processor(processor))

    def make_head(self, bundle, templates) -> nn.Linear:
        return replace_final_layer(self.net, len(self.classnames))

    @property
    def preprocess(self) -> ClipPreprocess:
        return self._preprocess

    @property
    def reported_model(self) -> str:
        return self.config.classifier

    def classify(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_values=inputs).logits

    def param_groups(self) -> list[dict[str, Any]]:
        head = list(self.head.parameters())
        backbone = [p for m in self._trained_layers for p in m.parameters() if p.requires_grad]
        return [{"name": "head", "params": head, "lr": self.config.lr},
                {"name": "backbone", "params": backbone, "lr": self.config.lr * self.config.backbone_lr_scale}]

    def train(self, mode: bool = True):
        super().train(mode)
        self.net.eval()  # BatchNorm keeps its ImageNet statistics; the new linear layer has no modes
        return self

    def enable_activation_checkpointing(self) -> None:
        """Nothing to recompute when only the final layer trains; convolutional stages are not checkpointed."""
        if self._trained_layers:
            raise ConfigError(f"activation checkpointing is not supported with baseline.train={self.config.train}"
                              f" (transformers' convolutional classifiers do not implement it)")


@register_method("baseline-flip", BaselineConfig, section="baseline")
class BaselineFlip(Baseline):
    """The baseline with random horizontal flips during training."""

    train_defaults = {"augment": "flip"}  # a default, so train.augment=crop-flip (or none) still applies
