"""``2sfs``: Two-Stage Few-Shot adaptation (Farina et al., CVPR 2025, "Rethinking Few-Shot Adaptation of
Vision-Language Models in Two Stages").

One iteration budget, ``iterations_per_shot x K`` optimizer steps (reference: 300 x K), split in two:

1. **Task-level features** (the first ``first_fraction``, reference 0.6): only the LayerNorm parameters of both
   towers train (weights and biases of the two LayerNorms of every transformer block, from the first block on: the
   reference's ``--peft ln --ln_modality both``, which leaves the towers' pre, post and final norms frozen; see
   ``layer_norm_parameters``), the classifier being the text tower's embedding of each class prompt, recomputed through
   the adapted text tower every step (as CLIP-LoRA does).
2. **Specialisation** (the rest): the towers are frozen; a linear classifier, initialised with the adapted text
   embeddings of the training classes, trains on the adapted image features (cosine logits at CLIP's scale).

**Selective inference**: at test time a class the classifier was trained on uses its row; any other class (the
novel half of base-to-novel, another dataset's classes) is embedded by the adapted text tower. So the run moves to
new classes (``per_class_state`` is empty) and its trained rows are matched by class name.

Defaults are the reference code's fixed setting
(FarinaMatteo/rethinking_fewshot_vlms@64ac143c7d22803bfeeaadfe42f570220ab29b06 ``main.py:41-65``):
AdamW lr 2e-4, weight decay 1e-2, batch 32, 300 x K iterations, 60% in the first stage; each
stage a cosine without warmup to 1e-6 over its own steps (``fs/twostage.py:263, 297``: ``train.min_lr=1e-6``, the
engine's schedule restarting per stage); no gradient clipping; the prompt "a photo of a {}." on every dataset (its
``datasets/*.py`` keep the per-dataset templates commented out: ``train.head_templates``); nothing is chosen on
validation (val-free: the last step's weights are kept). Where ours differ: the reference runs in fp16 autocast with a
GradScaler that skips the schedule's step when it skips an update (``fs/twostage.py:222-228``); ours follows
``train.precision``. Each stage checkpoints its own optimizer (the second inside ``RUN/checkpoints/stage2``), so an
interrupted run resumes in the stage it was in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from clipadapt.config import option
from clipadapt.engine.checkpoint import CHECKPOINT_DIR
from clipadapt.engine.trainable import OptimizerConfig
from clipadapt.errors import ConfigError
from clipadapt.methods.base import Method, register_method, shots_budget
from clipadapt.methods.heads import TextHead, cosine_logits
from clipadapt.methods.towers import text_layers, vision_layers

TOWERS = ("both", "vision", "text")


@dataclass
class TwoStageConfig(OptimizerConfig):
    lr: float = option(2e-4, help="peak learning rate of both stages (reference: 2e-4)")
    weight_decay: float = option(1e-2, help="AdamW weight decay (reference: 1e-2)")
    iterations_per_shot: int = option(300, help="the budget: this many steps per shot (reference: 300 x K)")
    iterations: int | None = option(None, help="the budget in steps instead (default: iterations_per_shot x K)")
    first_fraction: float = option(0.6, help="share of the budget for the first stage (LayerNorms)")
    towers: str = option("both", help="whose LayerNorms train in the first stage: both, vision or text")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.first_fraction < 1:
            raise ConfigError(f"two_stage_fs.first_fraction must be in (0, 1), got {self.first_fraction}")
        if self.towers not in TOWERS:
            raise ConfigError(f"unknown two_stage_fs.towers '{self.towers}'; valid choices: {', '.join(TOWERS)}")
        if self.iterations is not None and self.iterations < 2:
            raise ConfigError(f"two_stage_fs.iterations must be at least 2 (one per stage), got {self.iterations}")
        if self.iterations_per_shot <= 0:
            raise ConfigError(f"two_stage_fs.iterations_per_shot must be positive, got {self.iterations_per_shot}")


class SelectiveHead(nn.Module):
    """Classifier rows for the classes it was trained on, the adapted text tower's embeddings for the others."""

    def __init__(self, bundle, classnames, templates) -> None:
        super().__init__()
        self.text = TextHead(bundle, classnames, templates)
        self.rows = nn.Parameter(torch.zeros(len(classnames), bundle.embed_dim), requires_grad=False)
        self.register_buffer("known", torch.zeros(len(classnames), dtype=torch.bool))
        self.register_buffer("scale", bundle.logit_scale.detach().float().clone(), persistent=False)

    def class_vectors(self) -> torch.Tensor:
        text = self.text.class_vectors()
        if not bool(self.known.any()):
            return text
        rows = nn.functional.normalize(self.rows, dim=-1).to(text.dtype)
        return torch.where(self.known[:, None], rows, text)

    @torch.no_grad()
    def start_classifier(self) -> None:
        """The second stage's classifier: the adapted text embeddings of the (training) classes."""
        self.rows.copy_(self.text.class_vectors().float())
        self.known.fill_(True)

    def freeze_for_evaluation(self, frozen: bool) -> None:
        self.text.freeze_for_evaluation(frozen)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return cosine_logits(features, self.class_vectors(), self.scale, self.text.bias)


