"""How the decoder adapts, one registered method per way (the bridge always trains):

* ``bridge-only``: the decoder frozen (ClipCap's frozen-GPT-2 setting).
* ``full``: every decoder weight trains, at a lower learning rate than the bridge.
* ``lora``: peft LoRA on the decoder's attention projections (GPT-2's fused ``c_attn``; ``q_proj``/``v_proj`` on
  other causal LMs).
* ``adapter``: bottleneck adapters (Houlsby et al. 2019) on the output of every decoder block's attention and MLP,
  before the residual sum: ``h + up(gelu(down(h)))``, ``up`` initialised to zero so training starts from the
  pretrained decoder. The ``adapters`` library, which implements these, requires transformers 4.x; this is a small
  module of ours built on forward hooks, so transformers' GPT-2 blocks are used as they are.

* ``prefix``: peft prefix-tuning (Li & Liang 2021): ``length`` learned key/value vectors in every decoder layer,
  reparameterised through peft's MLP prefix encoder while training. Decoding goes through the base decoder's
  ``generate`` with peft's prefix as the starting cache (``Captioner.generate``): peft's own prompt-learning
  ``generate`` cannot start from ``inputs_embeds`` in transformers 5.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from clipadapt.captioning.model import Captioner
from clipadapt.config import option, require_positive, section_name
from clipadapt.engine.trainable import OptimizerConfig
from clipadapt.errors import ConfigError
from clipadapt.models.peft_wrap import get_peft_model_quietly
from clipadapt.registry import Registry


@dataclass
class DecoderMethodConfig(OptimizerConfig):
    """The optimizer fields of the classification methods (``lr``, ``weight_decay``, ``optimizer``, ``momentum``):
    ``lr`` and ``weight_decay`` are those of what the method trains in the decoder (the bridge has its own in
    ``bridge.*``), ``optimizer`` and ``momentum`` those of the one optimizer over both."""

    lr: float = option(1e-3, help="learning rate of what the method trains in the decoder")
    weight_decay: float = option(0.0, help="weight decay of what the method trains in the decoder (the bridge's: "
                                           "bridge.weight_decay)")


@dataclass
class CaptionMethodEntry:
    cls: type
    config_cls: type


CAPTION_METHODS: Registry[CaptionMethodEntry] = Registry("caption method")


def register_caption_method(name: str, config_cls: type):
    def wrap(cls):
        cls.name = name
        config_cls._section = section_name(name)  # its errors name the --set section
        doc = (cls.__doc__ or "").strip().splitlines()
        CAPTION_METHODS.register(name, CaptionMethodEntry(cls, config_cls), help=doc[0] if doc else "")
        return cls

    return wrap


class DecoderMethod:
    """Changes ``captioner.decoder`` (or adds modules to the captioner) and names what it trains."""

    name = "?"

    def __init__(self, config: DecoderMethodConfig) -> None:
        self.config = config

    def apply(self, captioner: Captioner) -> list[str]:
        """Full parameter names (inside the captioner) that this method trains besides the bridge."""
        raise NotImplementedError


def decoder_blocks(decoder: nn.Module, method: str) -> nn.ModuleList:
    """The transformer blocks of a GPT-2-family decoder."""
    blocks = getattr(getattr(decoder, "transformer", None), "h", None)
    if not isinstance(blocks, nn.ModuleList):
        raise ConfigError(f"{method} needs a GPT-2-family decoder (transformer.h blocks); "
                          f"this one is {type(decoder).__name__}")
    return blocks


def apply_method(captioner: Captioner, method: DecoderMethod) -> list[str]:
    """Apply ``method``, then train exactly the bridge and what the method names; returns those names."""
    decoder_names = method.apply(captioner)
    trained = set(captioner.bridge_parameter_names()) | set(decoder_names)
    for name, parameter in captioner.named_parameters():
        parameter.requires_grad_(name in trained)
    unknown = trained - {name for name, _ in captioner.named_parameters()}
    if unknown:
        raise RuntimeError(f"{method.name} names parameters the captioner does not have: {sorted(unknown)[:3]}")
    return sorted(trained)


@dataclass
class BridgeOnlyConfig(DecoderMethodConfig):
    pass


@register_caption_method("bridge-only", BridgeOnlyConfig)
class BridgeOnly(DecoderMethod):
    """The decoder frozen; only the bridge trains (ClipCap with a frozen GPT-2)."""

    def apply(self, captioner: Captioner) -> list[str]:
        return []


@dataclass
class FullConfig(DecoderMethodConfig):
    lr: float = option(1e-4, help="learning rate of the decoder's weights")


@register_caption_method("full", FullConfig)
class Full(DecoderMethod):
    """Every decoder weight trains."""

    def apply(self, captioner: Captioner) -> list[str]:
        return [f"decoder.{name}" for name, _ in captioner.decoder.named_parameters()]


@dataclass
class DecoderLoRAConfig(DecoderMethodConfig):
    r: int = option(8, help="rank of the update")
    alpha: float = option(16.0, help="scaling: the update is multiplied by alpha / r")
    dropout: float = option(0.05, help="dropout on the adapter's input")
    targets: list[str] | None = option(None, help="module names to adapt (default: c_attn on GPT-2, "
                                                  "q_proj,v_proj otherwise)")

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive(self, ("r", "alpha"), "lora:")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")


@register_caption_method("lora", DecoderLoRAConfig)
class DecoderLoRA(DecoderMethod):
    """peft LoRA on the decoder's attention (r=8, alpha=16)."""

    def apply(self, captioner: Captioner) -> list[str]:
        import warnings

        from peft import LoraConfig

        names = {name.rsplit(".", 1)[-1] for name, _ in captioner.decoder.named_modules()}
        targets = self.config.targets or (["c_attn"] if "c_attn" in names else ["q_proj", "v_proj"])
        missing = [t for t in targets if t not in names]
        if missing:
            raise ConfigError(f"lora target(s) {', '.join(missing)} match no module of the decoder")
        config = LoraConfig(r=self.config.r, lora_alpha=self.config.alpha, lora_dropout=self.config.dropout,
                            target_modules=targets, fan_in_fan_out="c_attn" in targets)
        with warnings.catch_warnings():  # peft's note that GPT-2's Conv1D needs fan_in_fan_out, which we set
            warnings.simplefilter("ignore", UserWarning)
            captioner.decoder = get_peft_model_quietly(captioner.decoder, config)
        return [f"decoder.{n}" for n, _ in captioner.decoder.named_parameters() if "lora_" in n]


