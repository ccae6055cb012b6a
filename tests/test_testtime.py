"""TDA over a test stream: the reference's algorithm (ported here line by line), empty caches as zero-shot, caches
within capacity holding the lowest-entropy features, and a stream order that is its seed's."""

from __future__ import annotations

import math
import operator

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipadapt.classification.testtime import TdaConfig, choose_views, order_digest, stream_order, tda_stream
from clipadapt.errors import ConfigError


def stream(n=120, classes=6, dim=16, seed=0):
    """Normalised features clustered around class directions (some confident, some not) and a zero-shot head."""
    generator = torch.Generator().manual_seed(seed)
    head = F.normalize(torch.randn(classes, dim, generator=generator), dim=-1)
    labels = torch.randint(classes, (n,), generator=generator)
    noise = torch.rand(n, 1, generator=generator) * 3
    features = F.normalize(head[labels] + noise * torch.randn(n, dim, generator=generator) / math.sqrt(dim), dim=-1)
    return features, head


def get_clip_logits(image_features, scale, clip_weights):
    """kdiAAA/TDA utils.py:64-91 after the image encoder (its features normalised), with avg_entropy (lines 28-33)."""
    clip_logits = scale * image_features @ clip_weights
    if image_features.size(0) > 1:
        batch_entropy = -(clip_logits.softmax(1) * clip_logits.log_softmax(1)).sum(1)
        selected_idx = torch.argsort(batch_entropy, descending=False)[:int(batch_entropy.size()[0] * 0.1)]
        output = clip_logits[selected_idx]
        image_features = image_features[selected_idx].mean(0).unsqueeze(0)
        clip_logits = output.mean(0).unsqueeze(0)
        logits = output - output.logsumexp(dim=-1, keepdim=True)
        avg_logits = logits.logsumexp(dim=0) - np.log(logits.shape[0])
        avg_logits = torch.clamp(avg_logits, min=torch.finfo(avg_logits.dtype).min)
        loss = -(avg_logits * torch.exp(avg_logits)).sum(dim=-1)
        prob_map = output.softmax(1).mean(0).unsqueeze(0)
        pred = int(output.mean(0).unsqueeze(0).topk(1, 1, True, True)[1].t())
    else:
        loss = -(clip_logits.softmax(1) * clip_logits.log_softmax(1)).sum(1)
        prob_map = clip_logits.softmax(1)
        pred = int(clip_logits.topk(1, 1, True, True)[1].t()[0])
    return image_features, clip_logits, loss, prob_map, pred


def reference_tda(features, head, scale, order, pos=(3, 2.0, 5.0), neg=(2, 0.117, 1.0), entropy=(0.2, 0.5),
                  mask=(0.03, 1.0)):
    """kdiAAA/TDA's tda_runner.py (update_cache, compute_cache_logits, run_test_tda) and utils.get_clip_logits, on
    the CPU in float64, otherwise as written there. ``features``: (N, D), or (N, V, D) for V views per image."""
    def update_cache(cache, pred, features_loss, shot_capacity, include_prob_map=False):
        item = features_loss if not include_prob_map else features_loss[:2] + [features_loss[2]]
        if pred in cache:
            if len(cache[pred]) < shot_capacity:
                cache[pred].append(item)
            elif features_loss[1] < cache[pred][-1][1]:
                cache[pred][-1] = item
            cache[pred] = sorted(cache[pred], key=operator.itemgetter(1))
        else:
            cache[pred] = [item]

    def compute_cache_logits(image_features, cache, alpha, beta, clip_weights, neg_mask_thresholds=None):
        cache_keys, cache_values = [], []
        for class_index in sorted(cache.keys()):
            for item in cache[class_index]:
                cache_keys.append(item[0])
                cache_values.append(item[2] if neg_mask_thresholds else class_index)
        cache_keys = torch.cat(cache_keys, dim=0).permute(1, 0)
        if neg_mask_thresholds:
            cache_values = torch.cat(cache_values, dim=0)
            cache_values = ((cache_values > neg_mask_thresholds[0]) & (cache_values < neg_mask_thresholds[1])).double()
        else:
            cache_values = F.one_hot(torch.tensor(cache_values).to(torch.int64),
                                     num_classes=clip_weights.size(1)).double()
        affinity = image_features @ cache_keys
        return alpha * ((-1) * (beta - beta * affinity)).exp() @ cache_values

    clip_weights = head.double().T
    pos_cache, neg_cache, out = {}, {}, {}
    for i in order:
        image_features = features[int(i)].double()
        if image_features.dim() == 1:
            image_features = image_features[None]
        image_features, clip_logits, loss, prob_map, pred = get_clip_logits(image_features, scale, clip_weights)
        prop_entropy = float(loss / math.log2(clip_weights.size(1)))
        update_cache(pos_cache, pred, [image_features, loss], pos[0])
        if entropy[0] < prop_entropy < entropy[1]:
            update_cache(neg_cache, pred, [image_features, loss, prob_map], neg[0], True)
        final_logits = clip_logits.clone()
        if pos_cache:
            final_logits += compute_cache_logits(image_features, pos_cache, pos[1], pos[2], clip_weights)
        if neg_cache:
            final_logits -= compute_cache_logits(image_features, neg_cache, neg[1], neg[2], clip_weights, mask)
        out[int(i)] = final_logits[0]
    return torch.stack([out[i] for i in range(len(features))])


