"""Caption metrics: BLEU-4, ROUGE-L, CIDEr-D and METEOR through pycocoevalcap; CLIPScore and RefCLIPScore.

The n-gram metrics are pycocoevalcap's (the COCO caption evaluation code: its ``Cider`` is CIDEr-D), on captions
tokenised by its Stanford PTB tokenizer, as every captioning paper reports them. Both the tokenizer and METEOR run
on Java. Without Java the captions are tokenised by ``simple_tokenize`` (lower case, words and numbers, the PTB
punctuation dropped), METEOR is skipped, and the result says so (``tokenizer``, ``skipped``): scores from the two
tokenisers are close but not identical, so compare runs only within one.

CLIPScore (Hessel et al. 2021, "CLIPScore: A Reference-free Evaluation Metric for Image Captioning", EMNLP; eq. 1
and 2): CLIP-S(c, v) = w * max(cos(c, v), 0) with w = 2.5, c the CLIP text embedding of "A photo depicts " + caption
and v the CLIP image embedding; RefCLIP-S(c, R, v) = harmonic mean of CLIP-S(c, v) and max(max over r in R of
cos(c, r), 0), the references r prefixed the same way. Corpus values are means over images. The metric is defined
with OpenAI's CLIP ViT-B/32: which CLIP scores is ``eval.clipscore_model`` (``captioning/scoring.py``); the
functions here take any ClipBundle.

Checked against the reference code (github.com/jmhessel/clipscore, ``clipscore.py``: ``get_clip_score``,
``get_refonlyclipscore`` and ``main``): the same w, prefix (candidates and references), L2 normalisation, 77-token
truncation, per-image clamp and harmonic mean, and the same preprocessing for ViT-B/32 (PIL bicubic resize of the
short side to 224, centre crop, CLIP's mean and std: what openai/clip-vit-base-patch32's processor does). Where
ours differ: (1) the reference clamps only the image-text cosine; its reference term is max_r cos(c, r) without
the max(., 0) of the paper's definition, so ours follow the paper, which matters only when every reference has a
negative cosine with the caption; (2) where both terms are 0 the reference divides 0 by 0 (NaN), ours give 0;
(3) the paper's numbers were computed in float16 on a GPU, ours in the scorer's own dtype (float32 unless the
model was loaded otherwise): the reference's README reports 0.8585 on CPU against 0.8584 on GPU for its example;
(4) the reference loads the ``clip`` package's ViT-B/32, ours the transformers conversion of the same weights.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

log = logging.getLogger(__name__)

CLIPSCORE_WEIGHT = 2.5
CLIPSCORE_PREFIX = "A photo depicts "
NGRAM_METRICS = ("bleu4", "meteor", "rouge_l", "cider")
_WORDS = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def java_available() -> bool:
    return shutil.which("java") is not None


def simple_tokenize(text: str) -> str:
    """The fallback tokenizer: lower case, words and numbers (with 's etc.), punctuation dropped."""
    return " ".join(_WORDS.findall(text.lower()))


def tokenize(captions: dict[str, list[str]], use_java: bool | None = None) -> tuple[dict[str, list[str]], str]:
    """``{id: [caption, ...]}`` tokenised, and the tokenizer's name (``ptb`` or ``simple``)."""
    if use_java if use_java is not None else java_available():
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        with _quiet_stderr():  # the tokenizer's JVM reports its speed on stderr
            return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()}), "ptb"
    return {k: [simple_tokenize(c) for c in v] for k, v in captions.items()}, "simple"


@contextlib.contextmanager
def _quiet_stderr():
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@dataclass
class CaptionScores:
    metrics: dict[str, float]  # corpus-level: bleu4, meteor, rouge_l, cider (what could be computed)
    per_image: dict[str, dict[str, float]]  # id -> the per-image scores of each metric
    tokenizer: str
    skipped: list[str] = field(default_factory=list)  # metrics that could not be computed, with why

    def to_dict(self) -> dict:
        return {"metrics": self.metrics, "tokenizer": self.tokenizer, "skipped": self.skipped}


