"""``clip-svd``: CLIP-SVD (Koleilat et al., 2025, "Singular Value Few-shot Adaptation of Vision-Language Models").

Every linear layer inside the transformer blocks of both towers (the attention's q, k, v and output projections,
the MLP's two layers) is rewritten as ``U diag(S) V^T`` from the SVD of its pretrained weight at full rank, and only
the singular values S train (initialised to the weight's own, trained directly, not as a delta); U, V, the biases,
LayerNorms, embeddings and the final projections stay frozen (``methods/svd_linear.py``). No new head: the
classifier is the text tower's embedding of each class's prompt, recomputed through the adapted text tower at every
step (once per evaluation). The recipe is the reference code's (github.com/HealthX-Lab/CLIP-SVD, ``train.py``,
``svf_utils/``, ``configs/few_shot/``; the card cites file:line): AdamW at 5e-4 with weight decay 1e-2 on S, a cosine
schedule to 1e-6 without warmup or gradient clipping, batch 32, random resized crops and flips, 200 x K iterations
for K shots, the dataset's one prompt, and nothing chosen on validation (the last weights are kept).

A run's weights are the S vectors alone (``trainable.safetensors``): U and V are recomputed from the base model when
it is loaded (an SVD is unique up to a joint sign flip of u_i and v_i, which leaves U diag(S) V^T unchanged).
``clipadapt export`` writes the plain CLIP model with each weight rebuilt as U diag(S') V^T. Nothing trained is per
class, so a run classifies other classes too (base-to-novel).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from torch import nn

from clipadapt.config import option
from clipadapt.errors import ConfigError
from clipadapt.methods.base import Method, MethodConfig, register_method, shots_budget
from clipadapt.methods.lora import TOWERS, module_names
from clipadapt.methods.svd_linear import SVDLinear, decompose, merged, recompose
from clipadapt.models.bundle import ClipBundle

ITERATIONS_PER_SHOT = 200  # the reference code's n_iters; its total is n_iters x shots


@dataclass
class ClipSVDConfig(MethodConfig):
    head: str = option("text", help="the classifier: text (the class prompts through the adapted text tower); "
                                    "the only choice")
    targets: list[str] = option(["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
                                help="linear layers to decompose in every block (matched as the last name part)")
    towers: str = option("both", help="where the singular values train: vision, text or both")
    lr: float = option(5e-4, help="peak learning rate of the singular values")
    weight_decay: float = option(1e-2, help="AdamW weight decay (on the singular values, as the reference)")
    iterations: int | None = option(None, help="optimizer steps in all (default: 200 x the run's shots; "
                                               "train.epochs when the run has no shots); train.steps wins")

    def __post_init__(self) -> None:
        if self.head != "text":
            raise ConfigError(f"clip_svd.head must be text (the class prompts through the adapted text tower), "
                              f"got '{self.head}'")
        if self.towers not in TOWERS:
            raise ConfigError(f"unknown clip_svd.towers '{self.towers}'; valid choices: {', '.join(TOWERS)}")
        if not self.targets:
            raise ConfigError("clip_svd.targets is empty; e.g. q_proj,k_proj,v_proj,out_proj,fc1,fc2")
        if self.iterations is not None and self.iterations <= 0:
            raise ConfigError(f"clip_svd.iterations must be positive, got {self.iterations}")
        super().__post_init__()


def svd_targets(config: ClipSVDConfig, bundle: ClipBundle) -> list[str]:
    """Full names of the ``nn.Linear`` layers ``config`` decomposes in ``bundle``'s towers; one line naming the model
    if a target matches nothing in a tower (an open_clip tower has no ``q_proj``: its attention is one matrix)."""
    towers = {"vision": ["vision"], "text": ["text"], "both": ["vision", "text"]}[config.towers]
    names = []
    for tower in towers:
        module = bundle.vision_tower if tower == "vision" else bundle.text_tower
        linears = {name: m for name, m in module_names(bundle.model, module).items() if isinstance(m, nn.Linear)}
        for target in config.targets:
            matches = [name for name in linears if name.rsplit(".", 1)[-1] == target]
            if not matches:
                available = sorted({name.rsplit(".", 1)[-1] for name in linears})
                raise ConfigError(f"clip-svd target '{target}' matches no linear layer of the {tower} tower of "
                                  f"'{bundle.spec}' ({bundle.info.get('model_type', bundle.backend)} model); "
                                  f"available: {', '.join(available) or 'none'}")
            names += [name for name in matches if name not in names]
    return names


@register_method("clip-svd", ClipSVDConfig)
class ClipSVD(Method):
    """CLIP-SVD: only the singular values of every attention and MLP weight of both towers train; val-free."""

    export_refusal = None  # the weights rebuilt as U diag(S) V^T are plain CLIP weights (exported_model)
    changes_towers = True
    starts_at_zero_shot = True  # S starts at the pretrained singular values: the rebuilt weights are the originals

    # the reference's loop: one prompt, no validation (HealthX-Lab/CLIP-SVD@022b1eda02df7a5a1311d0868d49874d69b0010e
    # train.py:57), batch 32 (configs/few_shot/imagenet.yaml:4), cosine without warmup to 1e-6 (train.py:129-131),
    # no clipping (train.py:164-167), random resized crops (8-100% of the image) and flips (main.py:82-87)
    train_defaults = {"head_templates": "coop", "keep": "last", "patience": 0, "batch_size": 32, "warmup": 0.0,
                      "min_lr": 1e-6, "grad_clip": 0.0, "augment": "crop-flip", "crop_scale": [0.08, 1.0]}

    def __init__(self, bundle, classnames, config: ClipSVDConfig, templates) -> None:
        super().__init__(bundle, classnames, config, templates)
        self.svd_names = svd_targets(config, bundle)
        self._layers = list(decompose(bundle.model, self.svd_names).values())

    @classmethod
    def check(cls, config: ClipSVDConfig, bundle: ClipBundle, classnames) -> None:
        svd_targets(config, bundle)

    def svd_layers(self) -> list[SVDLinear]:
        return list(self._layers)

    def train_steps(self, trainer) -> int | None:
        """``clip_svd.iterations``, else 200 x the run's shots; a run without shots (a whole dataset) returns None
        and trains ``train.epochs``."""
        return shots_budget(trainer, self.config.iterations, ITERATIONS_PER_SHOT)

    def per_class_state(self) -> list[str]:
        """Nothing: the singular values are shared by all classes, and the classifier is computed from the names."""
        return []

    def num_parameters(self) -> dict[str, Any]:
        """The total is the CLIP model's own count: each decomposed matrix counts as its out x in weights, not as the
        U, S and V^T that rewrite it."""
        counts = super().num_parameters()
        rewritten = sum(layer.U.numel() + layer.S.numel() + layer.Vh.numel()
                        - layer.in_features * layer.out_features for layer in self._layers)
        total = counts["total"] - rewritten
        return {**counts, "total": total, "trainable_pct": round(100.0 * counts["trainable"] / max(total, 1), 4)}

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        """Evaluation with each weight rebuilt once instead of at every batch."""
        with super().evaluating(), merged(self._layers):
            yield

    def exported_model(self) -> nn.Module:
        """The CLIP model with each decomposed layer replaced by a plain ``nn.Linear`` holding U diag(S) V^T; the
        method holds no SVD layers afterwards."""
        recompose(self.bundle.model, self.svd_names)
        self._layers = []
        return self.bundle.model
