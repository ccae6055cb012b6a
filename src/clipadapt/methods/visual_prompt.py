"""``visual-prompt``: a learned pixel perturbation in front of the frozen CLIP (Bahng et al., 2022).

"Exploring Visual Prompts for Adapting Large-Scale Models": the prompt is added to the normalised image, the image
and text towers stay frozen, and the image is classified by the zero-shot text head. Three kinds: a ``padding``
frame ``prompt_size`` pixels wide (69,840 parameters at 224 px and size 30), a ``fixed-patch`` square at the top
left, and a ``random-patch`` square at a random place per image while training (one seeded place at evaluation).
Sizes are given at 224 px and scaled to the model's input size.

Defaults differ from the paper where its recipe needs ~1000 epochs: the prompt starts at zero (so training starts
at zero-shot accuracy; the paper draws N(0, 1)), and AdamW at 1e-2 replaces SGD at 40 with warmup, which diverged
within the default 10 epochs on the built-in world. The paper's recipe is ``--set visual_prompt.optimizer=sgd
--set visual_prompt.lr=40 --set visual_prompt.init=normal --set visual_prompt.train_head=false``. The head is the
zero-shot head, trained beside the prompt at the other methods' head rate unless ``train_head=false``.

No maintained library implements pixel prompts for transformers models, so this is a small module of ours.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from clipadapt.config import option
from clipadapt.errors import ConfigError
from clipadapt.io import atomic_save
from clipadapt.methods.base import register_method
from clipadapt.methods.prompt_base import PromptMethod, PromptMethodConfig
from clipadapt.models.bundle import ClipBundle

PROMPT_KINDS = ("padding", "fixed-patch", "random-patch")
PROMPT_INITS = ("normal", "zeros")
REFERENCE_SIZE = 224  # prompt sizes are given at this input size


@dataclass
class VisualPromptConfig(PromptMethodConfig):
    kind: str = option("padding", help="padding (a frame), fixed-patch (top-left square) or random-patch "
                                       "(a square at a random place per training image)")
    prompt_size: int = option(30, help="frame width or square side in pixels at 224 px input (scaled to the "
                                       "model's input size)")
    init: str = option("zeros", help="initial prompt: zeros (starts at zero-shot) or normal (N(0, 1), the paper's)")
    eval_seed: int = option(0, help="random-patch: seed of the one patch position used at evaluation")
    lr: float = option(1e-2, help="peak learning rate of the prompt (the paper's recipe: optimizer=sgd, lr=40)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kind not in PROMPT_KINDS:
            raise ConfigError(f"unknown visual_prompt.kind '{self.kind}'; valid choices: {', '.join(PROMPT_KINDS)}")
        if self.init not in PROMPT_INITS:
            raise ConfigError(f"unknown visual_prompt.init '{self.init}'; valid choices: {', '.join(PROMPT_INITS)}")
        if not 1 <= self.prompt_size <= REFERENCE_SIZE // 2:
            raise ConfigError(f"visual_prompt.prompt_size must be between 1 and {REFERENCE_SIZE // 2} (half of the "
                              f"{REFERENCE_SIZE} px image), got {self.prompt_size}")


def scaled_size(prompt_size: int, image_size: tuple[int, int]) -> int:
    """A size given at 224 px, at the model's input size (at least one pixel)."""
    return max(1, round(prompt_size * min(image_size) / REFERENCE_SIZE))


