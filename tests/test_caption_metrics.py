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
    from pycocoevalcap.meteor.meteor import Meteor

    meteor = Meteor()  # the same scorer called directly on the same PTB tokens
    try:
        expected_meteor = meteor.compute_score(refs, preds)[0]
    finally:
        del meteor
    assert scores.metrics["meteor"] == pytest.approx(expected_meteor, abs=1e-9) and expected_meteor > 0.1
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


# -- the scorer: which CLIP scores CLIPScore ------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_clip_dir(tmp_path_factory):
    """A second tiny random CLIP (seed 1): a scorer that is not the run's encoder."""
    from clipadapt.models.random_init import save_random_clip

    return save_random_clip(tmp_path_factory.mktemp("models") / "other-clip", preset="tiny", seed=1)


def test_clip_score_with_a_given_scorer_is_the_formula_in_the_scorers_embeddings(tiny_clip_dir, tiny_bundle,
                                                                                 other_clip_dir):
    from clipadapt.captioning.scoring import resolve_scorer, score_predictions
    from clipadapt.models.config import ModelConfig
    from tests.helpers import coloured_image

    scorer = resolve_scorer(str(other_clip_dir), ModelConfig(spec=str(tiny_clip_dir)), tiny_bundle)
    assert not scorer.own and scorer.bundle is not tiny_bundle
    assert scorer.record() == {"model": str(other_clip_dir), "requested": str(other_clip_dir), "own": False,
                               "weight": 2.5, "prefix": "A photo depicts "}
    pictures = [coloured_image(c, seed=k) for k, c in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)])]
    entries = [{"image_id": str(k), "file": f"{k}.png", "caption": c, "references": r}
               for k, (c, r) in enumerate(zip(["a red circle", "two green squares", "a star"],
                                              [["red circle", "a round red thing"], ["green squares"],
                                               ["a star", "a purple star"]], strict=True))]

    def image_features(bundle):
        pixels = torch.cat([bundle.preprocess.normalize(bundle.preprocess.to_uint8(p)[None]) for p in pictures])
        with torch.no_grad():
            return bundle.encode_image(pixels).float()

    features = image_features(scorer.bundle)
    result = score_predictions(entries, features, scorer, use_java=False)
    assert result["clipscore"]["model"] == str(other_clip_dir)
    with torch.no_grad():
        for k, entry in enumerate(entries):
            text = scorer.bundle.encode_text([CLIPSCORE_PREFIX + entry["caption"]])[0]
            expected = 2.5 * max(float(features[k] @ text), 0.0)
            refs = scorer.bundle.encode_text([CLIPSCORE_PREFIX + r for r in entry["references"]])
            best = max(float((refs @ text).max()), 0.0)
            scores = result["predictions"][k]["scores"]
            assert scores["clip_score"] == pytest.approx(expected, abs=1e-5)
            assert scores["ref_clip_score"] == pytest.approx(
                2 * expected * best / (expected + best) if expected + best > 0 else 0.0, abs=1e-5)
    assert result["metrics"]["clip_score"] == pytest.approx(
        sum(p["scores"]["clip_score"] for p in result["predictions"]) / 3, abs=1e-5)
    # the same captions judged by the run's own CLIP score differently: the scorer matters
    own = resolve_scorer("run", ModelConfig(spec=str(tiny_clip_dir)), tiny_bundle)
    assert own.own and own.bundle is tiny_bundle
    mine = score_predictions(entries, image_features(tiny_bundle), own, use_java=False)
    assert mine["metrics"]["clip_score"] != pytest.approx(result["metrics"]["clip_score"], abs=1e-3)
    assert mine["metrics"]["cider"] == result["metrics"]["cider"]


def test_the_default_scorer_falls_back_at_once_offline_and_loads_a_local_copy(tiny_clip_dir, tiny_bundle, tmp_path,
                                                                                monkeypatch, caplog):
    """Not told it is offline (no HF_HUB_OFFLINE) and with the hub unreachable, the definition's ViT-B/32 is looked
    for in the local hub cache, and the run's own CLIP scores with one warning, in well under the hub client's
    half minute of retries; once a copy is in the cache, it scores."""
    import socket
    import time

    import huggingface_hub.constants

    from clipadapt.captioning import scoring
    from clipadapt.errors import ConfigError
    from clipadapt.models import hf
    from clipadapt.models.config import ModelConfig

    def unreachable(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(scoring, "_warned", set())
    hf.hub_reachable.cache_clear()
    try:
        model = ModelConfig(spec=str(tiny_clip_dir))
        start = time.perf_counter()
        with caplog.at_level("WARNING", logger="clipadapt.captioning.scoring"):
            first = scoring.resolve_scorer(scoring.DEFINITION_SCORER, model, tiny_bundle)
            second = scoring.resolve_scorer(scoring.DEFINITION_SCORER, model, tiny_bundle)
        assert time.perf_counter() - start < 5
        assert first.own and second.own and first.bundle is tiny_bundle
        assert first.record()["fallback"] == (f"{scoring.DEFINITION_SCORER} is not in the local hub cache, and the "
                                              "hub cannot be reached (offline)")
        assert first.record()["requested"] == scoring.DEFINITION_SCORER
        assert len(caplog.records) == 1 and "not comparable with papers" in caplog.records[0].getMessage()
        assert scoring.scorer_label(first.record()) == f"{tiny_clip_dir} (fallback)"
        # asked for by name (strict), the same scorer is an error instead
        with pytest.raises(ConfigError, match="cannot load the CLIPScore model 'openai/clip-vit-base-patch32': "
                                              "openai/clip-vit-base-patch32 is not in the local hub cache"):
            scoring.resolve_scorer(scoring.DEFINITION_SCORER, model, tiny_bundle, strict=True)
        # a copy in the hub cache (the layout `hf download` leaves) is read from there, still offline
        repo = tmp_path / "hub" / "models--openai--clip-vit-base-patch32"
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text("abc123")
        snapshot = repo / "snapshots" / "abc123"
        snapshot.mkdir(parents=True)
        for path in tiny_clip_dir.iterdir():
            (snapshot / path.name).write_bytes(path.read_bytes())
        cached = scoring.resolve_scorer(scoring.DEFINITION_SCORER, model, tiny_bundle)
        assert not cached.own and "fallback" not in cached.record()
        assert cached.record()["model"] == scoring.DEFINITION_SCORER
    finally:
        hf.hub_reachable.cache_clear()
