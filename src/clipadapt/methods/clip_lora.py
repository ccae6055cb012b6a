"""``clip-lora``: CLIP-LoRA (Zanella & Ben Ayed, 2024, "Low-Rank Few-Shot Adaptation of Vision-Language Models").

peft LoRA on the query, key and value projections of every layer of both towers, and no new head: the classifier is
the text tower's embedding of each class's prompt ("a photo of a {}."), recomputed through the adapted text tower
at every step (once per evaluation). The recipe is the reference code's (github.com/MaxZanella/CLIP-LoRA,
``run_utils.py``, ``lora.py``, ``loralib/``): r = 2, alpha = 1 with the update scaled by alpha / sqrt(r), dropout
0.25 on the adapters' input, AdamW at 2e-4 with weight decay 1e-2, a cosine schedule without warmup or gradient
clipping, batch 32, random resized crops and flips, and 500 x K iterations for K shots; nothing is chosen on
validation (the last weights are kept).

The adapters are the ``lora`` method's (a standard peft adapter directory, merged for evaluation); only the defaults
and the iteration budget are this recipe's. Nothing trained is per class, so a run classifies other classes too.
"""

from __future__ import annotations

from dataclasses import dataclass

from clipadapt.config import option
from clipadapt.errors import ConfigError
from clipadapt.methods.base import register_method, shots_budget
from clipadapt.methods.lora import LoRA, PeftLoRAConfig

ITERATIONS_PER_SHOT = 500  # the reference code's n_iters; its total is n_iters x shots


@dataclass
class ClipLoRAConfig(PeftLoRAConfig):
    r: int = option(2, help="rank of the update")
    alpha: float = option(1.0, help="scaling: the update is multiplied by alpha / sqrt(r) (rslora) or alpha / r")
    dropout: float = option(0.25, help="dropout on the adapters' input")
    targets: list[str] = option(["q_proj", "k_proj", "v_proj"], help="module names to adapt in every layer")
    towers: str = option("both", help="where the adapters go: vision, text or both")
    rslora: bool = option(True, help="scale the update by alpha / sqrt(r) as the reference code does (false: "
                                     "alpha / r, peft's default)")
    head: str = option("text", help="the classifier: text (the class prompts through the adapted text tower); "
                                    "the only choice")
    lr: float = option(2e-4, help="peak learning rate")
    weight_decay: float = option(1e-2, help="AdamW weight decay")
    iterations: int | None = option(None, help="optimizer steps in all (default: 500 x the run's shots; "
                                               "train.epochs when the run has no shots); train.steps wins")

    def __post_init__(self) -> None:
        if self.head != "text":
            raise ConfigError(f"clip_lora.head must be text (the class prompts through the adapted text tower), "
                              f"got '{self.head}'; for a head on image features use the lora method")
        if self.iterations is not None and self.iterations <= 0:
            raise ConfigError(f"clip_lora.iterations must be positive, got {self.iterations}")
        super().__post_init__()


@register_method("clip-lora", ClipLoRAConfig)
class ClipLoRA(LoRA):
    """CLIP-LoRA: peft LoRA on q, k, v of both towers (r=2), the text tower's prompts as the classifier, val-free."""

    # the reference's loop: one prompt, no validation, batch 32, cosine without warmup to 1e-6
    # (MaxZanella/CLIP-LoRA@358f0d7361f59e66c0b2d0b672a3dafb143a759b lora.py:76), no clipping (lora.py:117-122:
    # scaler.step without unscale/clip), random resized crops (8-100% of the image) and flips (main.py:39-40)
    train_defaults = {"head_templates": "a photo of a {}.", "keep": "last", "patience": 0, "batch_size": 32,
                      "warmup": 0.0, "min_lr": 1e-6, "grad_clip": 0.0, "augment": "crop-flip",
                      "crop_scale": [0.08, 1.0]}

    def train_steps(self, trainer) -> int | None:
        """``clip_lora.iterations``, else 500 x the run's shots; a run without shots (a whole dataset) returns None
        and trains ``train.epochs``."""
        return shots_budget(trainer, self.config.iterations, ITERATIONS_PER_SHOT)

    def per_class_state(self) -> list[str]:
        """Nothing: the adapters are shared by all classes, and the classifier is computed from the class names."""
        return []
