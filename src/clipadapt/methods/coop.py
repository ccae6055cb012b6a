"""``coop``: Context Optimization (Zhou et al., 2022), learned context vectors in the text prompt.

The prompt of class ``c`` is ``[SOS] v_1 ... v_n  <name of c> . [EOS]`` (class token at the ``end``; or in the
``middle`` of the context, or at the ``front``), where the ``v_i`` are learned word embeddings shared by all
classes (or one set per class). They start from the embeddings of a phrase such as "a photo of a", which makes
CoOp equal to zero-shot with the template "a photo of a {}." before its first step, or from N(0, 0.02) noise.
Only the context trains. The image tower is untouched, so by default CoOp trains on the cached image features
(the linear probe's feature cache) and runs only the text tower per step; ``image_features=recompute`` re-encodes
the images every step as the paper's implementation does (same numbers, far slower).

peft has no CoOp, so this is a small module of ours: a forward hook on the text tower's token embedding table puts
the context vectors at their positions; transformers' own text model does the rest.

Augmentation: the reference trains on Dassl's training loader, a fresh random resized crop + flip of every image each
epoch (``configs/trainers/CoOp/vit_b16.yaml:13``, ``trainers/coop.py:259``;
KaiyangZhou/CoOp@ff61507c790454bce7c5052c3ac39e60772f1f89). On cached features ours trains epoch e on augmented view e
mod N of the training images (engine/views.py; ``features.views``, default 10: one per epoch of a 10-epoch run, cycled
over longer ones); ``image_features=recompute`` augments the pixels with train.augment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from clipadapt.config import option
from clipadapt.engine.trainable import OptimizerConfig
from clipadapt.engine.views import PER_EPOCH
from clipadapt.errors import ClipAdaptError, ConfigError
from clipadapt.methods.attention import install
from clipadapt.methods.base import Method, register_method
from clipadapt.methods.heads import cosine_logits
from clipadapt.methods.towers import text_token_embedding
from clipadapt.models.bundle import ClipBundle

POSITIONS = ("end", "middle", "front")
IMAGE_FEATURES = ("cached", "recompute")
PLACEHOLDER = "X"  # the context's token ids before its embeddings are replaced (as CoOp's "X X X X")


@dataclass
class CoOpConfig(OptimizerConfig):
    n_ctx: int = option(16, help="learned context vectors (random init; an init phrase sets its own length)")
    init: str = option("", help="initialise the context from this phrase, e.g. 'a photo of a' (empty: random)")
    class_token_position: str = option("end", help="where the class name goes: end, middle or front")
    class_specific: bool = option(False, help="one context per class instead of one shared by all classes")
    image_features: str = option("cached", help="cached (encode the images once) or recompute (every step)")
    share_prefix: bool = option(True, help="encode the tokens all prompts share (start + shared context) once per "
                                           "step instead of once per class: the same numbers, less work")
    lr: float = option(2e-3, help="peak learning rate of the context vectors (the reference's SGD at 0.002)")
    # the reference's optimizer: SGD at 0.002 (KaiyangZhou/CoOp@ff61507c790454bce7c5052c3ac39e60772f1f89
    # configs/trainers/CoOp/vit_b16.yaml:16-17), momentum 0.9 and weight decay 5e-4 (Dassl's defaults,
    # KaiyangZhou/Dassl.pytorch@c61a1b570ac6333bd50fb5ae06aea59002fb20bb dassl/config/defaults.py:153-154)
    optimizer: str = option("sgd", help="adamw or sgd (the reference: SGD, momentum 0.9)")
    weight_decay: float = option(5e-4, help="weight decay (the reference's, Dassl's default 5e-4)")
    epochs: int | None = option(None, help="epochs (default: the reference's for the run's shots: 50 at 1 shot, "
                                           "100 at 2-4, 200 at 8 or more, 50 on ImageNet; train.epochs without "
                                           "shots); train.steps wins")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_ctx <= 0:
            raise ConfigError(f"coop.n_ctx must be positive, got {self.n_ctx}")
        if self.epochs is not None and self.epochs <= 0:
            raise ConfigError(f"coop.epochs must be positive, got {self.epochs}")
        if self.class_token_position not in POSITIONS:
            raise ConfigError(f"unknown coop.class_token_position '{self.class_token_position}'; valid choices: "
                              f"{', '.join(POSITIONS)}")
        if self.image_features not in IMAGE_FEATURES:
            raise ConfigError(f"unknown coop.image_features '{self.image_features}'; valid choices: "
                              f"{', '.join(IMAGE_FEATURES)}")


@dataclass
class PromptTokens:
    """Token ids of every class's prompt and where its context vectors go."""

    input_ids: torch.Tensor  # (classes, length), padded
    attention_mask: torch.Tensor  # (classes, length)
    context_positions: torch.Tensor  # (classes, n_ctx): sequence positions of v_1 ... v_n
    init_ids: list[int] | None  # the phrase's token ids when initialised from one