def test_tda_is_the_reference_algorithm():
    features, head = stream()
    order = stream_order(len(features), seed=1)
    logits, state = tda_stream(features, head, 10.0, TdaConfig(), order)
    expected = reference_tda(features, head, 10.0, order)
    assert torch.allclose(logits.double(), expected, atol=1e-4)
    assert len(state.negative) > 0 and len(state.positive) > 0  # both caches were used on this stream
    zero_shot = 10.0 * features @ head.T
    assert (logits.argmax(-1) != zero_shot.argmax(-1)).any()  # and they changed some answers


def test_tda_through_views_is_the_reference_s_multi_view_path():
    """ImageNet's shifts in the reference: each image through itself and 63 AugMix views, the 10% most confident
    averaged; their mean probabilities' entropy and values go to the caches."""
    generator = torch.Generator().manual_seed(3)
    features, head = stream(n=60)
    views = F.normalize(features[:, None] + 0.6 * torch.randn(60, 64, 16, generator=generator) / 4, dim=-1)
    order = stream_order(len(features), seed=1)
    chosen = [choose_views(views[i], head, 10.0, 0.1) for i in range(len(views))]
    mean_features = torch.stack([feature for feature, _ in chosen])
    probabilities = torch.stack([probability for _, probability in chosen])
    logits, state = tda_stream(mean_features, head, 10.0, TdaConfig(views=63), order, probabilities)
    expected = reference_tda(views, head, 10.0, order)
    assert torch.allclose(logits.double(), expected, atol=1e-4)
    assert len(state.negative) > 0 and len(state.positive) > 0
    single = reference_tda(mean_features, head, 10.0, order)  # the one-view path on the same features differs
    assert not torch.allclose(single, expected, atol=1e-3)


def test_tda_views_default_to_the_reference_s_choice_by_dataset():
    assert TdaConfig().views_for("imagenet-a") == TdaConfig().views_for("imagenet-sketch") == 63
    assert TdaConfig().views_for("imagenet") == TdaConfig().views_for("caltech101") == 0
    assert TdaConfig(views=8).views_for("caltech101") == 8 and TdaConfig(views=0).views_for("imagenet-r") == 0
    with pytest.raises(ConfigError, match="tda.views must be -1"):
        TdaConfig(views=-2).check()
    with pytest.raises(ConfigError, match="tda.selection must keep at least one of the 4 views"):
        TdaConfig(views=3, selection=0.1).check()
    with pytest.raises(ConfigError, match="tda.selection must keep at least one of the 64 views"):
        TdaConfig(selection=0.01).check()  # -1 may become the reference's 63 views: refused before any encoding


