"""The method interface: what every adaptation method provides to the one training engine.

A method is an ``nn.Module`` built from a ClipBundle and the dataset's classes. It says what it eats
(``inputs = "features"``: cached, frozen image features; ``"pixels"``: images through the image tower), which
parameters it trains (``requires_grad``), and maps a batch to ``{"loss", "logits"}``. The engine handles
everything else and never asks which method it is running. Methods register themselves::

    @register_method("bitfit", BitFitConfig)
    class BitFit(Method): ...
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from clipadapt.config import option, section_name
from clipadapt.data.prompts import TemplateSet
from clipadapt.data.transforms import ClipPreprocess
from clipadapt.engine.trainable import OptimizerConfig, TrainableModule
from clipadapt.errors import ConfigError
from clipadapt.methods.heads import HEAD_KINDS, TextHead, build_head
from clipadapt.models.bundle import ClipBundle
from clipadapt.registry import Registry


@dataclass
class MethodConfig(OptimizerConfig):
    """Fields every method with a classifier head has; a method's own config subclasses this."""

    head: str = option("zeroshot", help="classifier: zeroshot (cosine, initialised from the text embeddings), "
                                        "linear (random init) or text (recomputed through the text tower)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.head not in HEAD_KINDS:
            raise ConfigError(f"unknown {self.section()}.head '{self.head}'; valid choices: {', '.join(HEAD_KINDS)}")


@dataclass
class MethodEntry:
    name: str
    method_class: type[Method]
    config_class: type[MethodConfig]
    section: str  # the config section: ``lora``, ``full_ft`` (``--set full_ft.lp_ft=true``)


METHODS: Registry[MethodEntry] = Registry("method")


def register_method(name: str, config_class: type, section: str | None = None):
    """Class decorator: ``@register_method("lora", LoraConfig)``; variants of one method may share a section."""

    def wrap(cls: type[Method]) -> type[Method]:
        cls.name = name
        config_class._section = section or section_name(name)
        doc = (cls.__doc__ or "").strip().splitlines()
        METHODS.register(name, MethodEntry(name, cls, config_class, config_class._section),
                         help=doc[0] if doc else "")
        return cls

    return wrap


def list_methods(pattern: str | None = None) -> list[str]:
    return METHODS.names(pattern)


class Method(TrainableModule):
    """Base class: a head on image features; subclasses choose what else trains."""

    inputs: ClassVar[str] = "pixels"  # "pixels" or "features"
    # which cached features a feature method eats: "projected" (the normalised image embedding) or "pooled" (the
    # image tower's output before its final projection, for methods that train that projection)
    feature_kind: ClassVar[str] = "projected"
    augment: ClassVar[str | None] = None  # training augmentation the method insists on (None: train.augment)
    # augmented views of the training images (features.views, engine/views.py) for feature methods: how its recipe
    # uses them (None: it cannot; the engine trains epoch e on view e mod N, methods that fit themselves read
    # `trainer.data.feature_views()`) and how many its recipe takes (0: the clean cached features)
    view_use: ClassVar[str | None] = None
    views: ClassVar[int] = 0
    starts_at_zero_shot: ClassVar[bool] = False  # built and untrained (head=zeroshot), it is the zero-shot model
    # train.* defaults of its recipe (e.g. a val-free method's keep=last); the user's --set still wins
    train_defaults: ClassVar[dict[str, Any]] = {}
    # why `clipadapt export` cannot write its runs as a plain transformers model; None where it can: what trained are
    # weights of the CLIP model (merged by `exported_model`) and the classifier is `head` on its image features
    export_refusal: ClassVar[str | None] = ("its forward pass does more than a classifier on CLIP's image features, "
                                            "which a plain transformers model cannot express")
    # pictures the method draws into its run directory (`write_pictures`): file name -> caption, shown by reports
    pictures: ClassVar[dict[str, str]] = {}
    # eval.control (classification/forgetting.py): True where what the method learned changes what the CLIP towers
    # compute for any classes (weights, prompts or prefixes inside a tower, a class-agnostic transform of the image
    # features); False where the towers stay the frozen model's (a head, per-class statistics, a prompt of its own
    # that the control's templates replace): its control accuracy after training is the one before
    changes_towers: ClassVar[bool] = False
    # why a run of this method has no CLIP towers to classify a control dataset zero-shot (None: it has)
    control_refusal: ClassVar[str | None] = None

    def __init__(self, bundle: ClipBundle, classnames: Sequence[str], config: MethodConfig,
                 templates: TemplateSet) -> None:
        super().__init__()
        self.check(config, bundle, classnames)
        self.config = config
        self.classnames = list(classnames)
        # the classes its weights were trained on: others than it classifies when a run with no per-class state
        # is evaluated on new classes (classification.evaluation.load_run)
        self.trained_classes: list[str] | None = None
        self.fingerprint = bundle.fingerprint
        self._bundle = [bundle]  # a list: feature methods must not register the frozen model
        self.attach_backbone(bundle)
        self.head = self.make_head(bundle, templates)

    @classmethod
    def planned_choices(cls, config: Any, train: Any) -> tuple[str, ...]:
        """What a run with this method config and ``train`` config chooses on validation, in order; () is val-free
        (a dataset without a validation split then trains on every training image). The engine chooses the epoch
        under train.keep=best; methods with searches of their own add theirs. What a run actually chose is
        recorded from what it did (engine/selection.py), not from this; tests hold the two equal for every method."""
        return ("epoch",) if train.keep == "best" else ()

    @classmethod
    def validation_shots(cls, shots: int) -> int:
        """Validation images per class the method's reference draws beside K = ``shots`` training shots, what the
        coop sampler draws where data.val_shots is unset: CoOp's ``min(K, 4)`` (KaiyangZhou/CoOp@
        ff61507c790454bce7c5052c3ac39e60772f1f89 datasets/oxford_pets.py:45), which its successors keep."""
        return min(shots, 4)

    @classmethod
    def default_choices(cls) -> tuple[str, ...]:
        """What the method's default recipe chooses on validation (`clipadapt methods`, the reports)."""
        from clipadapt.engine.trainer import TrainConfig

        section = METHODS.get(cls.name).config_class
        return cls.planned_choices(section(), TrainConfig(**cls.train_defaults))

    @classmethod
    def check(cls, config: Any, bundle: ClipBundle, classnames: Sequence[str]) -> None:
        """Refuse settings this model cannot take (a layer beyond its depth...) without changing the model.

        The constructor calls it first; sweeps call it for every cell before the first one trains, so a bad cell
        fails before anything is written.
        """

    def attach_backbone(self, bundle: ClipBundle) -> None:
        """Register the frozen network the method trains through; subclasses unfreeze what they train.

        Registered modules are moved, wrapped for DDP and switched train/eval with the method. Feature methods
        have none: their image tower ran once, into the feature cache. The model is frozen either way (CoOp runs
        its text tower on cached features: without this, every step would compute the tower's weight gradients).
        """
        freeze(bundle.model)
        if self.inputs == "pixels":
            self.model = bundle.model

    def make_head(self, bundle: ClipBundle, templates: TemplateSet) -> nn.Module:
        return build_head(self.config.head, bundle, self.classnames, templates)

    @property
    def bundle(self) -> ClipBundle:
        return self._bundle[0]

    @property
    def reported_model(self) -> str | None:
        """The model whose outputs this method classifies, when it is not the run's CLIP model (``model.spec``):
        metrics.json's ``model`` and the reports' model column name it. None: the CLIP model."""
        return None

    @property
    def preprocess(self) -> ClipPreprocess:
        """How images become pixels for this method (the model's own preprocessing)."""
        return self.bundle.preprocess

    # -- forward ------------------------------------------------------------------------------------------
    @property
    def feature_dim(self) -> int:
        """Width of the cached features this method eats (``clipadapt bench`` draws random ones of it)."""
        return self.bundle.embed_dim

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """What the feature cache holds for these images, computed now (the kind this method eats)."""
        if self.feature_kind == "pooled":
            return self.bundle.encode_image_pooled(pixels)
        return self.bundle.encode_image(pixels, normalize=False)

    def image_features(self, inputs: torch.Tensor) -> torch.Tensor:
        """Features of a batch: pixel methods run the image tower; feature methods get them ready-made."""
        if self.inputs == "features":
            return inputs
        return self.bundle.encode_image(inputs, normalize=False)

    def classify(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits of a batch of inputs (features or pixels, as ``inputs`` says); methods that do more than a head
        on image features override this, and ``forward`` adds the loss."""
        return self.head(self.image_features(inputs))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self.classify(batch["inputs"])
        out = {"logits": logits}
        if "labels" in batch:
            out["loss"] = nn.functional.cross_entropy(logits.float(), batch["labels"])
        return out

    def pixel_logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """Logits straight from preprocessed images, also for feature methods (prediction, robustness)."""
        if self.inputs == "features":  # through forward: a feature method may do more than its head
            return self({"inputs": self.encode_pixels(pixels)})["logits"]
        return self({"inputs": pixels})["logits"]

    # -- what trains --------------------------------------------------------------------------------------
    def num_parameters(self) -> dict[str, Any]:
        trainable = sum(p.numel() for p in self.trainable_parameters().values())
        total = sum(p.numel() for p in self.parameters())
        if self.inputs == "features":  # the frozen image tower is not a submodule here, but it is part of the model
            total += self.bundle.num_parameters()
        return {"trainable": trainable, "total": total, "trainable_pct": round(100.0 * trainable / max(total, 1), 4)}

    def enable_activation_checkpointing(self) -> None:
        """Recompute the image tower's activations in the backward pass (nothing to do on cached features)."""
        if self.inputs == "features":
            return
        model = self.bundle.model
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise ConfigError(f"model '{self.bundle.spec}' does not support activation checkpointing")
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})

    def step_parameters(self) -> dict[str, nn.Parameter]:
        """The parameters the next training step updates: all it trains, except for a method that trains them in
        stages (2sfs: the LayerNorms first, then its classifier)."""
        return self.trainable_parameters()

    def per_class_state(self) -> list[str]:
        """Names of the trained tensors that hold something per class (a trained head's class vectors): a run with
        any cannot be evaluated on other classes (base-to-novel, cross-dataset). Heads' trainable parameters are
        all per class; a method with other per-class state says so by overriding this."""
        return [name for name in self.trainable_parameters() if name.startswith("head.")]

    # -- hooks --------------------------------------------------------------------------------------------
    def state_from_features(self, features: torch.Tensor, labels) -> None:
        """State a method builds from training features before any step (Tip-Adapter's cache); nothing by default.

        ``prepare`` passes the cached training split; ``clipadapt bench`` passes random features, so that a
        benchmarked step sees a state of realistic size for every method alike."""

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        """Evaluation mode; methods may merge weights or precompute class vectors for speed here."""
        freeze = getattr(self.head, "freeze_for_evaluation", None)
        with super().evaluating():
            if freeze:
                freeze(True)
            try:
                yield
            finally:
                if freeze:
                    freeze(False)

    @contextmanager
    def adapted_towers(self) -> Iterator[ClipBundle]:
        """The CLIP model as training left it, for zero-shot classification of other classes (eval.control): a
        bundle whose ``encode_image``/``encode_text`` run the adapted towers. By default the method's own bundle in
        evaluation mode (weights trained in place, LoRA merged, prompt hooks inside the towers); a method whose
        change sits outside the bundle's model (a pixel prompt, a projection of its own) yields a view with it."""
        with self.evaluating():
            yield self.bundle

    # -- export (classification/export.py) ------------------------------------------------------------------
    def export_kind(self) -> str:
        """How ``clipadapt export`` writes a run: ``"text"`` where the classifier is the text tower (a text head, or
        a zero-shot head that did not train): a model for transformers' zero-shot pipeline with the class names;
        ``"head"`` where a learned head sits on the image features: the model plus ``head.safetensors``. A method
        whose own classifier is the text tower (LoRA on both towers with text class vectors) returns "text"."""
        if isinstance(self.head, TextHead) or not any(p.requires_grad for p in self.head.parameters()):
            return "text"
        return "head"

    def exported_model(self) -> nn.Module:
        """The plain CLIP model with the run's trained changes in its weights (LoRA merges its adapters); the method
        may be spent afterwards."""
        return self.bundle.model

    # -- pictures ------------------------------------------------------------------------------------------
    def write_pictures(self, run_dir: Path, sample_pixels: torch.Tensor) -> None:
        """Draw what the method learned into ``run_dir`` (the files named in ``pictures``); ``sample_pixels`` is one
        preprocessed image (3, H, W) of the evaluated split. Nothing by default."""

    # -- weight-space ensembling (WiSE-FT) -----------------------------------------------------------------
    def zero_shot_start_refusal(self) -> str | None:
        """Why this method's untrained state is not the zero-shot model (None where it is)."""
        if not self.starts_at_zero_shot:
            return f"method '{self.name}' does not start from the zero-shot model"
        if self.config.head != "zeroshot" or getattr(self.config, "lp_ft", False):
            return f"its head does not start at the zero-shot classifier (head={self.config.head}" + (
                ", lp_ft=true)" if getattr(self.config, "lp_ft", False) else ")")
        return None

    def interpolate(self, start: dict[str, torch.Tensor], end: dict[str, torch.Tensor],
                    alpha: float) -> dict[str, torch.Tensor]:
        """The trainable state at ``alpha`` between the zero-shot start (0) and the trained end (1), weight by
        weight; ``torch.lerp`` returns each end bit for bit."""
        return {name: torch.lerp(start[name].float(), value.float(), alpha).to(value.dtype)
                for name, value in end.items()}

    # -- weights ------------------------------------------------------------------------------------------
    def effective_settings(self) -> dict[str, Any]:
        """Settings the method resolved for this model or data where its config leaves them to the recipe (MaPLe's
        depth on a shallow model), by config key; metrics.json records them as ``effective``."""
        return {}

    def metadata(self) -> dict[str, str]:
        return {"method": self.name, "model_fingerprint": self.fingerprint,
                "classes": "\n".join(self.trained_classes or self.classnames)}



def shots_budget(trainer, iterations: int | None, per_shot: int) -> int | None:
    """The step budget of the methods whose reference counts iterations: ``iterations`` when set, else ``per_shot``
    x the run's shots; None for a run without shots (a whole dataset: it trains ``train.epochs``)."""
    if iterations is not None:
        return iterations
    shots = trainer.data.dataset.info.get("shots")
    return per_shot * int(shots) if shots else None


def freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)
