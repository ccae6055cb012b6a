"""``vpt``: Visual Prompt Tuning (Jia et al., 2022): learned tokens in the vision transformer's sequence.

``shallow``: one set of ``tokens`` prompt vectors inserted into the sequence before layer ``layer``. ``deep``: a
fresh set at every layer from ``layer`` on, each replacing the previous layer's outputs at the prompt positions, so
the sequence length stays constant. ``prepend`` puts the prompts right after the class token, ``append`` at the end
of the sequence; either way the class token stays at position 0 and is what CLIP pools. Prompts start from the
paper's uniform (Xavier-style) initialisation and may be dropped out while training.

peft has no VPT for a CLIP image tower, so this is a small module of ours. It wraps nothing and copies no code:
forward pre-hooks on transformers' own encoder layers edit the hidden states each layer receives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from clipadapt.config import option
from clipadapt.errors import ConfigError
from clipadapt.methods.base import register_method
from clipadapt.methods.prompt_base import PromptMethod, PromptMethodConfig
from clipadapt.methods.towers import check_layer, vision_layers

DEPTHS = ("shallow", "deep")
POSITIONS = ("prepend", "append")


@dataclass
class VPTConfig(PromptMethodConfig):
    tokens: int = option(8, help="prompt tokens per set (0: none, the frozen model)")
    depth: str = option("shallow", help="shallow (one set before `layer`) or deep (a new set at every layer from "
                                        "`layer` on)")
    layer: int = option(0, help="first layer that receives prompts (0: before the first transformer layer)")
    position: str = option("prepend", help="prepend (right after the class token) or append (end of the sequence)")
    # the reference's MODEL.PROMPT.DROPOUT, 0.0, which no shipped config sets (KMnP/vpt@
    # 4410440ec1b489f24f66b9fad3d9b10ff3443567 src/configs/config.py:74)
    dropout: float = option(0.0, help="dropout on the prompt tokens while training")
    lr: float = option(3e-2, help="peak learning rate of the prompts")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tokens < 0:
            raise ConfigError(f"vpt.tokens must be >= 0, got {self.tokens}")
        if self.layer < 0:
            raise ConfigError(f"vpt.layer must be >= 0, got {self.layer}")
        if self.depth not in DEPTHS:
            raise ConfigError(f"unknown vpt.depth '{self.depth}'; valid choices: {', '.join(DEPTHS)}")
        if self.position not in POSITIONS:
            raise ConfigError(f"unknown vpt.position '{self.position}'; valid choices: {', '.join(POSITIONS)}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"vpt.dropout must be in [0, 1), got {self.dropout}")


class PromptTokens(nn.Module):
    """Prompt token sets and the hooks that put them into the layers' input sequences."""

    def __init__(self, layers: nn.ModuleList, config: VPTConfig, dim: int, patch_size: int) -> None:
        super().__init__()
        self.tokens, self.position = config.tokens, config.position
        sets = 1 if config.depth == "shallow" else len(layers) - config.layer
        self.prompts = nn.Parameter(torch.empty(sets, config.tokens, dim), requires_grad=config.tokens > 0)
        bound = math.sqrt(6.0 / float(3 * patch_size * patch_size + dim))  # the paper's uniform initialisation
        nn.init.uniform_(self.prompts, -bound, bound)
        self.dropout = nn.Dropout(config.dropout)
        self.handles = []
        if config.tokens > 0:
            for index in range(sets):
                hook = partial(self._edit, index)
                self.handles.append(layers[config.layer + index].register_forward_pre_hook(hook, with_kwargs=True))

    def _edit(self, index: int, layer: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Insert (first set) or replace (deeper sets) the prompt positions of the layer's input."""
        hidden = args[0] if args else kwargs["hidden_states"]
        prompts = self.dropout(self.prompts[index]).to(hidden.dtype).expand(len(hidden), -1, -1)
        n = self.tokens
        if self.position == "prepend":
            rest = hidden[:, 1:] if index == 0 else hidden[:, 1 + n:]
            hidden = torch.cat([hidden[:, :1], prompts, rest], dim=1)
        else:
            hidden = torch.cat([hidden if index == 0 else hidden[:, :-n], prompts], dim=1)
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


@register_method("vpt", VPTConfig)
class VPT(PromptMethod):
    """Visual prompt tuning: learned tokens in the image tower's sequence (shallow or deep)."""

    export_refusal = "its learned tokens are inserted into the image tower's sequence, outside its weights"
    changes_towers = True  # its hooks put the tokens into every image the tower encodes

    @classmethod
    def check(cls, config: VPTConfig, bundle, classnames) -> None:
        check_layer(config.layer, len(vision_layers(bundle, "vpt")), "vpt.layer")

    def __init__(self, bundle, classnames, config: VPTConfig, templates) -> None:
        super().__init__(bundle, classnames, config, templates)
        layers = vision_layers(bundle, "vpt")
        vision = bundle.vision_tower.config
        self.prompt_tokens = PromptTokens(layers, config, vision.hidden_size, vision.patch_size)