def test_view_features_are_seeded_per_image_and_average_the_chosen_views(tiny_bundle, colour_images):
    from clipadapt.classification.testtime import view_features
    from clipadapt.engine.zeroshot import build_zero_shot_head

    head = build_zero_shot_head(tiny_bundle, ["red", "green", "blue"], ["a photo of a {}."]).clone()
    images = colour_images[:3]

    def run(seed):
        return view_features(tiny_bundle, head, 10.0, lambda i: images[i], 3, 7, 0.25, seed)

    features, probabilities = run(0)
    assert features.shape == (3, head.shape[1]) and probabilities.shape == (3, 3)
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(3))
    norms = features.norm(dim=-1)
    assert torch.all(norms <= 1 + 1e-5) and torch.all(norms > 0.5)  # a mean of two unit vectors, not renormalised
    again, _ = run(0)
    assert torch.equal(features, again)  # seeded
    other, _ = run(1)
    assert not torch.allclose(features, other)  # another seed, other views


def test_tda_with_empty_caches_is_zero_shot():
    features, head = stream()
    order = stream_order(len(features), seed=1)
    logits, state = tda_stream(features, head, 10.0, TdaConfig(positive_capacity=0, negative_capacity=0), order)
    assert torch.allclose(logits, 10.0 * features @ head.T, atol=1e-5)
    assert len(state.positive) == len(state.negative) == 0


@pytest.mark.parametrize("capacity", [1, 3])
def test_caches_keep_at_most_their_capacity_of_the_lowest_entropy_features(capacity):
    features, head = stream(n=200)
    order = stream_order(len(features), seed=2)
    _, state = tda_stream(features, head, 10.0, TdaConfig(positive_capacity=capacity), order)
    logits = 10.0 * features.double() @ head.double().T
    entropies = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)
    predicted = logits.argmax(-1)
    for label, entries in state.positive.entries.items():
        assert 1 <= len(entries) <= capacity
        kept = [entropy for _, entropy, _ in entries]
        assert kept == sorted(kept)
        seen = sorted(entropies[predicted == label].tolist())  # every image predicted as this class went by
        assert kept == pytest.approx(seen[:capacity])
    assert all(len(entries) <= 2 for entries in state.negative.entries.values())


def test_a_stream_order_is_its_seed_and_another_order_is_recorded_as_such():
    assert np.array_equal(stream_order(50, 3), stream_order(50, 3))
    assert order_digest(stream_order(50, 3)) == order_digest(stream_order(50, 3))
    assert order_digest(stream_order(50, 3)) != order_digest(stream_order(50, 4))
    assert sorted(stream_order(50, 3)) == list(range(50))
    features, head = stream()
    first, _ = tda_stream(features, head, 10.0, TdaConfig(), stream_order(len(features), 1))
    other, _ = tda_stream(features, head, 10.0, TdaConfig(), stream_order(len(features), 2))
    assert not torch.allclose(first, other)  # an adaptive method's answers depend on the order it saw


def test_bad_settings_are_one_line_errors():
    features, head = stream(n=4)
    with pytest.raises(ConfigError, match=r"tda.positive_capacity must be 0 or more, got -1"):
        tda_stream(features, head, 10.0, TdaConfig(positive_capacity=-1), np.arange(4))
    with pytest.raises(ConfigError, match=r"tda.entropy_lower \(0.6\) must not exceed tda.entropy_upper \(0.5\)"):
        tda_stream(features, head, 10.0, TdaConfig(entropy_lower=0.6), np.arange(4))


# --- TPT ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def colour_images(colour_folder):
    from PIL import Image

    paths = [p for folder in sorted(colour_folder.iterdir()) for p in sorted(folder.iterdir())[:2]]
    return [Image.open(p).convert("RGB") for p in paths]


def tpt_logits(bundle, images, order, **settings):
    from clipadapt.classification.tpt import TptConfig, tpt_stream

    config = TptConfig(views=7, selection=0.25, **settings)  # 8 views, the 2 most confident: small and fast
    logits, tuned = tpt_stream(bundle, ["red", "green", "blue"], lambda i: images[i], len(images), order, config)
    phrase = bundle.tokenizer(["a photo of a"])["attention_mask"][0].sum().item() - 2  # without start and end
    assert tuned == phrase * bundle.text_tower.config.hidden_size  # one context vector per token of the phrase
    return logits