def layer_norm_parameters(bundle, towers: str) -> dict[str, nn.Parameter]:
    """The weights and biases of the two LayerNorms of every transformer block of the chosen towers
    (``layer_norm1``, ``layer_norm2`` of transformers' ``CLIPEncoderLayer``), by name inside the model.

    Not the towers' own norms (the image tower's pre- and post-LayerNorm, the text tower's final one): the reference
    unfreezes every LayerNorm its ``named_modules_with_index`` yields, but yields ``ln_pre``, ``ln_post`` and
    ``ln_final`` twice, the second time with block index -1, which freezes them again
    (FarinaMatteo/rethinking_fewshot_vlms@64ac143c7d22803bfeeaadfe42f570220ab29b06 fs/utils/model_utils.py:11-23,
    :31-37), so only the blocks' ``ln_1`` and ``ln_2`` train."""
    model = bundle.model
    chosen = {"vision": ("vision",), "text": ("text",), "both": ("vision", "text")}[towers]
    layers = {"vision": lambda: vision_layers(bundle, "2sfs"), "text": lambda: text_layers(bundle, "2sfs")}
    ids = {id(m) for tower in chosen for m in layers[tower]().modules() if isinstance(m, nn.LayerNorm)}
    found = {}
    for name, module in model.named_modules():
        if id(module) in ids:
            for param_name, param in module.named_parameters(recurse=False):
                found[f"{name}.{param_name}"] = param
    if not found:
        raise ConfigError(f"model '{bundle.spec}' has no LayerNorm in its {towers} tower(s) for 2sfs")
    return found


