"""Caption training on the one engine: the captioner as a trainable module, its batches, and how epochs are scored.

The image tower is frozen in every captioning method, so by default the engine's batches carry the tower's cached
outputs (``inputs = "features"``: tokens and pooled embedding, encoded once per model, images and preprocessing);
``train.cache_encoder=false`` re-encodes the images every step instead (``inputs = "pixels"``, for comparison:
docs/benchmarks.md). An item is one (image, reference caption) pair: every caption of every training image.
``CaptionTask`` tells the engine what to count (next-token accuracy) and how to score an epoch: validation loss,
and with ``train.select=cider`` the CIDEr-D of greedy captions of the validation images.

``DecodeConfig`` holds transformers ``generate``'s controls: greedy or beam search, ``no_repeat_ngram_size`` (no
n-gram twice in a caption: the trigram blocking of Paulus et al. 2018, "A Deep Reinforced Model for Abstractive
Summarization"), ``repetition_penalty`` (CTRL's, Keskar et al. 2019: the logit of a token already generated is
divided by the penalty where positive, multiplied where negative), ``length_penalty`` (beams: a finished
hypothesis scores its summed log-probability over ``length ** length_penalty``) and ``min_new_tokens``. The default
blocks repeated trigrams, chosen on validation CIDEr-D on the world (docs/captioning.md, "Decoding").
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from clipadapt.captioning.data import CaptionDataset, CaptionSplit
from clipadapt.captioning.encoder import EncodedImages, EncoderCache, encode_cached, image_tokens
from clipadapt.captioning.methods import DecoderMethod
from clipadapt.captioning.model import Captioner, caption_ids, pad_captions
from clipadapt.config import apply_overrides, option, override_section, require_positive
from clipadapt.engine.features import SkippedImage, image_loader
from clipadapt.engine.inputs import epoch_order, note_skipped
from clipadapt.engine.trainable import TrainableModule
from clipadapt.engine.trainer import TrainConfig, Validation
from clipadapt.errors import ConfigError
from clipadapt.models.bundle import ClipBundle

SELECTIONS = ("loss", "cider")


@dataclass
class CaptionTrainConfig(TrainConfig):
    epochs: int = option(10, help="maximum number of epochs")
    batch_size: int = option(32, help="(image, caption) pairs per step and process")
    select: str = option("loss", help="model selection on validation: loss (teacher-forced) or cider (greedy "
                                      "captions of the validation images, CIDEr-D, every epoch)")
    max_length: int = option(40, help="caption tokens kept for training, with BOS and EOS")
    cache_encoder: bool = option(True, help="train on the frozen tower's cached outputs (false: re-encode the "
                                            "images every step)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.select not in SELECTIONS:
            raise ConfigError(f"unknown train.select '{self.select}'; valid choices: {', '.join(SELECTIONS)}")
        if self.augment != "none":
            raise ConfigError(f"train.augment '{self.augment}' is not available for captioning: the frozen encoder's "
                              "outputs are computed once per image; valid choice: none")
        if self.activation_checkpointing:
            raise ConfigError("train.activation_checkpointing is not available for captioning")
        require_positive(self, ("max_length",), "train:")
        if self.max_length < 3:
            raise ConfigError(f"train.max_length must leave room for BOS, a word and EOS (>= 3), got "
                              f"{self.max_length}")


TOKENIZERS = ("auto", "ptb", "simple")


@dataclass
class DecodeConfig:
    """How captions are generated (transformers ``generate``); every decoding path (greedy, beams, prefix-tuned
    decoders through the base model) receives the same controls through ``generation()``."""

    max_new_tokens: int = option(20, help="longest caption generated, in tokens")
    beams: int = option(1, help="beam width (1: greedy)")
    no_repeat_ngram_size: int = option(3, help="no n-gram of this many tokens occurs twice in a caption (0: off)")
    repetition_penalty: float = option(1.0, help="penalises every token already generated (CTRL's, Keskar et al. "
                                                 "2019: its logit divided by this where positive, multiplied where "
                                                 "negative; 1: off)")
    length_penalty: float = option(1.0, help="beams only: a finished beam's log-probability is divided by its "
                                             "length to this power (0: plain sum, favours short captions)")
    min_new_tokens: int = option(0, help="end-of-text is not allowed before this many tokens")
    tokenizer: str = option("auto", help="tokenizer of the n-gram metrics: auto (PTB where Java runs, else "
                                         "simple), ptb or simple (no METEOR)")

    def __post_init__(self) -> None:
        require_positive(self, ("max_new_tokens", "beams", "repetition_penalty"), "decode:")
        for name in ("no_repeat_ngram_size", "length_penalty", "min_new_tokens"):
            if getattr(self, name) < 0:
                raise ConfigError(f"decode.{name} must be >= 0, got {getattr(self, name)}")
        if self.min_new_tokens > self.max_new_tokens:
            raise ConfigError(f"decode.min_new_tokens ({self.min_new_tokens}) must not exceed "
                              f"decode.max_new_tokens ({self.max_new_tokens})")
        if self.tokenizer not in TOKENIZERS:
            raise ConfigError(f"unknown decode.tokenizer '{self.tokenizer}'; valid choices: {', '.join(TOKENIZERS)}")

    @property
    def use_java(self) -> bool | None:
        return {"auto": None, "ptb": True, "simple": False}[self.tokenizer]

    def generation(self) -> dict[str, Any]:
        """The keyword arguments of ``Captioner.generate``."""
        return {"max_new_tokens": self.max_new_tokens, "num_beams": self.beams,
                "no_repeat_ngram_size": self.no_repeat_ngram_size, "repetition_penalty": self.repetition_penalty,
                "length_penalty": self.length_penalty, "min_new_tokens": self.min_new_tokens}

    def redecoding(self, overrides: list[str] | None = None, **changes: int | None) -> DecodeConfig:
        """This decoding with ``decode.KEY=VALUE`` overrides, then the given changes (None: keep); checked as
        ``--set`` is."""
        check_decode_overrides(overrides)
        decoding = apply_overrides(_Decoding(self), overrides).decode
        return dataclasses.replace(decoding, **{k: v for k, v in changes.items() if v is not None})

    def label(self, reference: DecodeConfig) -> str:
        """What sets this decoding apart from ``reference``, for file names: ``""`` (the same decoding),
        ``"_beam3"``, ``"_beam3_norepeat0"``, ..."""
        return "".join(f"_{short}{getattr(self, name):g}" for name, short in DECODE_LABELS.items()
                       if getattr(self, name) != getattr(reference, name))


@dataclass
class _Decoding:  # the decode section alone, so that overrides and their errors read decode.KEY
    decode: DecodeConfig = field(default_factory=DecodeConfig)


def check_decode_overrides(overrides: list[str] | None) -> None:
    """Re-decoding a finished run takes ``decode.*`` overrides only (checked before the run loads)."""
    for item in overrides or []:
        if override_section(item) != "decode":
            raise ConfigError(f"re-decoding a run takes decode.* settings only, got '{item}'")


DECODE_LABELS = {"beams": "beam", "max_new_tokens": "max", "no_repeat_ngram_size": "norepeat",
                 "repetition_penalty": "reppen", "length_penalty": "lenpen", "min_new_tokens": "min"}


class CaptionModel(TrainableModule):
    """The captioner and the frozen tower, as the engine trains it (bridge + what the decoder method names)."""

    def __init__(self, bundle: ClipBundle, captioner: Captioner, method: DecoderMethod,
                 inputs: str = "features") -> None:
        super().__init__()
        self.name = method.name
        self.config = method.config  # the optimizer reads optimizer and momentum from here
        self.inputs = inputs
        self.captioner = captioner
        self.fingerprint = bundle.fingerprint
        self._bundle = [bundle]  # not a submodule: frozen, and never saved with the run

    @property
    def bundle(self) -> ClipBundle:
        return self._bundle[0]

    def encode(self, inputs) -> dict[str, torch.Tensor]:
        """Encoder outputs of a batch: cached ones as they are, pixels through the frozen tower."""
        return inputs if self.inputs == "features" else self.encode_pixels(inputs)

    @torch.no_grad()
    def encode_pixels(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        tokens, pooled = image_tokens(self.bundle, pixels)
        return {"tokens": tokens.float(), "pooled": pooled.float()}

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.captioner({**self.encode(batch["inputs"]), **batch["labels"]})

    def param_groups(self) -> list[dict[str, Any]]:
        bridge = set(self.captioner.bridge_parameter_names())
        groups: dict[str, list] = {"bridge": [], "decoder": []}
        for name, parameter in self.captioner.named_parameters():
            if parameter.requires_grad:
                groups["bridge" if name in bridge else "decoder"].append(parameter)
        bridge_config = self.captioner.config
        return [{"name": "bridge", "params": groups["bridge"], "lr": bridge_config.lr,
                 "weight_decay": bridge_config.weight_decay},
                {"name": "decoder", "params": groups["decoder"], "lr": self.config.lr,
                 "weight_decay": self.config.weight_decay}]

    def num_parameters(self) -> dict[str, Any]:
        trainable = sum(p.numel() for p in self.trainable_parameters().values())
        bridge = set(self.captioner.bridge_parameter_names())
        bridge_count = sum(p.numel() for n, p in self.captioner.named_parameters() if n in bridge)
        total = sum(p.numel() for p in self.parameters()) + self.bundle.num_parameters()
        return {"trainable": trainable, "bridge": bridge_count, "decoder_method": trainable - bridge_count,
                "total": total, "trainable_pct": round(100.0 * trainable / max(total, 1), 4)}

    def metadata(self) -> dict[str, str]:
        return {"method": self.name, "model_fingerprint": self.fingerprint, "bridge": self.captioner.config.kind,
                "task": "captioning"}


@dataclass
class CaptionPairs:
    images: np.ndarray  # (pairs,) row of the pair's image in the encoded split (features) or split position
    ids: list[list[int]]  # token ids of each pair's caption


@dataclass
class CaptionTrainingData:
    """Batches of (encoder outputs or pixels, tokenised caption) pairs and of images alone (for decoding)."""

    dataset: CaptionDataset
    bundle: ClipBundle
    decoder: Any  # captioning.model.Decoder (its tokenizer)
    batch_size: int = 32
    eval_batch_size: int = 64
    max_length: int = 40
    num_workers: int = -1
    strict: bool = False
    seed: int = 0
    cache: EncoderCache | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    main_process_first: object = None
    _encoded: dict[str, EncodedImages] = field(default_factory=dict)
    _pairs: dict[tuple[str, str], CaptionPairs] = field(default_factory=dict)
    skipped: dict[str, dict[int, SkippedImage]] = field(default_factory=dict)

    def split(self, name: str) -> CaptionSplit:
        return self.dataset.split(name)

    def encoded(self, split: str) -> EncodedImages:
        """The frozen tower's outputs for a split's readable images (encoded once, then from the cache)."""
        if split not in self._encoded:
            with self.main_process_first() if self.main_process_first is not None else nullcontext():
                encoded = encode_cached(self.bundle, self.split(split).image_split(), self.cache,
                                        self.eval_batch_size, self.num_workers, self.strict)
            for s in encoded.skipped:
                self.skipped.setdefault(split, {})[s.position] = s
            self._encoded[split] = encoded
        return self._encoded[split]

    def pairs(self, kind: str, split: str) -> CaptionPairs:
        if (kind, split) not in self._pairs:
            images = self.split(split).images
            # features: rows of the encoded split, where unreadable images are already gone
            positions = self.encoded(split).positions if kind == "features" else np.arange(len(images))
            rows, ids = [], []
            for row, position in enumerate(positions):
                for text in images[int(position)].captions:
                    rows.append(row if kind == "features" else int(position))
                    ids.append(caption_ids(self.decoder, text, self.max_length))
            self._pairs[(kind, split)] = CaptionPairs(np.asarray(rows, dtype=np.int64), ids)
        return self._pairs[(kind, split)]

    def num_items(self, kind: str, split: str) -> int:
        return len(self.pairs(kind, split).ids)

    def batches(self, kind: str, split: str, epoch: int = 0, train: bool = False, rank: int = 0,
                world_size: int = 1) -> Iterator[dict[str, Any]]:
        """``{"inputs", "labels", "positions"}`` batches of pairs; ``train`` shuffles them."""
        pairs = self.pairs(kind, split)
        batch_size = self.batch_size if train else self.eval_batch_size
        order = epoch_order(len(pairs.ids), self.seed, epoch, train, rank, world_size)
        pad = self.decoder.tokenizer.pad_token_id
        if kind == "features":
            for start in range(0, len(order), batch_size):
                index = order[start:start + batch_size]
                yield {"inputs": self.image_inputs(split, torch.as_tensor(pairs.images[index])),
                       "labels": self._labels(pairs, index, pad), "positions": torch.as_tensor(index)}
            return
        images = self.split(split).image_split()
        in_order = images.subset(pairs.images[order])  # the image of every pair, in this epoch's order
        for batch in image_loader(in_order, self.bundle.preprocess, batch_size, self.num_workers):
            for at, reason in batch["skipped"]:  # warned once per image, not per caption or epoch
                note_skipped(self.skipped, images, int(pairs.images[order[at]]), reason, self.strict)
            if batch["images"] is None:
                continue
            index = order[batch["positions"].numpy()]  # the pairs whose images loaded
            yield {"inputs": self.bundle.preprocess.normalize(batch["images"]).to(self.device),
                   "labels": self._labels(pairs, index, pad), "positions": torch.as_tensor(index)}

    def _labels(self, pairs: CaptionPairs, index: np.ndarray, pad: int) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device) for k, v in pad_captions([pairs.ids[i] for i in index], pad).items()}

    def image_inputs(self, split: str, rows) -> dict[str, torch.Tensor]:
        """Encoder outputs of some rows of ``encoded(split)`` (an index array or a slice), on the device."""
        encoded = self.encoded(split)
        return {"tokens": encoded.tokens[rows].to(self.device), "pooled": encoded.pooled[rows].to(self.device)}

    def skipped_rows(self) -> list[tuple[str, str, str]]:
        return [(split, s.item, s.reason) for split, items in self.skipped.items() for s in items.values()]


@torch.no_grad()
def generate_split(model: CaptionModel, data: CaptionTrainingData, split: str, decode: DecodeConfig,
                   progress: bool = False) -> tuple[dict[str, str], float]:
    """``({image_id: caption}, seconds)`` for the readable images of a split, in the order of
    ``data.encoded(split)`` (so row ``i`` of its pooled embeddings belongs to the ``i``-th caption)."""
    from clipadapt.progress import progress_bar

    images, positions = data.split(split).images, data.encoded(split).positions
    captions: dict[str, str] = {}
    start = time.perf_counter()
    bar = progress_bar(f"captioning {split}", total=len(positions), unit="img") if progress \
        else nullcontext(lambda n: None)
    with model.evaluating(), bar as advance:
        for first in range(0, len(positions), data.eval_batch_size):
            rows = slice(first, first + data.eval_batch_size)
            out = model.captioner.generate(data.image_inputs(split, rows), **decode.generation())
            for position, caption in zip(positions[rows], out["captions"], strict=True):
                captions[images[int(position)].image_id] = caption
            advance(len(out["captions"]))
    return captions, time.perf_counter() - start


class CaptionTask:
    """The engine's view of captioning: next-token accuracy while training; val loss (and CIDEr) per epoch."""

    def __init__(self, select: str = "loss", decode: DecodeConfig | None = None) -> None:
        self.select, self.decode = select, decode or DecodeConfig()

    def step_counts(self, out: dict[str, torch.Tensor], batch: dict[str, Any]) -> tuple[torch.Tensor, int, int]:
        return out["correct"], out["count"], len(batch["positions"])

    @torch.no_grad()
    def validate(self, trainer, model: CaptionModel) -> Validation:
        acc, data = trainer.accelerator, trainer.data
        totals = torch.zeros(3, device=acc.device)  # loss x tokens, tokens, correct tokens
        with model.evaluating(), acc.autocast():
            for batch in data.batches(model.inputs, "val", rank=acc.process_index, world_size=acc.num_processes):
                out = model({"inputs": batch["inputs"], "labels": batch["labels"]})
                totals += torch.stack([out["loss"].float() * out["count"], out["count"].float(),
                                       out["correct"].float()])
        totals = acc.reduce(totals, reduction="sum").cpu()
        loss = totals[0].item() / max(totals[1].item(), 1)
        row = {"val_loss": loss, "val_acc": totals[2].item() / max(totals[1].item(), 1)}
        if self.select == "loss":
            return Validation(row, [-loss], {"val_loss": loss})
        cider = validation_cider(model, data, self.decode)
        row["val_cider"] = cider
        return Validation(row, [cider, -loss], {"val_cider": cider, "val_loss": loss})


def validation_cider(model: CaptionModel, data: CaptionTrainingData, decode: DecodeConfig) -> float:
    """CIDEr-D of greedy captions of the validation images (the run's other decoding controls; the simple
    tokenizer: no JVM every epoch)."""
    from clipadapt.captioning.metrics import ngram_scores

    greedy = dataclasses.replace(decode, beams=1, tokenizer="simple")
    captions, _ = generate_split(model, data, "val", greedy)
    references = {k: v for k, v in data.split("val").references().items() if k in captions}
    return ngram_scores(captions, references, use_java=False, only=("cider",)).metrics["cider"]
