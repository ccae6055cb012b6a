"""``vision-prefix``: prefix-tuning (Li & Liang, 2021) of the image tower: learned keys and values per layer.

Every attention layer from ``layer`` on attends to ``length`` extra key/value vectors of its own besides the image
tokens; the queries, and so the sequence, are unchanged. While training the prefixes are reparameterised as in the
paper (and peft's ``PrefixEncoder``): a small embedding through an MLP (``hidden`` units, tanh) gives every
layer's keys and values, which trains more stably than free vectors. The saved weights hold the collapsed result,
plain (layers, 2, length, width) tensors, so a finished run carries no MLP.

peft's prefix tuning targets language models' ``past_key_values``, which a CLIP image tower does not take, so this
is a small module of ours. It plugs into transformers' public attention interface (``methods/attention.py``): the
image tower's attention implementation becomes ``clipadapt_extra_kv``, which puts the prefix in front of the keys
and values and hands over to the implementation the model used before (sdpa or eager).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from clipadapt.config import option
from clipadapt.engine.checkpoint import check_metadata
from clipadapt.engine.trainable import WEIGHTS_FILE
from clipadapt.errors import ConfigError
from clipadapt.methods.attention import install
from clipadapt.methods.base import register_method
from clipadapt.methods.prompt_base import PromptMethod, PromptMethodConfig
from clipadapt.methods.towers import check_layer, vision_layers


@dataclass
class VisionPrefixConfig(PromptMethodConfig):
    length: int = option(10, help="prefix key/value vectors per layer (0: none, the frozen model)")
    layer: int = option(0, help="first layer that gets a prefix")
    hidden: int = option(512, help="width of the reparameterisation MLP (the paper's 512)")
    reparameterize: bool = option(True, help="train through the MLP (collapsed for saving); false: free vectors")
    lr: float = option(1e-3, help="peak learning rate of the prefix")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.length < 0:
            raise ConfigError(f"vision_prefix.length must be >= 0, got {self.length}")
        if self.layer < 0:
            raise ConfigError(f"vision_prefix.layer must be >= 0, got {self.layer}")
        if self.hidden <= 0:
            raise ConfigError(f"vision_prefix.hidden must be positive, got {self.hidden}")


class VisionPrefix(nn.Module):
    """Per-layer key/value prefixes, reparameterised by an MLP or (collapsed) plain tensors."""

    def __init__(self, layers: int, length: int, width: int, hidden: int, reparameterize: bool) -> None:
        super().__init__()
        self.layers, self.length, self.width = layers, length, width
        self.base_implementation = "sdpa"  # set by attention.install
        if reparameterize:
            self.embedding = nn.Parameter(torch.randn(length, width))  # nn.Embedding's N(0, 1), as peft's
            self.mlp_in = nn.Linear(width, hidden)
            self.mlp_out = nn.Linear(hidden, layers * 2 * width)
        else:
            self.key_values_free = nn.Parameter(0.02 * torch.randn(layers, 2, length, width))
        if length == 0:
            self.requires_grad_(False)

    @property
    def collapsed(self) -> bool:
        return not hasattr(self, "mlp_out")

    def key_values(self, index: int) -> torch.Tensor:
        """(2, length, width): the keys and values of the ``index``-th prefixed layer."""
        if self.collapsed:
            return self.key_values_free[index]
        hidden = torch.tanh(self.mlp_in(self.embedding))  # (length, hidden)
        weight = self.mlp_out.weight.view(self.layers, 2, self.width, -1)[index]  # only this layer's rows
        bias = self.mlp_out.bias.view(self.layers, 2, self.width)[index]
        return torch.einsum("lh,kdh->kld", hidden, weight) + bias[:, None]

    def extend(self, module: nn.Module, index: int, key: torch.Tensor,
               value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Put this layer's prefix keys and values in front of the image tokens' (layers before ``layer``: none)."""
        if self.length == 0 or index < 0:
            return key, value, 0
        batch, heads, _, head_dim = key.shape
        extra = self.key_values(index).to(key.dtype).view(2, self.length, heads, head_dim).permute(0, 2, 1, 3)
        return (torch.cat([extra[0].expand(batch, -1, -1, -1), key], dim=2),
                torch.cat([extra[1].expand(batch, -1, -1, -1), value], dim=2), self.length)

    def collapse(self) -> None:
        """Replace the MLP by the tensors it produces (same values, bit for bit)."""
        if self.collapsed:
            return
        with torch.no_grad():
            values = torch.stack([self.key_values(i) for i in range(self.layers)])
        del self.embedding, self.mlp_in, self.mlp_out
        self.key_values_free = nn.Parameter(values, requires_grad=self.length > 0)


@register_method("vision-prefix", VisionPrefixConfig)
class VisionPrefixTuning(PromptMethod):
    """Prefix-tuning of the image tower: learned keys/values in every attention layer from `layer` on."""

    export_refusal = "its learned keys and values join every attention layer, outside the model's weights"
    changes_towers = True  # every image the tower encodes attends to the prefixes

    @classmethod
    def check(cls, config: VisionPrefixConfig, bundle, classnames) -> None:
        check_layer(config.layer, len(vision_layers(bundle, "vision-prefix")), "vision_prefix.layer")

    def __init__(self, bundle, classnames, config: VisionPrefixConfig, templates) -> None:
        super().__init__(bundle, classnames, config, templates)
        layers = vision_layers(bundle, "vision-prefix")
        width = bundle.vision_tower.config.hidden_size
        self.prefix = VisionPrefix(len(layers) - config.layer, config.length, width, config.hidden,
                                   config.reparameterize)
        install(bundle.vision_tower, self.prefix, config.layer)

    def collapse(self) -> None:
        self.prefix.collapse()

    def num_parameters(self) -> dict:
        """Also ``saved``: what the run keeps after collapsing the MLP (layers x 2 x length x width, and the head)."""
        counts = super().num_parameters()
        prefix = self.prefix
        head = sum(p.numel() for p in self.head.parameters() if p.requires_grad)
        counts["saved"] = prefix.layers * 2 * prefix.length * prefix.width * (prefix.length > 0) + head
        return counts

    def save_weights(self, directory: Path) -> None:
        """The collapsed prefix (no MLP) and the head, as safetensors."""
        if not self.prefix.collapsed:
            self.collapse()
        super().save_weights(directory)

    def load_weights(self, directory: Path) -> None:
        check_metadata(directory / WEIGHTS_FILE, self.metadata())
        self.collapse()
        self.load_trainable_state(load_file(str(directory / WEIGHTS_FILE)), source=str(directory / WEIGHTS_FILE))
