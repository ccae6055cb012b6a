"""Test-time adaptation: classify an unlabelled test stream, adapting on the stream itself (no label is ever read).

A stream is the test split's images in a seeded order (``stream_order``); a test-time method sees one image at a
time, answers it, and may keep what it saw for the next images. Its input is what the model computes for an image
(here: its normalised image feature), never the label; the labels are used only after the stream, to score it.

**TDA** (Karmanov et al., "Efficient Test-Time Adaptation of Vision-Language Models", CVPR 2024; reference code
github.com/kdiAAA/TDA at e697fb0, ``tda_runner.py`` and ``utils.py``): training-free, two caches of test features.

* Per image: the zero-shot logits ``100 * f @ W`` (``utils.py:74``; ours: the model's own logit scale, which is 100
  for OpenAI's CLIP), its prediction and its entropy (``softmax_entropy``, ``utils.py:24-25``).
* **Positive cache**: up to ``positive_capacity`` (3) features per predicted class, kept by lowest entropy
  (``update_cache``, ``tda_runner.py:29-40``: a full class replaces its highest-entropy entry if the new one is lower).
* **Negative cache**: the same with capacity ``negative_capacity`` (2), for images whose entropy, divided by
  ``log2(classes)``, lies strictly between 0.2 and 0.5 (``tda_runner.py:86``; ``get_entropy`` at ``utils.py:19-21``
  divides an entropy in nats by a maximum in bits: we keep the reference's normalisation, since its thresholds were
  set with it). Each entry keeps the image's class probabilities.
* The caches are updated **before** the image is answered (``tda_runner.py:83-87``), so an image sees its own entry.
* Answer: ``logits + A_pos - A_neg`` with ``A_pos = alpha * exp(-beta (1 - f K^T)) onehot(values)``
  (``compute_cache_logits``, ``tda_runner.py:43-65``), and for the negative cache the values are the entries'
  probabilities masked to ``(0.03, 1.0)`` (``mask_threshold``), its alpha 0.117 and beta 1.0.
* Defaults: the reference's ImageNet configuration (``configs/imagenet.yaml``: positive alpha 2.0, beta 5.0) for
  every dataset; the reference sets alpha and beta per dataset (``configs/*.yaml``, e.g. caltech101 alpha 5.0,
  dtd beta 3.0), chosen on those datasets' test results: we do not tune on test, so one setting serves all.
* Stream order: the reference shuffles the test loader under ``torch.manual_seed(1)`` (``tda_runner.py:116-117``,
  ``utils.py:127-140``); ours is ``numpy.random.default_rng(seed).permutation`` with ``seed`` recorded.
* Views: on ImageNet's shifts (A, V2, R, Sketch) the reference classifies each image through itself and 63 AugMix
  views (``get_ood_preprocess``, ``utils.py:94-105``, for those four only, ``utils.py:132-135``): the 10% with the
  lowest entropy (6 of 64) give the mean of their normalised features (not normalised again) as the image's feature,
  their mean logits as its logits, and the entropy of their mean probabilities (``avg_entropy``, ``utils.py:28-33``)
  and those mean probabilities to the caches (``get_clip_logits``, ``utils.py:64-91``). On ImageNet and the ten
  cross-domain datasets it uses the image alone. ``tda.views=-1`` (default) follows that choice by dataset; ``0`` is
  the image alone, ``63`` the views anywhere. Ours seed each image's views by (``tda.seed``, its position in the
  split), so its feature does not depend on the stream's order; the reference draws from NumPy's global generator.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from clipadapt.config import option
from clipadapt.data.augmix import augmented_views
from clipadapt.errors import ConfigError

PROTOCOL_LABEL = "test-time (unlabelled test stream)"
# the datasets the reference classifies through AugMix views (its 'A', 'V', 'R', 'S': kdiAAA/TDA utils.py:132-135)
VIEW_DATASETS = ("imagenet-a", "imagenet-v2", "imagenet-r", "imagenet-sketch")
REFERENCE_VIEWS = 63  # get_ood_preprocess's n_views (utils.py:103)


def stream_order(count: int, seed: int) -> np.ndarray:
    """The positions of a split's images in the order the stream presents them."""
    return np.random.default_rng(seed).permutation(count)


def order_digest(order: np.ndarray) -> str:
    """A short fingerprint of a stream order, recorded with its seed: another order is recorded as such."""
    return hashlib.sha256(np.asarray(order, dtype=np.int64).tobytes()).hexdigest()[:16]