@register_method("2sfs", TwoStageConfig, section="two_stage_fs")
class TwoStageFewShot(Method):
    """Two stages in one budget: the LayerNorms of both towers, then a linear classifier; selective inference."""

    # FarinaMatteo/rethinking_fewshot_vlms@64ac143c7d22803bfeeaadfe42f570220ab29b06: batch 32 (main.py:41); each
    # stage a CosineAnnealingLR over its own steps to eta_min=1e-6, no warmup (fs/twostage.py:263, :297); no
    # clipping (scaler.step straight after backward, fs/twostage.py:221-222, :162-163); "a photo of a {}." on every
    # dataset (datasets/*.py: the per-dataset templates are commented out, e.g. datasets/dtd.py:7-10,
    # datasets/imagenet.py:194; used at fs/twostage.py:270, :289); both stages train on RandomResizedCrop(scale=
    # (0.08, 1)) + flip (datasets/__init__.py:62-67)
    train_defaults = {"keep": "last", "patience": 0, "batch_size": 32, "warmup": 0.0, "min_lr": 1e-6,
                      "grad_clip": 0.0, "head_templates": "a photo of a {}.", "augment": "crop-flip",
                      "crop_scale": [0.08, 1.0]}
    changes_towers = True  # the LayerNorms of both towers

    @classmethod
    def planned_choices(cls, config: TwoStageConfig, train) -> tuple[str, ...]:
        return ("stage1.epoch", "stage2.epoch") if train.keep == "best" else ()

    @classmethod
    def check(cls, config: TwoStageConfig, bundle, classnames) -> None:
        if getattr(bundle, "text_tower", None) is None or not hasattr(bundle.model, "text_model"):
            raise ConfigError(f"2sfs needs a transformers CLIP text tower to adapt; model '{bundle.spec}' has none")

    def __init__(self, bundle, classnames, config: TwoStageConfig, templates) -> None:
        super().__init__(bundle, classnames, config, templates)
        self.norms = layer_norm_parameters(bundle, config.towers)
        self.stage = 0
        self._budget: int | None = None
        self._set_stage(0)

    def make_head(self, bundle, templates) -> nn.Module:
        return SelectiveHead(bundle, self.classnames, templates)

    def _set_stage(self, stage: int) -> None:
        """1: the LayerNorms train; 2: the classifier; 0 (outside fit): both count as what the method trains."""
        self.stage = stage
        for param in self.norms.values():
            param.requires_grad_(stage in (0, 1))
        self.head.rows.requires_grad_(stage in (0, 2))

    def classify(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.stage == 2 and self.training:  # the second stage trains the classifier on frozen towers
            with torch.no_grad():
                features = self.image_features(inputs)
            return self.head(features)
        return self.head(self.image_features(inputs))

    # -- the budget and the two stages ----------------------------------------------------------------------
    def total_steps(self, trainer) -> int | None:
        return shots_budget(trainer, self.config.iterations, self.config.iterations_per_shot)

    def train_steps(self, trainer) -> int | None:
        return self._budget

    def fit(self, trainer):
        from clipadapt.engine.trainer import FitResult

        total = self.total_steps(trainer)
        if total is None:  # no shots: train.epochs per stage
            first = second = None
        else:
            first = max(1, math.floor(total * self.config.first_fraction))
            second = max(1, total - first)
        run_dir = trainer.run_dir
        self._set_stage(1)
        self._budget = first
        with trainer.selections.stage("stage1"):  # train.keep=best: each stage keeps its best epoch on val
            fits = [trainer.fit(self)]  # resumes from RUN/checkpoints (a finished first stage: nothing left to run)
        self.head.start_classifier()
        self._set_stage(2)
        self._budget = second
        # the second stage's optimizer has its own checkpoints, inside RUN/checkpoints (removed with them)
        trainer.run_dir = run_dir / CHECKPOINT_DIR / "stage2" if run_dir is not None else None
        try:
            with trainer.selections.stage("stage2"):
                fits.append(trainer.fit(self))
        finally:
            trainer.run_dir = run_dir
            self._budget = None
            self._set_stage(0)
        history = [{"stage": stage, **row} for stage, fit in enumerate(fits, start=1) for row in fit.history]
        best_epoch = len(fits[0].history) + fits[1].best_epoch  # the second stage's kept epoch, counted from the start
        return FitResult(history=history, best_epoch=best_epoch, train_time_s=sum(f.train_time_s for f in fits),
                         train_images=sum(f.train_images for f in fits))

    # -- what is saved: every LayerNorm and the classifier, whatever the stage -------------------------------
    def trainable_state(self) -> dict[str, torch.Tensor]:
        state = {name: param.detach().clone() for name, param in self.norms.items()}
        state["head.rows"] = self.head.rows.detach().clone()
        state["head.known"] = self.head.known.clone()
        return state

    def load_trainable_state(self, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        """The LayerNorms by name; the classifier's rows by class name (``trained_classes``: the classes of the
        saved rows), so classes it was not trained on fall back to the text tower."""
        missing = sorted(set(self.norms) - set(state))
        if missing or "head.rows" not in state:
            raise ConfigError(f"{source} does not fit this 2sfs model: missing {(missing or ['head.rows'])[:5]}")
        with torch.no_grad():
            for name, param in self.norms.items():
                param.copy_(state[name].to(param.device, param.dtype))
            trained = list(self.trained_classes or self.classnames)
            rows, known = state["head.rows"], state.get("head.known")
            if rows.shape[0] != len(trained):
                raise ConfigError(f"{source} holds {rows.shape[0]} classifier rows for {len(trained)} classes")
            where = {name: i for i, name in enumerate(trained)}
            self.head.known.fill_(False)
            for i, name in enumerate(self.classnames):
                j = where.get(name)
                if j is not None and (known is None or bool(known[j])):
                    self.head.rows[i].copy_(rows[j].to(self.head.rows.device))
                    self.head.known[i] = True

    def step_parameters(self) -> dict[str, nn.Parameter]:
        if self.stage == 2:
            return {"head.rows": self.head.rows}
        return {name: param for name, param in self.named_parameters() if any(param is p for p in self.norms.values())}

    def per_class_state(self) -> list[str]:
        return []  # rows are matched by name; other classes use the text tower (selective inference)

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"name": f"stage{self.stage}", "params": list(self.trainable_parameters().values()),
                 "lr": self.config.lr}]
