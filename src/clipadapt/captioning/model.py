"""The captioner: cached image-encoder outputs -> a trained bridge -> a transformers causal LM.

Bridges (``bridge.kind``):

* ``patch-prefix`` (default): the tower's tokens (class token and patches) projected to the decoder's width and put
  in front of the caption's embeddings; the decoder attends to them as to earlier words.
* ``cross-attention``: the projected tokens are ``encoder_hidden_states`` for cross-attention layers that
  transformers adds to GPT-2-family decoders (``add_cross_attention=True``; the new layers train with the bridge).
* ``mapper`` (ClipCap, Mokady et al. 2021): the pooled CLIP embedding mapped by an MLP to ``prefix_length`` prefix
  vectors.

The decoder is loaded with ``AutoModelForCausalLM`` (never ``trust_remote_code``); what of it trains is the decoder
method's business (captioning/methods.py), the bridge always trains. Text is ``[BOS] caption [EOS]`` with the
tokenizer's own specials (GPT-2's ``<|endoftext|>`` serves as both); the loss covers the caption and its EOS.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from clipadapt.captioning.encoder import PatchGeometry
from clipadapt.config import option
from clipadapt.errors import ConfigError

log = logging.getLogger(__name__)

BRIDGES = ("patch-prefix", "cross-attention", "mapper")
IGNORE = -100


@dataclass
class BridgeConfig:
    kind: str = option("patch-prefix", help="patch-prefix, cross-attention or mapper")
    prefix_length: int = option(10, help="mapper: prefix vectors made from the pooled embedding")
    hidden: int | None = option(None, help="mapper: MLP hidden size (default: prefix_length * width / 2, ClipCap's)")
    lr: float = option(1e-3, help="learning rate of the bridge (and of the new cross-attention layers)")
    weight_decay: float = option(0.0, help="weight decay of the bridge (the optimizer is the decoder method's)")

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"bridge.lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"bridge.weight_decay must be >= 0, got {self.weight_decay}")
        if self.kind not in BRIDGES:
            raise ConfigError(f"unknown bridge.kind '{self.kind}'; valid choices: {', '.join(BRIDGES)}")
        if self.prefix_length <= 0:
            raise ConfigError(f"bridge.prefix_length must be positive, got {self.prefix_length}")
        if self.hidden is not None and self.hidden <= 0:
            raise ConfigError(f"bridge.hidden must be positive, got {self.hidden}")


@dataclass
class Decoder:
    model: nn.Module  # a transformers causal LM
    tokenizer: object
    spec: str

    @property
    def width(self) -> int:
        return self.model.get_input_embeddings().embedding_dim

    @property
    def bos_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id


def load_decoder(spec: str, cross_attention: bool = False, device: str | torch.device = "cpu") -> Decoder:
    """A causal LM and its tokenizer from a hub id, a folder, or ``world:tiny-lm``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from clipadapt.models.checkpoints import named_checkpoint, named_checkpoints

    source = spec
    named = named_checkpoint(spec, "decoder")
    if named is not None:
        source = str(named.locate())
    elif spec.startswith("world:"):
        raise ConfigError(f"unknown decoder '{spec}'; the built-in ones are {', '.join(named_checkpoints('decoder'))}")
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot load decoder '{spec}': {str(error).splitlines()[0]}") from None
    causal = set(AutoModelForCausalLM._model_mapping.keys())
    if type(config) not in causal:
        raise ConfigError(f"decoder '{spec}' is a {config.model_type} model, not a causal language model "
                          "(use a GPT-2-family checkpoint)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise ConfigError(f"decoder '{spec}' has no usable tokenizer: {str(error).splitlines()[0]}") from None
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"decoder '{spec}' has a tokenizer without an end-of-text token")
    extra = {}
    if cross_attention:
        if not hasattr(config, "add_cross_attention"):
            raise ConfigError(f"decoder '{spec}' ({config.model_type}) cannot add cross-attention layers")
        extra["add_cross_attention"] = True
    if cross_attention:  # the new layers are missing from the checkpoint by design: say so once, quietly
        from transformers.utils import logging as hf_logging

        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            model = AutoModelForCausalLM.from_pretrained(source, **extra)
        finally:
            hf_logging.set_verbosity(level)
        log.info("decoder %s: new cross-attention layers, trained with the bridge", spec)
    else:
        model = AutoModelForCausalLM.from_pretrained(source)
    model = model.to(device)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # GPT-2 has none; padded positions are masked anyway
    return Decoder(model, tokenizer, spec)


