"""Scoring captions: the n-gram metrics against the references, and CLIPScore with its scorer.

CLIPScore is defined with one judge, OpenAI's CLIP ViT-B/32 (Hessel et al. 2021; the formula and how ours compares
with the reference code are in ``captioning/metrics.py``): only numbers scored by it compare with papers, and a
ViT-L/14 captioner judged by its own encoder would be marking its own homework. ``eval.clipscore_model`` names the
scorer. By default it is ``openai/clip-vit-base-patch32`` (the same weights in transformers), from the hub or from
the local hub cache; where neither can serve it (offline and not downloaded: found out in seconds, not in the hub
client's half minute of retries) the run's own CLIP scores instead, with one warning per process, and metrics.json
records what was asked for and what scored. On the offline world that is world:tiny. Any other value (a hub id,
an alias such as ViT-B/32, a folder, world:tiny, or ``run`` for the run's own CLIP) must load, or the command stops
before it writes anything.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipadapt.captioning.data import CaptionSplit
from clipadapt.captioning.metrics import CLIPSCORE_PREFIX, CLIPSCORE_WEIGHT, clip_scores, ngram_scores
from clipadapt.config import option
from clipadapt.engine.features import FeatureCache, encode_split
from clipadapt.errors import ClipAdaptError, ConfigError
from clipadapt.models.bundle import ClipBundle
from clipadapt.models.config import ModelConfig

log = logging.getLogger(__name__)

DEFINITION_SCORER = "openai/clip-vit-base-patch32"
OWN_SCORER = "run"
SCORER_CHOICES = ("a hub id (reachable, or in the local hub cache), an alias such as ViT-B/32, a CLIP folder, "
                  f"world:tiny, or {OWN_SCORER} (the run's own CLIP)")
_warned: set[tuple[str, str]] = set()


@dataclass
class CaptionEvalConfig:
    clipscore_model: str = option(DEFINITION_SCORER, help=(
        "CLIP that scores CLIPScore and RefCLIPScore: a hub id, a folder, world:tiny, or run (the run's own CLIP). "
        f"The default, {DEFINITION_SCORER} as the metric is defined, falls back to the run's own CLIP with a "
        "warning where it cannot be loaded; any other value must load"))

    def __post_init__(self) -> None:
        if not str(self.clipscore_model).strip():
            raise ConfigError(f"eval.clipscore_model is empty; valid choices: {SCORER_CHOICES}")


@dataclass
class Scorer:
    """The CLIP that scores CLIPScore: what was asked for, what scores, and why they differ."""

    bundle: ClipBundle
    model: str  # the spec that scores
    requested: str
    own: bool  # the run's own CLIP (its image features are the encoder's pooled embeddings)
    fallback: str | None = None  # why the requested scorer is not the one scoring

    def record(self) -> dict[str, Any]:
        """What metrics.json and eval files say about the scorer."""
        record: dict[str, Any] = {"model": self.model, "requested": self.requested, "own": self.own,
                                  "weight": CLIPSCORE_WEIGHT, "prefix": CLIPSCORE_PREFIX}
        if self.fallback:
            record["fallback"] = self.fallback
        return record


def scorer_label(record: dict[str, Any] | None, run_model: str = "?") -> str:
    """How tables name a run's CLIPScore scorer (runs from before the setting were scored by their own CLIP)."""
    if not record:
        return f"{run_model} (own)"
    return f"{record['model']} (fallback)" if record.get("fallback") else str(record["model"])


def scorer_note(record: dict[str, Any] | None, run_model: str = "?") -> str:
    """One line under a table: who scored CLIPScore, and whether the numbers compare with papers."""
    label = scorer_label(record, run_model)
    if record and record.get("fallback"):
        return (f"CLIPScore and RefCLIPScore scored by {record['model']}, the run's own CLIP, not by "
                f"{record['requested']} ({record['fallback']}): not comparable with papers")
    return f"CLIPScore and RefCLIPScore scored by {label}"


def _load(spec: str, device: str | torch.device) -> ClipBundle:
    """Load a scorer without a slow failing download: a hub id is read from the local hub cache when the hub
    cannot be reached, and refused at once when it is not there either."""
    from clipadapt.models import HUB_ALIASES, MODELS, SCHEMES, load_model
    from clipadapt.models.hf import cached_hub_snapshot, hub_reachable

    hub_id = HUB_ALIASES.get(spec, spec)
    local = Path(spec).expanduser()
    scheme = spec.partition(":")[0] if ":" in spec else None
    is_hub_id = hub_id.count("/") == 1 and not local.exists() and not hub_id.startswith((".", "/", "~"))
    if spec in MODELS and spec not in HUB_ALIASES or local.is_dir() or scheme in SCHEMES or not is_hub_id:
        return load_model(spec, device=device)
    if hub_reachable():
        return load_model(hub_id, device=device)
    snapshot = cached_hub_snapshot(hub_id)
    if snapshot is None:
        raise ClipAdaptError(f"{hub_id} is not in the local hub cache, and the hub cannot be reached (offline)")
    return load_model(str(snapshot), device=device)


