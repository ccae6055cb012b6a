"""``maple``: Multi-modal Prompt Learning (Khattak et al., CVPR 2023): coupled deep prompts in both towers.

Language prompts: ``length`` learned vectors at the positions right after the start token of every class prompt,
in the input of each of the first ``depth`` text layers (layer 0: the context in the token embeddings, as CoOp's;
layers 1 .. depth-1: a fresh set replacing what the previous layer made of them). Vision prompts: the same number
of tokens appended to the image tower's sequence (layer 0: after the embeddings, before the pre-layer-norm, as the
reference; deeper layers: replacing the previous layer's outputs at those positions), each produced from its
layer's language prompts by a coupling function, a Linear from text width to vision width per layer. Layers from
``depth`` on carry the prompts' outputs along. The prompt "a photo of a {name}." keeps its words after the learned
ones (the reference's MaPLe learns the first ``length`` words of the init phrase and keeps the rest).

Only the prompts and the couplings train; the text classifier is recomputed through the prompted text tower every
step (classes prompts, once per step, with CoOp's shared-prefix encoding) and the images go through the prompted
image tower (a pixel method). peft has no MaPLe, so this is ours, built like ``vpt`` and ``coop``: forward hooks on
transformers' own CLIP modules, no copied layer code.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from clipadapt.config import option
from clipadapt.engine.trainable import OptimizerConfig
from clipadapt.errors import ConfigError
from clipadapt.methods.base import Method, register_method
from clipadapt.methods.coop import CoOpConfig, PromptLearner, PromptTokens, build_prompt_tokens
from clipadapt.methods.towers import text_layers, text_token_embedding, vision_layers
from clipadapt.models.bundle import ClipBundle


@dataclass
class MaPLeConfig(OptimizerConfig):
    depth: int | None = option(None, help="layers of both towers that get prompts (default: the reference's 9 of "
                                          "CLIP's 12 layers, in proportion for other models: round(9/12 x layers), "
                                          "at least 1; the run records it in metrics.json's effective)")
    length: int = option(2, help="prompt tokens per layer and tower")
    init: str = option("a photo of a", help="the prompt's words: the first `length` start the learned prompt, the "
                                            "rest stay words (empty, or fewer words than `length`: N(0, 0.02))")
    share_prefix: bool = option(True, help="encode the tokens all class prompts share once per step: the same "
                                           "numbers, less work")
    lr: float = option(3.5e-3, help="peak learning rate (the reference's SGD at 0.0035)")
    optimizer: str = option("sgd", help="adamw or sgd (the reference: SGD, momentum 0.9)")
    weight_decay: float = option(5e-4, help="weight decay (the reference's, Dassl's default 5e-4)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.depth is not None and self.depth < 1:
            raise ConfigError(f"maple.depth must be >= 1 (1: prompts in the first layer only), got {self.depth}")
        if self.length < 1:
            raise ConfigError(f"maple.length must be >= 1, got {self.length}")


# the reference's PROMPT_DEPTH 9 of ViT-B/16's 12 layers (configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml:36 at
# muzairkhattak/multimodal-prompt-learning@69bce21ae8eda80ad6187534b2dce09cf6c59e17)
REFERENCE_DEPTH, REFERENCE_LAYERS = 9, 12


def model_depth(bundle: ClipBundle) -> int:
    """Layers of the shallower tower: how deep prompts can go."""
    return min(len(vision_layers(bundle, "maple")), len(text_layers(bundle, "maple")))


def prompt_depth(config: MaPLeConfig, bundle: ClipBundle) -> int:
    """``maple.depth``, else the reference's share of the model's layers rounded half up (9 of 12: 9 on CLIP ViT-B,
    2 on world:tiny's 2 layers, 18 on 24), at least 1."""
    if config.depth is not None:
        return config.depth
    return max(1, int(REFERENCE_DEPTH * model_depth(bundle) / REFERENCE_LAYERS + 0.5))


def maple_prompt_tokens(bundle: ClipBundle, classnames, config: MaPLeConfig) -> PromptTokens:
    """Token ids of every class's prompt; the learned positions are the first ``length`` after the start token."""
    phrase = build_prompt_tokens(bundle, classnames, CoOpConfig(init=config.init)) if config.init.strip() else None
    if phrase is None or len(phrase.init_ids) < config.length:  # as the reference: random, "X X ... {name}."
        return build_prompt_tokens(bundle, classnames, CoOpConfig(n_ctx=config.length))
    return dataclasses.replace(phrase, context_positions=phrase.context_positions[:, :config.length],
                               init_ids=phrase.init_ids[:config.length])


class DeepTextPrompts(PromptLearner):
    """The language side: CoOp's context (layer 0) plus a fresh set of prompts at each deeper layer below ``depth``."""

    def __init__(self, bundle: ClipBundle, classnames, config: MaPLeConfig) -> None:
        context = CoOpConfig(share_prefix=config.share_prefix)
        super().__init__(bundle, classnames, context, maple_prompt_tokens(bundle, classnames, config))
        width, depth = self.ctx.shape[-1], prompt_depth(config, bundle)
        self.deep = nn.ParameterList([nn.Parameter(0.02 * torch.randn(self.n_ctx, width))
                                      for _ in range(depth - 1)])
        self.handles = [layer.register_forward_pre_hook(partial(self._replace, index), with_kwargs=True)
                        for index, layer in enumerate(text_layers(bundle, "maple")[1:depth])]

    def layer_prompts(self) -> list[torch.Tensor]:
        """The language prompts of layers 0 .. depth-1."""
        return [self.ctx, *self.deep]

    def _replace(self, index: int, layer: nn.Module, args: tuple, kwargs: dict):
        """A deeper layer's prompts in place of the previous layer's outputs at positions 1 .. length (only while
        this learner encodes its prompts, and not in the pass of each class's own tokens: the shared prefix holds
        them there)."""
        if self._injection is None or self.prefix.mode == "extend":
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        prompts = self.deep[index].to(hidden.dtype).expand(len(hidden), -1, -1)
        hidden = torch.cat([hidden[:, :1], prompts, hidden[:, 1 + self.n_ctx:]], dim=1)
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}


