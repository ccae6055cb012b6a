"""Extra keys and values in a transformers attention layer, through transformers' public attention interface.

Prefix-tuning (learned keys and values) and CoOp's shared-prefix encoding (keys and values computed once for the
context every class shares) both need attention over ``[extra keys; keys]`` with the queries unchanged.
transformers' CLIP attention takes no ``past_key_values``, but it calls whichever function is registered for the
model's ``attn_implementation``: ``install`` registers ``clipadapt_extra_kv`` (and sdpa's mask builder under the
same name), switches one tower to it, and tells each attention module where its extra keys and values come from.
The function adds them and hands over to the implementation the tower had before (sdpa or eager), so nothing of
transformers' attention code is copied.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from clipadapt.errors import ConfigError

EXTRA_KV_ATTENTION = "clipadapt_extra_kv"
SOURCE = "_clipadapt_kv_source"  # on each attention module: (KeyValueSource, layer index)
BASES = ("sdpa", "eager")


class KeyValueSource(Protocol):
    base_implementation: str

    def extend(self, module: nn.Module, index: int, key: torch.Tensor,
               value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(key, value, extra)``: the layer's keys and values with ``extra`` positions put in front."""


def _base_attention(module: nn.Module, implementation: str) -> Callable:
    if implementation != "eager":
        return ALL_ATTENTION_FUNCTIONS[implementation]
    return sys.modules[type(module).__module__].eager_attention_forward


def _visible_prefix(mask: torch.Tensor | None, extra: int, query: torch.Tensor, key: torch.Tensor,
                    causal: bool) -> torch.Tensor | None:
    """The mask with ``extra`` leading key positions that every query may see (a bool mask)."""
    if mask is not None:
        if mask.dtype != torch.bool:  # an additive float mask: 0 where visible
            mask = mask == 0
        return nn.functional.pad(mask, (extra, 0), value=True)
    if not causal:
        return None
    queries, keys = query.shape[2], key.shape[2]
    offsets = torch.arange(keys, device=query.device)[None, :] - torch.arange(queries, device=query.device)[:, None]
    return (offsets <= extra)[None, None]  # query i sees the extra positions and keys up to its own


def extra_kv_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attention_mask: torch.Tensor | None, **kwargs):
    source, index = getattr(module, SOURCE)
    key, value, extra = source.extend(module, index, key, value)
    if extra:
        causal = bool(kwargs.get("is_causal", getattr(module, "is_causal", False))) and query.shape[2] > 1
        attention_mask = _visible_prefix(attention_mask, extra, query, key, causal)
        kwargs["is_causal"] = False
    if source.base_implementation == "eager" and attention_mask is not None and attention_mask.dtype == torch.bool:
        attention_mask = torch.zeros(attention_mask.shape, dtype=query.dtype, device=query.device).masked_fill(
            ~attention_mask, torch.finfo(query.dtype).min)
    return _base_attention(module, source.base_implementation)(module, query, key, value, attention_mask, **kwargs)


def install(tower: nn.Module, source: KeyValueSource, first_layer: int = 0) -> None:
    """Route ``tower``'s attention through ``source`` (layer ``i`` gets index ``i - first_layer``)."""
    AttentionInterface.register(EXTRA_KV_ATTENTION, extra_kv_attention)
    AttentionMaskInterface.register(EXTRA_KV_ATTENTION, sdpa_mask)
    implementation = tower.config._attn_implementation
    if implementation == EXTRA_KV_ATTENTION:
        raise ConfigError("this model's attention is already extended by another method; load a fresh model")
    if implementation not in BASES:
        raise ConfigError(f"extra keys and values need the {' or '.join(BASES)} attention implementation, not "
                          f"'{implementation}'")
    source.base_implementation = implementation
    tower.set_attn_implementation(EXTRA_KV_ATTENTION)
    for i, layer in enumerate(tower.encoder.layers):
        # a plain attribute, not a submodule: the source belongs to the method, not to the model
        object.__setattr__(layer.self_attn, SOURCE, (source, i - first_layer))