class PixelPrompt(nn.Module):
    """The learned perturbation: ``pixels + prompt``, where the prompt is zero outside the frame or patch."""

    def __init__(self, kind: str, size: int, image_size: tuple[int, int], init: str = "normal",
                 eval_seed: int = 0) -> None:
        super().__init__()
        height, width = image_size
        if 2 * size > min(height, width):
            raise ConfigError(f"visual prompt of {size} px is over half the {height}x{width} image")
        self.kind, self.size, self.image_size = kind, size, (height, width)
        fill = torch.randn if init == "normal" else torch.zeros
        if kind == "padding":  # the paper's PadPrompter: top and bottom bands, left and right between them
            self.pad_up = nn.Parameter(fill(1, 3, size, width))
            self.pad_down = nn.Parameter(fill(1, 3, size, width))
            self.pad_left = nn.Parameter(fill(1, 3, height - 2 * size, size))
            self.pad_right = nn.Parameter(fill(1, 3, height - 2 * size, size))
        else:
            self.patch = nn.Parameter(fill(1, 3, size, size))
        generator = torch.Generator().manual_seed(eval_seed)
        self.register_buffer("eval_corner", torch.tensor([
            int(torch.randint(0, height - size + 1, (1,), generator=generator)),
            int(torch.randint(0, width - size + 1, (1,), generator=generator))]), persistent=False)

    def prompt(self, batch: int) -> torch.Tensor:
        """(1 or batch, 3, H, W): the perturbation added to each image."""
        height, width = self.image_size
        if self.kind == "padding":
            middle = torch.zeros(1, 3, height - 2 * self.size, width - 2 * self.size, device=self.pad_up.device,
                                 dtype=self.pad_up.dtype)
            row = torch.cat([self.pad_left, middle, self.pad_right], dim=3)
            return torch.cat([self.pad_up, row, self.pad_down], dim=2)
        if self.kind == "fixed-patch":
            corners = torch.zeros(1, 2, dtype=torch.long, device=self.patch.device)
        elif self.training:  # random-patch: a fresh place per image (torch's RNG: seeded, checkpointed)
            corners = torch.stack([torch.randint(0, height - self.size + 1, (batch,)),
                                   torch.randint(0, width - self.size + 1, (batch,))], dim=1).to(self.patch.device)
        else:
            corners = self.eval_corner.view(1, 2)
        return self._place(corners)

    def _place(self, corners: torch.Tensor) -> torch.Tensor:
        """The patch pasted at each (top, left) corner into a zero image, differentiably."""
        height, width = self.image_size
        rows = torch.arange(height, device=corners.device)[None] - corners[:, :1]  # (n, H) offsets into the patch
        cols = torch.arange(width, device=corners.device)[None] - corners[:, 1:]  # (n, W)
        inside = ((rows >= 0) & (rows < self.size))[:, :, None] & ((cols >= 0) & (cols < self.size))[:, None, :]
        pasted = self.patch[0][:, rows.clamp(0, self.size - 1)[:, :, None], cols.clamp(0, self.size - 1)[:, None, :]]
        return pasted.permute(1, 0, 2, 3) * inside[:, None].to(self.patch.dtype)  # (n, 3, H, W)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels + self.prompt(len(pixels)).to(pixels.dtype)


@register_method("visual-prompt", VisualPromptConfig)
class VisualPrompt(PromptMethod):
    """A learned pixel prompt (padding or patch) added to every image; the CLIP model stays frozen."""

    export_refusal = "its learned pixel prompt is added to every image before the model, outside its weights"
    pictures = {"visual_prompt.png": "the learned visual prompt (the perturbation alone, rescaled to 0-255)",
                "visual_prompt_on_sample.png": "the learned visual prompt on a test image, as the model sees it"}

    @classmethod
    def check(cls, config: VisualPromptConfig, bundle, classnames) -> None:
        height, width = bundle.preprocess.config.crop
        if 2 * scaled_size(config.prompt_size, (height, width)) > min(height, width):
            raise ConfigError(f"visual_prompt.prompt_size={config.prompt_size} is over half the model's "
                              f"{height}x{width} input")

    def __init__(self, bundle, classnames, config: VisualPromptConfig, templates) -> None:
        super().__init__(bundle, classnames, config, templates)
        image_size = tuple(bundle.preprocess.config.crop)
        self.prompter = PixelPrompt(config.kind, scaled_size(config.prompt_size, image_size), image_size,
                                    config.init, config.eval_seed)

    def image_features(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.bundle.encode_image(self.prompter(inputs.to(self.bundle.device)), normalize=False)

    changes_towers = True  # the prompt is added to every image before the image tower

    @contextmanager
    def adapted_towers(self) -> Iterator[ClipBundle]:
        """The image tower with the learned prompt added to its input (random-patch: at its evaluation place)."""
        bundle, prompter = self.bundle, self.prompter

        def features(model, pixels):
            return bundle.image_features_fn(model, prompter(pixels))

        with self.evaluating():
            yield dataclasses.replace(bundle, image_features_fn=features)

    @torch.no_grad()
    def write_pictures(self, run_dir: Path, sample_pixels: torch.Tensor) -> None:
        """The perturbation alone (random-patch: at its evaluation place) and added to one preprocessed image."""
        was_training = self.prompter.training
        self.prompter.eval()
        try:
            prompt = self.prompter.prompt(1)[0].float().cpu()
        finally:
            self.prompter.train(was_training)
        config = self.preprocess.config
        mean = torch.tensor(config.mean).view(3, 1, 1)
        std = torch.tensor(config.std).view(3, 1, 1)
        seen = ((sample_pixels.float().cpu() + prompt) * std + mean).clamp(0, 1)  # de-normalised
        _write_png(run_dir / "visual_prompt.png", rescaled_to_bytes(prompt))
        _write_png(run_dir / "visual_prompt_on_sample.png", (seen * 255).round().to(torch.uint8))


def rescaled_to_bytes(prompt: torch.Tensor) -> torch.Tensor:
    """(3, H, W) uint8: the perturbation's range (zero included) stretched to 0-255 over all channels, so its
    untouched pixels share one grey level; an all-zero prompt is black."""
    low, high = float(prompt.min().clamp(max=0)), float(prompt.max().clamp(min=0))
    if high == low:
        return torch.zeros(prompt.shape, dtype=torch.uint8)
    return ((prompt - low) / (high - low) * 255).round().to(torch.uint8)


def _write_png(path: Path, image: torch.Tensor) -> None:
    from PIL import Image

    array = image.permute(1, 2, 0).contiguous().numpy()
    atomic_save(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))