class VisionPrompts(nn.Module):
    """The vision side: each layer's prompts are its coupling of the language prompts (Linear text -> vision)."""

    def __init__(self, bundle: ClipBundle, text: DeepTextPrompts, depth: int) -> None:
        super().__init__()
        self._text = [text]  # not a submodule: the head owns the language prompts
        width_in, width_out = text.ctx.shape[-1], bundle.vision_tower.config.hidden_size
        # as the reference: layer 0's coupling on its own, the deeper layers' starting as copies of one Linear
        deeper = nn.Linear(width_in, width_out)
        self.coupling = nn.ModuleList([nn.Linear(width_in, width_out)] + [copy.deepcopy(deeper)
                                                                          for _ in range(depth - 1)])
        self.length = text.n_ctx
        self.handles = [bundle.vision_tower.embeddings.register_forward_hook(self._append)]
        self.handles += [layer.register_forward_pre_hook(partial(self._replace, index + 1), with_kwargs=True)
                         for index, layer in enumerate(vision_layers(bundle, "maple")[1:depth])]

    def prompts(self, index: int) -> torch.Tensor:
        return self.coupling[index](self._text[0].layer_prompts()[index])

    def _append(self, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        return torch.cat([output, self.prompts(0).to(output.dtype).expand(len(output), -1, -1)], dim=1)

    def _replace(self, index: int, layer: nn.Module, args: tuple, kwargs: dict):
        hidden = args[0] if args else kwargs["hidden_states"]
        prompts = self.prompts(index).to(hidden.dtype).expand(len(hidden), -1, -1)
        hidden = torch.cat([hidden[:, :-self.length], prompts], dim=1)
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}


@register_method("maple", MaPLeConfig)
class MaPLe(Method):
    """Multi-modal prompts (MaPLe): deep language prompts, and vision prompts coupled to them, in the first layers."""

    # val-free by its recipe (train.keep=last): the reference trains a fixed number of epochs and keeps the last
    # muzairkhattak/multimodal-prompt-learning@69bce21ae8eda80ad6187534b2dce09cf6c59e17
    # configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml:3 (batch 4), :15-22 (SGD 0.0035, 5 epochs, Dassl's
    # constant warmup epoch at 1e-5 and per-epoch cosine: engine/schedules.py); no gradient clipping and the
    # schedule stepped after an epoch's last batch (trainers/maple.py:281-290); a fresh random resized crop (8-100%
    # of the image, Dassl's RRCROP_SCALE) + flip of every image each epoch (the config's :10-13;
    # KaiyangZhou/Dassl.pytorch@c61a1b570ac6333bd50fb5ae06aea59002fb20bb dassl/config/defaults.py:40)
    train_defaults = {"keep": "last", "epochs": 5, "batch_size": 4, "schedule": "dassl", "grad_clip": 0.0,
                      "augment": "crop-flip", "crop_scale": [0.08, 1.0]}
    # its vision prompts (coupled to the language prompts) join every image the tower encodes; its deeper language
    # prompts act only inside its own class prompts, which a control's templates replace: that text tower is frozen
    changes_towers = True

    @classmethod
    def check(cls, config: MaPLeConfig, bundle, classnames) -> None:
        text_token_embedding(bundle, "maple")
        depth = model_depth(bundle)
        if config.depth is not None and config.depth > depth:
            raise ConfigError(f"maple.depth={config.depth} is beyond the model's depth: its towers have {depth} "
                              f"layers (the shallower one), so maple.depth must be between 1 and {depth}")
        maple_prompt_tokens(bundle, classnames, config)  # the prompt must fit the text encoder

    def __init__(self, bundle, classnames, config: MaPLeConfig, templates) -> None:
        super().__init__(bundle, classnames, config, templates)
        self.depth = prompt_depth(config, bundle)
        self.vision_prompts = VisionPrompts(bundle, self.head, self.depth)

    def effective_settings(self) -> dict:
        """The prompt depth it used (the recipe's proportion of the model's layers where maple.depth is unset)."""
        return {"maple.depth": self.depth}

    def per_class_state(self) -> list[str]:
        """Prompts and couplings serve any classes."""
        return []

    def make_head(self, bundle, templates) -> nn.Module:
        return DeepTextPrompts(bundle, self.classnames, self.config)