@dataclass
class TdaConfig:
    positive_capacity: int = option(3, help="features kept per class in the positive cache (shot_capacity)")
    positive_alpha: float = option(2.0, help="weight of the positive cache's logits")
    positive_beta: float = option(5.0, help="sharpness of the positive cache's affinities")
    negative_capacity: int = option(2, help="features kept per class in the negative cache")
    negative_alpha: float = option(0.117, help="weight of the negative cache's logits")
    negative_beta: float = option(1.0, help="sharpness of the negative cache's affinities")
    entropy_lower: float = option(0.2, help="normalised entropy above which an image may enter the negative cache")
    entropy_upper: float = option(0.5, help="normalised entropy below which an image may enter the negative cache")
    mask_lower: float = option(0.03, help="class probabilities above this are the negative cache's values")
    mask_upper: float = option(1.0, help="class probabilities below this are the negative cache's values")
    views: int = option(-1, help="AugMix views per image besides itself (-1: as the reference, 63 on ImageNet-A, "
                                 "-V2, -R and -Sketch and none elsewhere; 0: the image alone)")
    selection: float = option(0.1, help="with views: the fraction of the most confident ones averaged")
    seed: int = option(0, help="with views: seed of every image's views (with its place among the split's "
                                "readable images)")

    def check(self) -> None:
        for name in ("positive_capacity", "negative_capacity"):
            if getattr(self, name) < 0:
                raise ConfigError(f"tda.{name} must be 0 or more, got {getattr(self, name)}")
        if self.views < -1:
            raise ConfigError(f"tda.views must be -1 (the reference's choice by dataset), 0 or more, got {self.views}")
        views = REFERENCE_VIEWS if self.views == -1 else self.views  # -1 may resolve to the reference's 63
        if views > 0 and (not 0 < self.selection <= 1 or int((views + 1) * self.selection) < 1):
            raise ConfigError(f"tda.selection must keep at least one of the {views + 1} views, got "
                              f"{self.selection}")
        if not self.entropy_lower <= self.entropy_upper:
            raise ConfigError(f"tda.entropy_lower ({self.entropy_lower}) must not exceed tda.entropy_upper "
                              f"({self.entropy_upper})")

    def views_for(self, dataset: str) -> int:
        """The views TDA classifies each image of ``dataset`` through (``-1`` resolved as the reference does)."""
        if self.views >= 0:
            return self.views
        return REFERENCE_VIEWS if dataset in VIEW_DATASETS else 0


def _entropy(logits: torch.Tensor) -> float:
    return float(-(logits.softmax(-1) * logits.log_softmax(-1)).sum())


@dataclass
class Cache:
    """Per class, at most ``capacity`` entries ``(feature, entropy, probabilities)`` with the lowest entropy, sorted
    by it (the reference's ``update_cache``)."""

    capacity: int
    entries: dict[int, list[tuple[torch.Tensor, float, torch.Tensor]]] = field(default_factory=dict)

    def add(self, label: int, feature: torch.Tensor, entropy: float, probabilities: torch.Tensor) -> None:
        if self.capacity <= 0:
            return
        items = self.entries.setdefault(label, [])
        if len(items) < self.capacity:
            items.append((feature, entropy, probabilities))
        elif entropy < items[-1][1]:
            items[-1] = (feature, entropy, probabilities)
        items.sort(key=lambda item: item[1])

    def __len__(self) -> int:
        return sum(len(items) for items in self.entries.values())

    def logits(self, feature: torch.Tensor, classes: int, alpha: float, beta: float,
               mask: tuple[float, float] | None = None) -> torch.Tensor:
        """``alpha * exp(-beta (1 - f K^T)) V``: V one-hot of the entries' classes, or (``mask``) their
        probabilities inside the mask's open interval."""
        keys, values = [], []
        for label in sorted(self.entries):
            for entry_feature, _, probabilities in self.entries[label]:
                keys.append(entry_feature)
                if mask is None:
                    values.append(torch.nn.functional.one_hot(torch.tensor(label), classes).double())
                else:
                    values.append(((probabilities > mask[0]) & (probabilities < mask[1])).double())
        affinity = feature.double() @ torch.stack(keys).double().T
        return alpha * (-(beta - beta * affinity)).exp() @ torch.stack(values)


@dataclass
class TdaState:
    """What TDA has kept after a stream: the two caches (for the record and the tests)."""

    positive: Cache
    negative: Cache