def test_tpt_with_zero_steps_is_zero_shot_with_its_initial_prompt(tiny_bundle, colour_images):
    from clipadapt.engine.zeroshot import build_zero_shot_head, zero_shot_logits

    logits = tpt_logits(tiny_bundle, colour_images, np.arange(len(colour_images)), steps=0)
    head = build_zero_shot_head(tiny_bundle, ["red", "green", "blue"], ["a photo of a {}."])
    with torch.no_grad():
        pixels = torch.stack([tiny_bundle.preprocess(image) for image in colour_images])
        expected = zero_shot_logits(tiny_bundle, F.normalize(tiny_bundle.encode_image(pixels).float(), dim=-1), head)
    assert torch.allclose(logits, expected, atol=1e-4)


def test_tpt_resets_per_image_and_tunes(tiny_bundle, colour_images):
    count = len(colour_images)
    forward = tpt_logits(tiny_bundle, colour_images, np.arange(count))
    backward = tpt_logits(tiny_bundle, colour_images, np.arange(count)[::-1])
    assert torch.equal(forward, backward)  # an image's answer does not depend on the images before it
    untuned = tpt_logits(tiny_bundle, colour_images, np.arange(count), steps=0)
    assert not torch.allclose(forward, untuned, atol=1e-4)  # one step moved the prompt
    again = tpt_logits(tiny_bundle, colour_images, np.arange(count), seed=1)
    assert not torch.equal(forward, again)  # other views, other answers: the seed is a setting


def test_augmented_views_are_seeded_and_start_with_the_image(tiny_bundle, colour_images):
    from clipadapt.data.augmix import augmented_views

    image = colour_images[0]
    for augmix in (False, True):
        views = augmented_views(image, tiny_bundle.preprocess, 5, augmix, np.random.default_rng([0, 3]))
        assert views.shape == (6, 3, *tiny_bundle.preprocess.config.crop)
        assert torch.equal(views[0], tiny_bundle.preprocess(image))
        assert torch.equal(views, augmented_views(image, tiny_bundle.preprocess, 5, augmix,
                                                  np.random.default_rng([0, 3])))
        assert not torch.equal(views[1], views[2])


def test_tpt_refuses_a_model_whose_text_tower_it_cannot_prompt_and_bad_settings(tiny_bundle):
    import copy

    from clipadapt.classification.tpt import Tpt, TptConfig

    other = copy.copy(tiny_bundle)
    other.info = {**tiny_bundle.info, "model_type": "siglip"}
    with pytest.raises(ConfigError, match=r"^tpt needs a transformers CLIP text tower; '.*' is a siglip model$"):
        Tpt(other, ["red", "green"], TptConfig())
    for settings, message in [({"steps": -1}, "tpt.steps must be 0 or more, got -1"),
                              ({"views": 3, "selection": 0.1}, "tpt.selection must keep at least one of the 4 views"),
                              ({"init": " "}, "tpt.init must be a phrase")]:
        with pytest.raises(ConfigError, match=message):
            Tpt(tiny_bundle, ["red", "green"], TptConfig(**settings))


def test_tpt_augmix_defaults_to_the_reference_s_choice_by_dataset():
    """The reference: ``augmix=len(set_id) > 1``, off on ImageNet (I) and its variants (A, V, R, K)."""
    from clipadapt.classification.tpt import TptConfig

    for name in ("imagenet", "imagenet-a", "imagenet-v2", "imagenet-r", "imagenet-sketch"):
        assert TptConfig().augmix_for(name) is False
    assert TptConfig().augmix_for("caltech101") is TptConfig().augmix_for("world:shapes") is True
    assert TptConfig(augmix=True).augmix_for("imagenet") is True
    assert TptConfig(augmix=False).augmix_for("dtd") is False