@dataclass
class AdapterConfig(DecoderMethodConfig):
    bottleneck: int = option(64, help="hidden size of each adapter")

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive(self, ("bottleneck",), "adapter:")


class Bottleneck(nn.Module):
    def __init__(self, width: int, bottleneck: int) -> None:
        super().__init__()
        self.down = nn.Linear(width, bottleneck)
        self.up = nn.Linear(bottleneck, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.up(nn.functional.gelu(self.down(hidden)))


def _adapt_output(adapter: Bottleneck):
    def hook(module, args, output):
        if isinstance(output, tuple):  # attention returns (output, weights)
            return (adapter(output[0]), *output[1:])
        return adapter(output)

    return hook


@register_caption_method("adapter", AdapterConfig)
class DecoderAdapter(DecoderMethod):
    """Bottleneck adapters after every decoder block's attention and MLP (ours: no transformers-5 library)."""

    def apply(self, captioner: Captioner) -> list[str]:
        blocks = decoder_blocks(captioner.decoder, "adapter")
        width = captioner.decoder.get_input_embeddings().embedding_dim
        captioner.adapters = nn.ModuleList()
        for block in blocks:
            pair = nn.ModuleDict({"attn": Bottleneck(width, self.config.bottleneck),
                                  "mlp": Bottleneck(width, self.config.bottleneck)})
            block.attn.register_forward_hook(_adapt_output(pair["attn"]))
            block.mlp.register_forward_hook(_adapt_output(pair["mlp"]))
            captioner.adapters.append(pair)
        return [f"adapters.{n}" for n, _ in captioner.adapters.named_parameters()]


@dataclass
class DecoderPrefixConfig(DecoderMethodConfig):
    length: int = option(10, help="prefix key/value vectors per decoder layer (peft's num_virtual_tokens)")
    projection: bool = option(True, help="train the prefix through an MLP (peft's prefix_projection)")
    hidden: int = option(512, help="width of that MLP (peft's encoder_hidden_size)")
    lr: float = option(5e-3, help="learning rate of the prefix")

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive(self, ("length", "hidden"), "prefix:")


@register_caption_method("prefix", DecoderPrefixConfig)
class DecoderPrefix(DecoderMethod):
    """peft prefix-tuning: learned keys and values in every decoder layer (10 per layer)."""

    def apply(self, captioner: Captioner) -> list[str]:
        from peft import PrefixTuningConfig

        config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=self.config.length,
                                    prefix_projection=self.config.projection,
                                    encoder_hidden_size=self.config.hidden)
        captioner.decoder = get_peft_model_quietly(captioner.decoder, config)
        return [f"decoder.{n}" for n, _ in captioner.decoder.named_parameters() if "prompt_encoder" in n]


def build_caption_method(name: str, settings: dict | None = None) -> DecoderMethod:
    entry = CAPTION_METHODS.get(name)
    try:
        config = entry.config_cls(**(settings or {}))
    except TypeError as error:
        raise ConfigError(f"bad setting for caption method {name}: {error}") from None
    return entry.cls(config)