def _inner_ids(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without the start and end tokens."""
    encoded = tokenizer([text])
    length = int(encoded["attention_mask"][0].sum()) if "attention_mask" in encoded else encoded["input_ids"].shape[1]
    return encoded["input_ids"][0, 1:length - 1].tolist()


def build_prompt_tokens(bundle: ClipBundle, classnames: Sequence[str], config: CoOpConfig) -> PromptTokens:
    tokenizer = bundle.tokenizer
    empty = tokenizer(["", PLACEHOLDER])
    if int(empty["attention_mask"][0].sum()) != 2:
        raise ConfigError(f"coop needs a tokenizer that adds start and end tokens; '{bundle.spec}' does not")
    bos, eos, pad = (int(empty["input_ids"][0, i]) for i in (0, 1, -1))
    init_ids = _inner_ids(tokenizer, config.init) if config.init.strip() else None
    context = init_ids or _inner_ids(tokenizer, PLACEHOLDER)[:1] * config.n_ctx
    n = len(context)
    half = n // 2 if config.class_token_position == "middle" else n
    period = _inner_ids(tokenizer, ".")
    rows, positions = [], []
    for name in classnames:
        words = _inner_ids(tokenizer, name)
        if config.class_token_position == "front":
            body, start = words + context + period, [1 + len(words) + i for i in range(n)]
        else:  # end, or middle: the first half of the context, the name, the second half
            body = context[:half] + words + context[half:] + period
            start = [1 + i if i < half else 1 + len(words) + i for i in range(n)]
        rows.append([bos] + body + [eos])
        positions.append(start)
    limit = int(bundle.text_tower.config.max_position_embeddings)
    longest = max(range(len(rows)), key=lambda i: len(rows[i]))
    if len(rows[longest]) > limit:
        fixed = len(rows[longest]) - n
        raise ConfigError(f"coop context of {n} tokens is longer than the text encoder allows: the prompt of "
                          f"'{classnames[longest]}' needs {len(rows[longest])} of at most {limit} tokens; use "
                          f"n_ctx <= {limit - fixed}")
    width = len(rows[longest])
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, :len(row)] = torch.tensor(row)
        attention_mask[i, :len(row)] = 1
    return PromptTokens(input_ids, attention_mask, torch.tensor(positions, dtype=torch.long), init_ids)


class SharedPrefix:
    """Keys and values of the context every class shares, computed once per step (a ``KeyValueSource``).

    CLIP's text tower is causal: with the context in front of the class name, the first tokens of every prompt
    see only each other, so their keys and values are the same for all classes. ``record`` keeps them from one
    pass over the shared tokens; ``extend`` puts them in front of each class's remaining tokens.
    """

    def __init__(self) -> None:
        self.base_implementation = "sdpa"
        self.mode: str | None = None
        self.store: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def extend(self, module: nn.Module, index: int, key: torch.Tensor,
               value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        if self.mode == "record":
            self.store[index] = (key, value)
        elif self.mode == "extend":  # one recorded prefix per group of prompts (CoCoOp: per image), in order
            shared_key, shared_value = self.store[index]
            return (torch.cat([_per_prompt(shared_key, len(key)), key], dim=2),
                    torch.cat([_per_prompt(shared_value, len(key)), value], dim=2), shared_key.shape[2])
        return key, value, 0


def _per_prompt(shared: torch.Tensor, prompts: int) -> torch.Tensor:
    """Each group's recorded keys or values repeated for the group's prompts (a view for a single group)."""
    if len(shared) == 1:
        return shared.expand(prompts, -1, -1, -1)
    return shared.repeat_interleave(prompts // len(shared), dim=0)


def shared_length(input_ids: torch.Tensor, attention_mask: torch.Tensor, class_specific: bool) -> int:
    """Leading positions identical in every prompt (0 when per-class contexts make them differ)."""
    if class_specific or len(input_ids) < 2:
        return 0
    same = (input_ids == input_ids[:1]).all(dim=0)
    length = int(same.long().cumprod(0).sum())
    return min(length, int(attention_mask.sum(dim=1).min()) - 1)  # every prompt keeps its own end token


class PromptLearner(nn.Module):
    """CoOp's classifier: class vectors from the text tower with learned context, compared by cosine."""

    def __init__(self, bundle: ClipBundle, classnames: Sequence[str], config: CoOpConfig,
                 tokens: PromptTokens | None = None) -> None:
        super().__init__()
        self._bundle = [bundle]  # not a submodule: the frozen model is the bundle's
        embedding = text_token_embedding(bundle, "coop")
        tokens = tokens or build_prompt_tokens(bundle, classnames, config)
        n = tokens.context_positions.shape[1]
        if tokens.init_ids is not None:
            vectors = embedding.weight[tokens.init_ids].detach().float().cpu().clone()
        else:
            vectors = 0.02 * torch.randn(n, embedding.embedding_dim)
        if config.class_specific:
            vectors = vectors[None].repeat(len(classnames), 1, 1)
        self.ctx = nn.Parameter(vectors)
        self.register_buffer("input_ids", tokens.input_ids, persistent=False)
        self.register_buffer("attention_mask", tokens.attention_mask, persistent=False)
        self.register_buffer("rows", torch.arange(len(classnames)).repeat_interleave(n), persistent=False)
        self.register_buffer("cols", tokens.context_positions.flatten(), persistent=False)
        self.register_buffer("slots", torch.arange(n).repeat(len(classnames)), persistent=False)
        self.register_buffer("scale", bundle.logit_scale.detach().float().clone(), persistent=False)
        self.register_buffer("bias", torch.tensor(0.0), persistent=False)
        self.num_classes, self.n_ctx, self.class_specific = len(classnames), n, config.class_specific
        self.shared = shared_length(tokens.input_ids, tokens.attention_mask, config.class_specific)
        self.prefix = SharedPrefix()
        if config.share_prefix and self.shared > 1:
            try:
                install(bundle.text_tower, self.prefix)
            except ConfigError:  # another attention implementation: encode every prompt whole
                self.shared = 0
        else:
            self.shared = 0
        self._injection: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._frozen: torch.Tensor | None = None
        self._hook = embedding.register_forward_hook(self._inject)

    def _inject(self, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor | None:
        """Put the context vectors at their positions (only while this learner encodes its prompts)."""
        if self._injection is None:
            return None
        rows, cols, values = self._injection
        return output.index_put((rows, cols), values.to(output.dtype))

    def _encode(self, tokens: dict[str, torch.Tensor], injection, mode: str | None = None) -> torch.Tensor:
        bundle = self._bundle[0]
        self._injection, self.prefix.mode = injection, mode
        try:
            return bundle.text_features_fn(bundle.model, tokens)
        finally:
            self._injection, self.prefix.mode = None, None

    def encode(self, context: torch.Tensor) -> torch.Tensor:
        """Normalised class vectors, (groups, classes, dim): every class's prompt with each group's context.

        ``context`` is (groups, n_ctx, width), one context all classes share per group (CoOp: one group; CoCoOp:
        one per image), or (classes, n_ctx, width) for class-specific contexts (one group). The text tower runs
        groups x classes prompts; with a shared prefix, the prefix once per group.
        """
        groups, classes = (1 if self.class_specific else len(context)), self.num_classes
        group = torch.arange(groups, device=self.rows.device)

        def values(select: torch.Tensor) -> torch.Tensor:  # group-major, in the order of the selected entries
            if self.class_specific:
                return context[self.rows[select], self.slots[select]]
            return context[:, self.slots[select]].flatten(0, 1)

        def prompts(select: torch.Tensor) -> torch.Tensor:  # which of the groups x classes prompts
            return (group[:, None] * classes + self.rows[select][None]).flatten()

        if not self.shared:
            every = torch.ones_like(self.rows, dtype=torch.bool)
            features = self._encode({"input_ids": self.input_ids.repeat(groups, 1),
                                     "attention_mask": self.attention_mask.repeat(groups, 1)},
                                    (prompts(every), self.cols.repeat(groups), values(every)))
        else:  # the shared tokens once per group, then each class's rest attending to their keys and values
            p = self.shared
            first = (self.rows == 0) & (self.cols < p)
            self._encode({"input_ids": self.input_ids[:1, :p].repeat(groups, 1),
                          "attention_mask": self.attention_mask[:1, :p].repeat(groups, 1)},
                         (group.repeat_interleave(int(first.sum())), self.cols[first].repeat(groups), values(first)),
                         mode="record")
            rest = self.cols >= p
            positions = torch.arange(p, self.input_ids.shape[1], device=self.input_ids.device)[None]
            features = self._encode({"input_ids": self.input_ids[:, p:].repeat(groups, 1),
                                     "attention_mask": self.attention_mask[:, p:].repeat(groups, 1),
                                     "position_ids": positions},
                                    (prompts(rest), (self.cols[rest] - p).repeat(groups), values(rest)), mode="extend")
            self.prefix.store.clear()
        return nn.functional.normalize(features.float(), dim=-1).view(groups, classes, -1)

    def class_vectors(self) -> torch.Tensor:
        if self._frozen is not None:
            return self._frozen
        return self.encode(self.ctx if self.class_specific else self.ctx[None])[0]

    def freeze_for_evaluation(self, frozen: bool) -> None:
        with torch.no_grad():
            self._frozen = self.class_vectors().detach() if frozen else None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return cosine_logits(features, self.class_vectors(), self.scale, self.bias)


@register_method("coop", CoOpConfig)
class CoOp(Method):
    """Learned text context (CoOp); trains on cached image features, only the text tower runs per step."""

    export_refusal = "its learned context vectors are not words: no text prompt of the pipeline can hold them"
    # the reference (KaiyangZhou/CoOp@ff61507c790454bce7c5052c3ac39e60772f1f89): batch 32, Dassl's constant warmup
    # epoch at 1e-5 then a per-epoch cosine (configs/trainers/CoOp/vit_b16.yaml:3,15-22; engine/schedules.py), no
    # gradient clipping (trainers/coop.py:271-282: backward and step through Dassl's model_backward_and_update), the
    # last epoch's weights (Dassl's TEST.FINAL_MODEL="last_step",
    # KaiyangZhou/Dassl.pytorch@c61a1b570ac6333bd50fb5ae06aea59002fb20bb dassl/config/defaults.py:216): val-free
    # crops of 8-100% of the image: Dassl's RRCROP_SCALE (0.08, 1.0), which CoOp's configs keep
    # (configs/trainers/CoOp/vit_b16.yaml:13; KaiyangZhou/Dassl.pytorch@c61a1b570ac6333bd50fb5ae06aea59002fb20bb
    # dassl/config/defaults.py:40): the cached views' crop, and crop-flip's under image_features=recompute
    train_defaults = {"keep": "last", "batch_size": 32, "schedule": "dassl", "grad_clip": 0.0,
                      "crop_scale": [0.08, 1.0]}
    views, view_use = 10, PER_EPOCH  # the reference's fresh crop + flip every epoch, on cached features

    @classmethod
    def check(cls, config: CoOpConfig, bundle, classnames) -> None:
        text_token_embedding(bundle, "coop")
        build_prompt_tokens(bundle, classnames, config)  # the context must fit the text encoder

    def __init__(self, bundle, classnames, config: CoOpConfig, templates) -> None:
        self.inputs = "features" if config.image_features == "cached" else "pixels"
        super().__init__(bundle, classnames, config, templates)

    def train_epochs(self, trainer) -> int | None:
        """``coop.epochs``, else the reference's count for the run's shots (COOP.md:13-22: the ``*_ep50`` configs at
        1 shot and on ImageNet, ``*_ep100`` at 2 and 4, the 200-epoch configs at 8 and 16); None without shots."""
        if self.config.epochs is not None:
            return self.config.epochs
        shots = trainer.data.dataset.info.get("shots")
        if not shots:
            return None
        if trainer.data.dataset.name.split(":")[-1] == "imagenet" or shots == 1:
            return 50
        return 100 if shots <= 4 else 200

    def per_class_state(self) -> list[str]:
        """The shared context moves to any classes; per-class contexts (``class_specific``) do not."""
        return ["head.ctx"] if self.config.class_specific else []

    def make_head(self, bundle, templates) -> nn.Module:
        return PromptLearner(bundle, self.classnames, self.config)


@dataclass
class ContextWord:
    position: int  # 1-based index of the context vector
    classname: str | None  # for class-specific contexts
    words: list[tuple[str, float]]  # nearest vocabulary tokens and their Euclidean distances


def nearest_words(method: CoOp, top: int = 3) -> list[ContextWord]:
    """The vocabulary tokens whose embeddings lie nearest to each learned context vector (CoOp's interpretation)."""
    if top <= 0:
        raise ConfigError(f"top must be positive, got {top}")
    bundle = method.bundle
    if bundle.token_names_fn is None:
        raise ClipAdaptError(f"model '{bundle.spec}' cannot name its tokens")
    table = text_token_embedding(bundle, "coop").weight.detach().float().cpu()
    ctx = method.head.ctx.detach().float().cpu()
    groups = [(None, ctx)] if ctx.dim() == 2 else list(zip(method.classnames, ctx, strict=True))
    out = []
    for classname, vectors in groups:
        distances = torch.cdist(vectors, table, compute_mode="donot_use_mm_for_euclid_dist")
        distances, ids = distances.topk(min(top, len(table)), largest=False)
        for position, (row_d, row_ids) in enumerate(zip(distances.tolist(), ids.tolist(), strict=True), start=1):
            names = bundle.token_names_fn(row_ids)
            out.append(ContextWord(position, classname, list(zip(names, row_d, strict=True))))
    return out
