from __future__ import annotations

import json
import sys

import pytest
import torch

from clipadapt.errors import ClipAdaptError, UnknownNameError
from clipadapt.models import HUB_ALIASES, MODELS, load_model


def test_load_model_from_directory_gives_a_working_bundle(tiny_bundle, tiny_clip_dir):
    bundle = tiny_bundle
    assert bundle.backend == "transformers" and bundle.fingerprint.startswith("local:")
    assert bundle.preprocess.config.crop == (32, 32)
    text = bundle.encode_text(["a photo of a 1.", "a photo of a 2."])
    image = bundle.encode_image(torch.randn(3, 3, 32, 32))
    assert text.shape == (2, 32) and image.shape == (3, 32)
    assert torch.allclose(text.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(image.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert bundle.logit_scale.item() == pytest.approx(bundle.model.logit_scale.exp().item())
    assert bundle.vision_tower is bundle.model.vision_model and bundle.text_tower is bundle.model.text_model
    # same weights on disk -> same fingerprint, so the feature cache is shared
    assert load_model(str(tiny_clip_dir)).fingerprint == bundle.fingerprint


def test_aliases_resolve_to_openai_checkpoints():
    assert HUB_ALIASES["ViT-B/32"] == "openai/clip-vit-base-patch32"
    assert HUB_ALIASES["ViT-L/14@336"] == "openai/clip-vit-large-patch14-336"
    for alias in ("ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336"):
        assert alias in MODELS


def test_model_spec_errors():
    with pytest.raises(UnknownNameError, match="unknown model 'ViTQ7'; valid choices: .*ViT-B/32"):
        load_model("ViTQ7")
    with pytest.raises(ClipAdaptError, match="could not load 'ViT-Q/7'.*Named models: .*ViT-B/32"):
        load_model("ViT-Q/7")  # looks like a hub id; the hub is off, and the names are listed
    with pytest.raises(UnknownNameError, match="unknown model scheme 'nope:'"):
        load_model("nope:thing")
    with pytest.raises(ClipAdaptError, match="model path './no/such/dir' does not exist"):
        load_model("./no/such/dir")


def test_hub_model_without_network_says_how_to_work_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ClipAdaptError, match=r"could not load 'someorg/clip-model' from the Hugging Face hub.*"
                                             r"--model ./models/clip-model"):
        load_model("someorg/clip-model")


def test_directory_that_is_not_a_clip_model(tmp_path):
    with pytest.raises(ClipAdaptError, match="not a transformers model"):
        load_model(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ClipAdaptError, match="'gpt2' model, not a CLIP-style model"):
        load_model(str(tmp_path))


def test_open_clip_without_the_extra_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # import fails as if not installed
    with pytest.raises(ClipAdaptError, match=r"pip install .*clipadapt\[openclip\]"):
        load_model("open_clip:ViT-B-32/laion2b_s34b_b79k")
