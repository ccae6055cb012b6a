"""Caption metrics: pycocoevalcap's numbers through our wrapper, the Java-free fallback, CLIPScore by hand."""

from __future__ import annotations

import pytest
import torch

from clipadapt.captioning.metrics import (
    CLIPSCORE_PREFIX,
    clip_scores,
    java_available,
    ngram_scores,
    simple_tokenize,
    tokenize,
)
from tests.helpers import require_or_skip

REFERENCES = {
    "a": ["A red circle on a blue background.", "a red round shape", "The circle is red."],
    "b": ["two green squares", "Green squares, two of them.", "a pair of green squares"],
    "c": ["a yellow triangle next to a purple star", "A star and a triangle."],
}
PREDICTIONS = {"a": "a red circle on a blue background", "b": "a green square", "c": "a purple star"}


def _direct(refs, preds):
    """pycocoevalcap called the way its COCOEvalCap does, on already tokenised captions."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    bleu, _ = Bleu(4).compute_score(refs, preds, verbose=0)
    return {"bleu4": bleu[3], "rouge_l": Rouge().compute_score(refs, preds)[0],
            "cider": Cider().compute_score(refs, preds)[0]}


def test_fallback_scores_equal_pycocoevalcap_on_the_same_tokens():
    scores = ngram_scores(PREDICTIONS, REFERENCES, use_java=False)
    refs = {k: [simple_tokenize(c) for c in v] for k, v in REFERENCES.items()}
    preds = {k: [simple_tokenize(v)] for k, v in PREDICTIONS.items()}
    expected = _direct(refs, preds)
    assert scores.metrics == pytest.approx(expected, abs=1e-12)
    assert scores.tokenizer == "simple" and scores.skipped[0].startswith("meteor: needs Java")
    assert set(scores.per_image) == {"a", "b", "c"}
    # the per-image CIDEr averages to the corpus CIDEr, and the exact caption scores best
    assert sum(s["cider"] for s in scores.per_image.values()) / 3 == pytest.approx(scores.metrics["cider"])
    assert max(scores.per_image, key=lambda k: scores.per_image[k]["cider"]) == "a"
    assert simple_tokenize("Green squares, two of them.") == "green squares two of them"


@pytest.mark.slow
def test_ptb_scores_equal_pycocoevalcap_called_directly():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    require_or_skip(java_available(), "Java (the PTB tokenizer and METEOR run on it)")

    scores = ngram_scores(PREDICTIONS, REFERENCES)
    tokenizer = PTBTokenizer()
    refs = tokenizer.tokenize({k: [{"caption": c} for c in v] for k, v in REFERENCES.items()})
    preds = tokenizer.tokenize({k: [{"caption": v}] for k, v in PREDICTIONS.items()})
    assert refs["b"][1] == "green squares two of them"  # PTB: lower case, punctuation removed
    assert {k: v for k, v in scores.metrics.items() if k != "meteor"} == pytest.approx(_direct(refs, preds))
    assert scores.tokenizer == "ptb" and not scores.skipped
    assert 0 < scores.metrics["meteor"] < 1
    assert tokenize({"x": ["A red, round shape."]})[0] == {"x": ["a red round shape"]}


def test_mismatched_images_are_refused():
    with pytest.raises(ValueError, match="cover different images"):
        ngram_scores({"a": "x"}, REFERENCES, use_java=False)


def test_clip_score_is_the_formula(tiny_clip_dir):
    from clipadapt.models import load_model

    bundle = load_model(str(tiny_clip_dir))
    image_features = torch.nn.functional.normalize(torch.randn(3, bundle.embed_dim,
                                                               generator=torch.Generator().manual_seed(0)), dim=-1)
    captions = ["a red circle", "two green squares", "a star"]
    references = [["red circle", "a round red thing"], ["green squares"], ["a star", "a purple star", "stars"]]
    scores = clip_scores(bundle, image_features, captions, references)
    with torch.no_grad():
        text = bundle.encode_text([CLIPSCORE_PREFIX + c for c in captions])
        for i in range(3):
            cos = float(image_features[i] @ text[i])
            expected = 2.5 * max(cos, 0.0)
            assert scores["clip_score"][i] == pytest.approx(expected, abs=1e-5)
            refs = bundle.encode_text([CLIPSCORE_PREFIX + r for r in references[i]])
            best = max(float((refs @ text[i]).max()), 0.0)
            harmonic = 2 * expected * best / (expected + best) if expected + best > 0 else 0.0
            assert scores["ref_clip_score"][i] == pytest.approx(harmonic, abs=1e-5)
    # a caption that is its own reference gets the full reference term (cos = 1)
    same = clip_scores(bundle, image_features[:1], ["a red circle"], [["a red circle"]])
    clip = same["clip_score"][0]
    assert same["ref_clip_score"][0] == pytest.approx(2 * clip / (clip + 1) if clip > 0 else 0.0, abs=1e-5)
