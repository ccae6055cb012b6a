from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import pipeline

from clipadapt.data import DataConfig, load_dataset
from clipadapt.data.images import load_image
from clipadapt.data.prompts import TemplateSet
from clipadapt.engine.features import FeatureCache, encode_split
from clipadapt.engine.metrics import classification_metrics
from clipadapt.engine.zeroshot import build_zero_shot_head, evaluate_zero_shot, zero_shot_logits
from tests.helpers import jpeg_bytes, random_photo


def test_probabilities_equal_the_transformers_pipeline(tiny_bundle, tiny_clip_dir):
    classnames = ["cat", "dog", "red circle", "blue square", "tree"]
    images = [load_image(jpeg_bytes(random_photo(500, 375, seed=s))) for s in range(4)]
    pipe = pipeline("zero-shot-image-classification", model=str(tiny_clip_dir), device="cpu")
    expected = []
    for image in images:
        scores = {d["label"]: d["score"] for d in pipe(image, candidate_labels=classnames,
                                                         hypothesis_template="a photo of a {}.")}
        expected.append([scores[c] for c in classnames])

    head = build_zero_shot_head(tiny_bundle, classnames, ["a photo of a {}."])
    pixels = torch.stack([tiny_bundle.preprocess(image) for image in images])
    with torch.inference_mode():
        probs = zero_shot_logits(tiny_bundle, tiny_bundle.encode_image(pixels), head).softmax(-1)
    np.testing.assert_allclose(probs.numpy(), np.array(expected), atol=1e-5)


def test_prompt_ensemble_is_the_renormalised_mean_of_normalised_embeddings(tiny_bundle):
    templates = TemplateSet("t", ["a photo of a {}.", "a drawing of the {}.", "{}!"])
    classnames = ["fox", "owl"]
    head = build_zero_shot_head(tiny_bundle, classnames, templates, batch_size=2)  # batching must not matter
    for row, name in zip(head, classnames, strict=True):
        with torch.inference_mode():
            each = tiny_bundle.encode_text([t.replace("{}", name) for t in templates.templates])
        mean = each.mean(dim=0)
        assert torch.allclose(row, mean / mean.norm(), atol=1e-6)
        assert not torch.allclose(row, each[0], atol=1e-3)  # the ensemble differs from a single template
    assert torch.allclose(head.norm(dim=-1), torch.ones(2), atol=1e-6)


def test_metrics_on_hand_made_scores():
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.5, 0.1, 0.4], [0.1, 0.3, 0.6]])
    labels = np.array([0, 1, 2, 2])
    m = classification_metrics(scores, labels)
    assert m["acc1"] == pytest.approx(0.75) and m["n"] == 4
    assert m["acc5"] == pytest.approx(1.0)  # top-min(5, 3)
    assert m["mean_per_class_acc"] == pytest.approx((1 + 1 + 0.5) / 3)


def test_second_evaluation_reads_the_cache_without_calling_the_image_tower(tiny_bundle, colour_folder):
    dataset = load_dataset(DataConfig(dataset=f"imagefolder:{colour_folder}"))
    calls = []
    hook = tiny_bundle.vision_tower.register_forward_hook(lambda *a: calls.append(1))
    try:
        cache = FeatureCache()
        first = evaluate_zero_shot(tiny_bundle, dataset, "test", ["simple"], num_workers=0, cache=cache)
        n_calls = len(calls)
        assert n_calls > 0 and not first.encoded.from_cache
        second = evaluate_zero_shot(tiny_bundle, dataset, "test", ["clip", "a {} thing."], num_workers=0,
                                    cache=cache)
        # the second evaluation needs val for template selection (new split), but not test again
        val_calls = len(calls) - n_calls
        third = evaluate_zero_shot(tiny_bundle, dataset, "test", ["simple", "clip"], num_workers=0, cache=cache)
        assert len(calls) == n_calls + val_calls  # nothing re-encoded
        assert second.encoded.from_cache and third.encoded.from_cache
        assert torch.equal(first.encoded.features, third.encoded.features)
    finally:
        hook.remove()


def test_cache_key_changes_with_split_and_preprocessing(tiny_bundle, colour_folder):
    dataset = load_dataset(DataConfig(dataset=f"imagefolder:{colour_folder}"))
    cache = FeatureCache()
    keys = {cache.key(tiny_bundle, dataset.split(s)) for s in ("train", "val", "test")}
    assert len(keys) == 3
    shots = load_dataset(DataConfig(dataset=f"imagefolder:{colour_folder}", shots=2))
    assert cache.key(tiny_bundle, shots.split("train")) != cache.key(tiny_bundle, dataset.split("train"))


def test_corrupt_cache_entry_is_recomputed(tiny_bundle, colour_folder):
    dataset = load_dataset(DataConfig(dataset=f"imagefolder:{colour_folder}"))
    cache = FeatureCache()
    split = dataset.split("test")
    fresh = encode_split(tiny_bundle, split, num_workers=0, cache=cache)
    cache.path(tiny_bundle, split).write_bytes(b"garbage")
    again = encode_split(tiny_bundle, split, num_workers=0, cache=cache)
    assert not again.from_cache and torch.allclose(fresh.features, again.features)


def test_one_template_set_is_no_choice(tiny_bundle, colour_folder):
    """Which split chooses among several sets is proven in test_selection.py (val and test disagree there)."""
    dataset = load_dataset(DataConfig(dataset=f"imagefolder:{colour_folder}"))
    single = evaluate_zero_shot(tiny_bundle, dataset, "test", ["simple"], num_workers=0)
    assert single.selection_encoded is None and single.best == "simple" and single.selected_on == "none"
    assert single.selection == {"on": "none", "chose": [], "choices": [], "default": "simple",
                                "reason": "one template set: nothing to choose"}