def resolve_scorer(requested: str, model: ModelConfig, run_bundle: ClipBundle | None = None,
                   strict: bool | None = None, device: str | torch.device = "cpu") -> Scorer:
    """The CLIP that scores CLIPScore for a run whose encoder is ``model`` (``run_bundle`` if loaded already).

    ``strict`` (default: unless ``requested`` is the definition's scorer) makes a scorer that cannot be loaded a
    ``ConfigError``; otherwise the run's own CLIP scores, with one warning per process."""
    requested = requested.strip()
    strict = requested != DEFINITION_SCORER if strict is None else strict

    def own(reason: str | None = None) -> Scorer:
        bundle = run_bundle
        if bundle is None:
            from clipadapt.models import load_model

            bundle = load_model(model.spec, device=device, revision=model.revision,
                                trust_remote_code=model.trust_remote_code)
        return Scorer(bundle, model.spec, requested, own=True, fallback=reason)

    if requested in (OWN_SCORER, model.spec):
        return own()
    try:
        bundle = _load(requested, device)
    except ClipAdaptError as error:
        reason = str(error).split(". ")[0].rstrip(".")
        if strict:
            raise ConfigError(f"cannot load the CLIPScore model '{requested}': {reason}; valid choices: "
                              f"{SCORER_CHOICES}") from None
        if (requested, model.spec) not in _warned:
            _warned.add((requested, model.spec))
            log.warning("CLIPScore: %s cannot be loaded (%s); scoring with the run's own CLIP %s instead, whose "
                        "numbers are not comparable with papers (set eval.clipscore_model to a local copy of %s, "
                        "or to run to silence this)", requested, reason, model.spec, DEFINITION_SCORER)
        return own(reason)
    return Scorer(bundle, requested, requested, own=False)


def scorer_image_features(scorer: Scorer, split: CaptionSplit, positions: Sequence[int],
                          own_features: torch.Tensor | None = None, cache: FeatureCache | None = None,
                          batch_size: int = 64) -> torch.Tensor:
    """The scorer's normalised image embeddings of the split's images at ``positions``, in that order. The run's
    own CLIP reuses ``own_features`` (the encoder's pooled embeddings: the same numbers) where given."""
    if scorer.own and own_features is not None:
        return own_features
    encoded = encode_split(scorer.bundle, split.image_split(), batch_size, cache=cache)
    rows = {int(p): k for k, p in enumerate(encoded.positions)}
    missing = [int(p) for p in positions if int(p) not in rows]
    if missing:
        raise ClipAdaptError(f"the CLIPScore model could not read {len(missing)} captioned image(s), e.g. "
                             f"{split.describe(missing[0])}")
    return encoded.features[[rows[int(p)] for p in positions]]


def score_predictions(entries: list[dict[str, Any]], image_features: torch.Tensor, scorer: Scorer,
                      use_java: bool | None = None) -> dict[str, Any]:
    """Score captions (``{"image_id", "file", "caption", "references"}`` each, image ``i`` given by row ``i`` of
    ``image_features``): the corpus metrics, the entries with their per-image ``scores``, the n-gram tokenizer, the
    metrics that could not be computed, and the scorer's record."""
    if not entries:
        raise ClipAdaptError("no captions to score")
    captions = {e["image_id"]: e["caption"] for e in entries}
    references = {e["image_id"]: list(e["references"]) for e in entries}
    scores = ngram_scores(captions, references, use_java)
    clip = clip_scores(scorer.bundle, image_features, [e["caption"] for e in entries],
                       [list(e["references"]) for e in entries])
    metrics = {**scores.metrics, "clip_score": float(np.mean(clip["clip_score"])),
               "ref_clip_score": float(np.mean(clip["ref_clip_score"]))}
    predictions = []
    for k, entry in enumerate(entries):
        per_image = {**scores.per_image[entry["image_id"]], "clip_score": float(clip["clip_score"][k]),
                     "ref_clip_score": float(clip["ref_clip_score"][k])}
        predictions.append({"image_id": entry["image_id"], "file": entry["file"], "caption": entry["caption"],
                            "references": list(entry["references"]),
                            "scores": {m: round(v, 6) for m, v in per_image.items()}})
    return {"metrics": {m: round(v, 6) for m, v in metrics.items()}, "predictions": predictions,
            "tokenizer": scores.tokenizer, "skipped": scores.skipped, "images": len(predictions),
            "clipscore": scorer.record()}


def rescore_predictions(saved: list[dict[str, Any]], split: CaptionSplit, scorer: Scorer,
                        use_java: bool | None = None, cache: FeatureCache | None = None) -> dict[str, Any]:
    """Score saved captions (a run's predictions.json) again, with ``scorer``: nothing is decoded."""
    position = {image.image_id: k for k, image in enumerate(split.images)}
    unknown = [p["image_id"] for p in saved if p["image_id"] not in position]
    if unknown:
        raise ClipAdaptError(f"the saved {split.name} predictions name {len(unknown)} image(s) the {split.name} "
                             f"split no longer has, e.g. '{unknown[0]}'")
    features = scorer_image_features(scorer, split, [position[p["image_id"]] for p in saved], cache=cache)
    return score_predictions(saved, features, scorer, use_java)