def caption_ids(decoder: Decoder, text: str, max_length: int = 40) -> list[int]:
    """``[BOS] caption [EOS]`` token ids, the caption cut to fit ``max_length``."""
    tokenizer = decoder.tokenizer
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][: max_length - 2]
    return [decoder.bos_id, *ids, tokenizer.eos_token_id]


def pad_captions(rows: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 on padding and on the given BOS)."""
    length = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    labels = input_ids.masked_fill(mask == 0, IGNORE)
    labels[:, 0] = IGNORE  # BOS is given, not predicted
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def encode_captions(decoder: Decoder, captions: list[str], max_length: int = 40) -> dict[str, torch.Tensor]:
    """``[BOS] caption [EOS]`` token ids, right-padded: ``input_ids``, ``attention_mask`` and ``labels``."""
    return pad_captions([caption_ids(decoder, text, max_length) for text in captions],
                        decoder.tokenizer.pad_token_id)


class PatchProjection(nn.Module):
    """Tower tokens (width_v) -> decoder width; used by patch-prefix and cross-attention."""

    def __init__(self, geometry: PatchGeometry, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(geometry.width)
        self.proj = nn.Linear(geometry.width, width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(tokens))


class Mapper(nn.Module):
    """ClipCap's MLP mapper: pooled embedding -> ``length`` prefix vectors."""

    def __init__(self, embed_dim: int, width: int, length: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or max(1, length * width // 2)
        self.length, self.width = length, width
        self.net = nn.Sequential(nn.Linear(embed_dim, hidden), nn.Tanh(), nn.Linear(hidden, length * width))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.net(pooled).view(pooled.shape[0], self.length, self.width)


class Captioner(nn.Module):
    """Bridge + decoder. Inputs are encoder outputs (``tokens``, ``pooled``), never pixels."""

    def __init__(self, decoder: Decoder, geometry: PatchGeometry, embed_dim: int, config: BridgeConfig) -> None:
        super().__init__()
        self.decoder, self.config, self.geometry = decoder.model, config, geometry
        self.tokenizer, self.bos_id = decoder.tokenizer, decoder.bos_id
        if config.kind == "mapper":
            self.bridge = Mapper(embed_dim, decoder.width, config.prefix_length, config.hidden)
        else:
            self.bridge = PatchProjection(geometry, decoder.width)
        if config.kind == "cross-attention" and not getattr(decoder.model.config, "add_cross_attention", False):
            raise ConfigError("the cross-attention bridge needs a decoder loaded with cross_attention=True")

    @property
    def prefix_length(self) -> int:
        if self.config.kind == "mapper":
            return self.config.prefix_length
        return 0 if self.config.kind == "cross-attention" else self.geometry.num_tokens

    @property
    def virtual_tokens(self) -> int:
        """Key/value positions a prefix-tuned (peft prompt-learning) decoder puts before everything else."""
        config = getattr(self.decoder, "active_peft_config", None)
        return config.num_virtual_tokens if config is not None and config.is_prompt_learning else 0

    def check_positions(self, caption_tokens: int, spec: str) -> None:
        """Refuse a decoder with fewer position embeddings than prefix-tuning, image prefix and caption take."""
        config = getattr(self.decoder, "config", None)
        positions = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
        needed = self.virtual_tokens + self.prefix_length + caption_tokens
        if positions is not None and needed > positions:
            raise ConfigError(f"decoder '{spec}' has {positions} positions, fewer than the {needed} needed "
                              f"({self.prefix_length} image positions of the {self.config.kind} bridge, "
                              f"{self.virtual_tokens} of prefix-tuning, {caption_tokens} of caption); lower "
                              f"train.max_length or decode.max_new_tokens, or use bridge.kind=mapper")

    def _with_prefix(self, prefix: torch.Tensor | None, embeds: torch.Tensor,
                     mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[prefix] embeds`` and the attention mask that shows the prefix to every position."""
        if prefix is None:
            return embeds, mask
        ones = torch.ones(mask.shape[0], prefix.shape[1], dtype=mask.dtype, device=mask.device)
        return torch.cat([prefix.to(embeds.dtype), embeds], dim=1), torch.cat([ones, mask], dim=1)

    def bridge_parameter_names(self) -> list[str]:
        """The bridge, and the decoder's new cross-attention layers (they are part of the bridge)."""
        names = [f"bridge.{n}" for n, _ in self.bridge.named_parameters()]
        if self.config.kind == "cross-attention":
            names += [f"decoder.{n}" for n, _ in self.decoder.named_parameters()
                      if "crossattention" in n or "ln_cross_attn" in n]
        return names

    def image_inputs(self, batch: dict) -> tuple[torch.Tensor | None, dict]:
        """(prefix embeddings or None, extra decoder kwargs) for a batch of encoder outputs."""
        if self.config.kind == "mapper":
            return self.bridge(batch["pooled"]), {}
        projected = self.bridge(batch["tokens"])
        if self.config.kind == "cross-attention":
            return None, {"encoder_hidden_states": projected}
        return projected, {}

    def forward(self, batch: dict) -> dict:
        """Teacher-forced loss of ``batch["input_ids"]`` given the images (labels -100 where not predicted)."""
        prefix, extra = self.image_inputs(batch)
        labels = batch["labels"]
        embeds, mask = self._with_prefix(prefix, self.decoder.get_input_embeddings()(batch["input_ids"]),
                                         batch["attention_mask"])
        if prefix is not None:  # the prefix is given, not predicted
            labels = nn.functional.pad(labels, (prefix.shape[1], 0), value=IGNORE)
        out = self.decoder(inputs_embeds=embeds, attention_mask=mask, labels=labels, **extra)
        with torch.no_grad():  # next-token accuracy over the predicted positions
            target = labels[:, 1:]
            predicted = target != IGNORE
            correct = ((out.logits[:, :-1].argmax(-1) == target) & predicted).sum()
        return {"loss": out.loss, "logits": out.logits, "correct": correct, "count": predicted.sum()}

    @torch.no_grad()
    def generate(self, batch: dict, max_new_tokens: int = 20, num_beams: int = 1, no_repeat_ngram_size: int = 0,
                 repetition_penalty: float = 1.0, length_penalty: float = 1.0, min_new_tokens: int = 0) -> dict:
        """Greedy (``num_beams=1``) or beam search from ``[prefix] [BOS]``; ``{"captions", "sequences"}``
        (sequences: the generated token ids, without BOS, padded after EOS). The controls are transformers
        ``generate``'s and see only the generated tokens (the image prefix and BOS are embeddings, not ids);
        ``DecodeConfig.generation()`` gives them all."""
        prefix, extra = self.image_inputs(batch)
        size = (prefix if prefix is not None else extra["encoder_hidden_states"]).shape[0]
        device = next(self.decoder.parameters()).device
        bos = torch.full((size, 1), self.bos_id, dtype=torch.long, device=device)
        embeds, mask = self._with_prefix(prefix, self.decoder.get_input_embeddings()(bos), torch.ones_like(bos))
        model = self.decoder
        if self.virtual_tokens:
            # peft's prompt-learning generate cannot start from inputs_embeds in transformers 5: decode through the
            # base model with peft's prefix as the cache; generate skips the positions the cache holds, so that many
            # placeholders go in front (the tokens equal peft's own forward, tested)
            model = self.decoder.get_base_model()
            extra["past_key_values"] = self.decoder.get_prompt(size * num_beams)
            embeds, mask = self._with_prefix(embeds.new_zeros(size, self.virtual_tokens, embeds.shape[-1]), embeds,
                                             mask)
        with warnings.catch_warnings():  # "applies only to newly generated tokens": the prompt is the image, as meant
            warnings.filterwarnings("ignore", message="Passing `(no_repeat_ngram_size|repetition_penalty)` with "
                                                      "`inputs_embeds`", category=UserWarning)
            sequences = model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                                       num_beams=num_beams, no_repeat_ngram_size=no_repeat_ngram_size,
                                       repetition_penalty=repetition_penalty, length_penalty=length_penalty,
                                       min_new_tokens=min_new_tokens, do_sample=False,
                                       eos_token_id=self.tokenizer.eos_token_id,
                                       pad_token_id=self.tokenizer.pad_token_id, **extra)
        captions = [self.tokenizer.decode(row, skip_special_tokens=True).strip() for row in sequences]
        return {"captions": captions, "sequences": sequences}

    def caption_tokens(self, sequence: torch.Tensor) -> list[int]:
        """The generated token ids of one row of ``generate``'s sequences, up to (without) EOS."""
        ids = sequence.tolist()
        eos = self.tokenizer.eos_token_id
        return ids[: ids.index(eos)] if eos in ids else ids

    def caption_words(self, sequence: torch.Tensor) -> list[str]:
        """Each generated token as text (the titles of the attention panels)."""
        return [self.tokenizer.decode([t]).strip() or "?" for t in self.caption_tokens(sequence)]

    @property
    def num_layers(self) -> int:
        """The decoder's number of layers (blocks)."""
        base = self.decoder.get_base_model() if hasattr(self.decoder, "get_base_model") else self.decoder
        return int(base.config.num_hidden_layers)

    def check_attention_layer(self, layer: int | str | None) -> int | str | None:
        """``layer`` as ``attention_maps`` takes it; an unknown value or a layer out of range is a ConfigError."""
        layer = attention_layer(layer)
        if isinstance(layer, int):
            _layer_index(layer, self.num_layers)
        return layer

    @torch.no_grad()
    def attention_maps(self, batch: dict, sequences: torch.Tensor,
                       layer: int | str | None = None) -> list[torch.Tensor]:
        """Per image, ``(words, rows, cols)``: for every generated token the decoder's attention over the image
        patches at the step that produced it (queries at ``[BOS] t_0 .. t_{n-2}``), mean over heads, of one
        ``layer`` or the mean over layers (None or ``"mean"``), renormalised to sum to 1 over the patches (the
        class token, other prefix positions and earlier words are left out); with ``layer="all"`` every layer's,
        ``(layers, words, rows, cols)``. The patch-prefix bridge reads self-attention over the prefix positions,
        the cross-attention bridge its cross-attention."""
        layer = attention_layer(layer)
        if self.config.kind == "mapper":
            raise ConfigError("attention maps need a patch bridge (patch-prefix or cross-attention); the mapper's "
                              "prefix is made from the pooled embedding and has no patches")
        rows = [self.caption_tokens(s) for s in sequences]
        device = next(self.decoder.parameters()).device
        text = pad_captions([[self.bos_id, *row[:-1]] for row in rows], self.tokenizer.pad_token_id)
        prefix, extra = self.image_inputs(batch)
        embeds, mask = self._with_prefix(prefix, self.decoder.get_input_embeddings()(text["input_ids"].to(device)),
                                         text["attention_mask"].to(device))
        base = self.decoder.get_base_model() if hasattr(self.decoder, "get_base_model") else self.decoder
        before = base.config._attn_implementation
        base.set_attn_implementation("eager")  # only eager attention returns its weights
        try:
            out = self.decoder(inputs_embeds=embeds, attention_mask=mask, output_attentions=True, **extra)
        finally:
            base.set_attn_implementation(before)
        cross = self.config.kind == "cross-attention"
        maps = out.cross_attentions if cross else out.attentions
        stacked = torch.stack([m.float() for m in maps])  # (layers, B, heads, queries, keys)
        if layer is None:
            stacked = stacked.mean(0, keepdim=True)
        elif layer != "all":
            stacked = stacked[_layer_index(int(layer), len(maps))][None]
        chosen = stacked.mean(2)  # over heads: (layers, B, queries, keys)
        geometry = self.geometry
        patches = geometry.grid[0] * geometry.grid[1]
        # self-attention keys: [peft's virtual tokens] [class token] [patches] [words]; cross: [class] [patches]
        start = (0 if cross else self.virtual_tokens) + geometry.prefix_tokens
        queries_start = 0 if cross else self.prefix_length
        result = []
        for i, row in enumerate(rows):
            weights = chosen[:, i, queries_start: queries_start + len(row), start: start + patches]
            weights = weights / weights.sum(-1, keepdim=True).clamp(min=1e-12)
            weights = weights.reshape(len(chosen), len(row), *geometry.grid).cpu()
            result.append(weights if layer == "all" else weights[0])
        return result


ATTENTION_LAYERS = ("mean", "all")


def attention_layer(value: int | str | None) -> int | str | None:
    """An attention-layer choice as given (``--layer``): ``mean`` (or None) is None, ``all`` stays, a number is a
    layer (negative from the end)."""
    if value is None or value == "mean":
        return None
    if isinstance(value, int) or value == "all":
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        raise ConfigError(f"unknown attention layer '{value}'; valid choices: {', '.join(ATTENTION_LAYERS)}, or a "
                          "layer number (negative from the end)") from None


def _layer_index(layer: int, layers: int) -> int:
    if not -layers <= layer < layers:
        raise ConfigError(f"attention layer {layer} is out of range; the decoder has {layers} layers "
                          f"(0..{layers - 1}, or negative from the end)")
    return layer