def ngram_scores(predictions: dict[str, str], references: dict[str, list[str]],
                 use_java: bool | None = None, only: Sequence[str] = NGRAM_METRICS) -> CaptionScores:
    """BLEU-4, METEOR, ROUGE-L and CIDEr-D (or ``only`` some) of one caption per image against its references
    (pycocoevalcap)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if set(predictions) != set(references):
        missing = sorted(set(references) ^ set(predictions))[:3]
        raise ValueError(f"predictions and references cover different images, e.g. {missing}")
    if not predictions:
        raise ValueError("no captions to score")
    java = java_available() if use_java is None else use_java
    # one tokenizer run (one JVM) for both; each line is tokenised on its own, so this equals two runs
    both, tokenizer = tokenize({**{("ref", k): v for k, v in references.items()},
                                **{("pred", k): [v] for k, v in predictions.items()}}, java)
    refs = {k: both[("ref", k)] for k in references}
    preds = {k: both[("pred", k)] for k in references}
    ids = list(references)
    metrics: dict[str, float] = {}
    per_image: dict[str, dict[str, float]] = {k: {} for k in ids}

    def add(name: str, corpus: float, each) -> None:
        metrics[name] = float(corpus)
        for key, value in zip(ids, each, strict=True):
            per_image[key][name] = float(value)

    if "bleu4" in only:
        bleu, bleu_each = Bleu(4).compute_score(refs, preds, verbose=0)
        add("bleu4", bleu[3], bleu_each[3])
    skipped = []
    if "meteor" in only and java:
        from pycocoevalcap.meteor.meteor import Meteor

        meteor = Meteor()  # a JVM, stopped when the object goes
        try:
            add("meteor", *meteor.compute_score(refs, preds))
        finally:
            del meteor
    elif "meteor" in only:
        skipped.append("meteor: needs Java" + (" and the PTB tokenizer (decode.tokenizer=simple)" if java_available()
                                               else " (not found on PATH)"))
    if "rouge_l" in only:
        add("rouge_l", *Rouge().compute_score(refs, preds))
    if "cider" in only:
        add("cider", *Cider().compute_score(refs, preds))
    return CaptionScores(metrics, per_image, tokenizer, skipped)


# -- CLIPScore ------------------------------------------------------------------------------------------------


def clip_score(image_features: torch.Tensor, caption_features: torch.Tensor) -> torch.Tensor:
    """Per image: 2.5 * max(cos, 0) of L2-normalised (N, D) features."""
    return CLIPSCORE_WEIGHT * (image_features * caption_features).sum(dim=-1).clamp(min=0)


def ref_clip_score(clip_scores: torch.Tensor, caption_features: torch.Tensor,
                   reference_features: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per image: harmonic mean of CLIPScore and max(max_r cos(caption, r), 0)."""
    best = torch.stack([(refs @ caption).max() for caption, refs in zip(caption_features, reference_features,
                                                                        strict=True)]).clamp(min=0)
    total = clip_scores + best
    return torch.where(total > 0, 2 * clip_scores * best / total.clamp(min=1e-12), torch.zeros_like(total))


@torch.inference_mode()
def encode_captions(bundle, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """L2-normalised text features of ``"A photo depicts " + text`` (float32, on the CPU)."""
    out = [bundle.encode_text([CLIPSCORE_PREFIX + t for t in texts[i:i + batch_size]]).float().cpu()
           for i in range(0, len(texts), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, bundle.embed_dim)


def clip_scores(bundle, image_features: torch.Tensor, captions: Sequence[str],
                references: Sequence[Sequence[str]] | None = None, batch_size: int = 256) -> dict[str, np.ndarray]:
    """``{"clip_score": (N,), "ref_clip_score": (N,)}`` for images given by their normalised CLIP features."""
    caption_features = encode_captions(bundle, captions, batch_size)
    image_features = torch.nn.functional.normalize(image_features.float().cpu(), dim=-1)
    scores = clip_score(image_features, caption_features)
    result = {"clip_score": scores.numpy()}
    if references is not None:
        flat = [r for refs in references for r in refs]
        encoded = encode_captions(bundle, flat, batch_size)
        sizes = [len(refs) for refs in references]
        result["ref_clip_score"] = ref_clip_score(scores, caption_features, encoded.split(sizes)).numpy()
    return result