def most_confident(logits: torch.Tensor, fraction: float) -> torch.Tensor:
    """The rows with the lowest entropy, the first ``int(rows * fraction)`` (TPT's ``select_confident_samples``,
    tpt_classification.py:41-44; TDA's views, utils.py:77-78)."""
    entropy = -(logits.softmax(1) * logits.log_softmax(1)).sum(1)
    return torch.argsort(entropy, descending=False)[: int(logits.shape[0] * fraction)]


@torch.no_grad()
def encoded_views(bundle, image: Image.Image, views: int, augmix: bool, seed: int, position: int) -> torch.Tensor:
    """The normalised image features of ``image`` (row 0) and ``views`` augmented views of it, drawn from a
    generator seeded by (``seed``, ``position``): an image's views do not depend on the images before it."""
    rng = np.random.default_rng([seed, position])
    batch = augmented_views(image, bundle.preprocess, views, augmix, rng).to(bundle.device)
    return torch.nn.functional.normalize(bundle.encode_image(batch).float(), dim=-1)


def choose_views(found: torch.Tensor, head: torch.Tensor, scale: float, selection: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's normalised view features (V, D): the ``selection`` of them with the lowest entropy give its
    feature (their mean) and its probabilities (their mean probabilities)."""
    logits = scale * found @ head.T
    chosen = most_confident(logits, selection)
    return found[chosen].mean(0), logits[chosen].softmax(1).mean(0)


@torch.no_grad()
def view_features(bundle, head: torch.Tensor, scale: float, load: Callable[[int], Image.Image], count: int,
                  views: int, selection: float, seed: int, on_image: Callable[[], None] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image ``load(i)``: itself and ``views`` AugMix views, of which the ``selection`` with the lowest entropy
    give the image's feature (their mean normalised feature, not normalised again) and its probabilities (their mean
    probabilities), as the reference's ``get_clip_logits`` (``utils.py:76-85``). Returns (count, D) and (count, C)
    in the split's order; images only reach it, no label."""
    features = probabilities = None
    head = head.to(bundle.device).float()
    for position in range(count):
        found = encoded_views(bundle, load(position), views, True, seed, position)
        feature, probability = choose_views(found, head, scale, selection)
        if features is None:
            features, probabilities = torch.empty(count, found.shape[1]), torch.empty(count, head.shape[0])
        features[position], probabilities[position] = feature.cpu(), probability.cpu()
        if on_image is not None:
            on_image()
    return features, probabilities


@torch.no_grad()
def tda_stream(features: torch.Tensor, head: torch.Tensor, scale: float, config: TdaConfig,
               order: np.ndarray, probabilities: torch.Tensor | None = None) -> tuple[torch.Tensor, TdaState]:
    """TDA over the stream ``order`` of normalised image ``features`` (N, D) with the zero-shot ``head`` (C, D):
    returns the adapted logits (N, C) in the split's own order (row i answers image i), and the final caches.
    ``probabilities`` (N, C), from ``view_features``: the images' mean probabilities over their chosen views, whose
    entropy and values go to the caches in place of the softmax of the logits (the reference's multi-view path)."""
    config.check()
    classes = head.shape[0]
    max_entropy = math.log2(classes)
    positive, negative = Cache(config.positive_capacity), Cache(config.negative_capacity)
    out = torch.empty(len(features), classes, dtype=torch.float64)
    for index in np.asarray(order, dtype=np.int64):
        feature = features[int(index)].double()
        logits = scale * feature @ head.double().T  # with views: the mean of the chosen views' logits
        predicted = int(logits.argmax())
        if probabilities is None:
            entropy, values = _entropy(logits), logits.softmax(-1)
        else:
            values = probabilities[int(index)].double()
            entropy = float(-(values * values.clamp_min(torch.finfo(torch.float64).tiny).log()).sum())
        positive.add(predicted, feature, entropy, values)
        if config.entropy_lower < entropy / max_entropy < config.entropy_upper:
            negative.add(predicted, feature, entropy, values)
        adapted = logits.clone()
        if len(positive):
            adapted += positive.logits(feature, classes, config.positive_alpha, config.positive_beta)
        if len(negative):
            adapted -= negative.logits(feature, classes, config.negative_alpha, config.negative_beta,
                                       (config.mask_lower, config.mask_upper))
        out[int(index)] = adapted
    return out.float(), TdaState(positive, negative)
