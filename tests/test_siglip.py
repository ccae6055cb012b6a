"""SigLIP checkpoints go through the same bundle: square resize without crop, learned logit bias."""

from __future__ import annotations

import pytest
import torch
from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel

from clipadapt.data.transforms import ClipPreprocess, PreprocessConfig
from clipadapt.engine.zeroshot import build_zero_shot_head, zero_shot_logits
from clipadapt.models import load_model
from clipadapt.models.tokenizer_utils import build_char_tokenizer
from tests.helpers import random_photo


@pytest.fixture(scope="module")
def tiny_siglip_dir(tmp_path_factory):
    tokenizer = build_char_tokenizer()
    config = SiglipConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=len(tokenizer), max_position_embeddings=64,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("siglip") / "tiny-siglip"
    SiglipModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    SiglipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def test_siglip_preprocessing_squashes_like_transformers():
    processor = SiglipImageProcessorPil(size={"height": 48, "width": 40})
    config = PreprocessConfig.from_image_processor(processor)
    assert config.resize_mode == "squash" and config.crop == (48, 40)
    image = random_photo(120, 70, seed=2)
    expected = processor(images=image, return_tensors="pt")["pixel_values"][0]
    assert torch.allclose(ClipPreprocess(config)(image), expected, atol=1e-5)


def test_siglip_bundle_zero_shot(tiny_siglip_dir):
    bundle = load_model(str(tiny_siglip_dir))
    assert bundle.info["model_type"] == "siglip" and bundle.logit_bias is not None
    tokens = bundle.tokenize(["a cat", "a much longer prompt about a dog"])
    assert tokens["input_ids"].shape == (2, 64) and "attention_mask" not in tokens  # max-length padding
    head = build_zero_shot_head(bundle, ["cat", "dog", "owl"], ["a photo of a {}."])
    pixels = torch.stack([bundle.preprocess(random_photo(50, 40, seed=s)) for s in range(2)])
    with torch.inference_mode():
        logits = zero_shot_logits(bundle, bundle.encode_image(pixels), head)
        reference = bundle.model(pixel_values=pixels, **bundle.tokenize(
            [f"a photo of a {c}." for c in ["cat", "dog", "owl"]])).logits_per_image
    assert torch.allclose(logits, reference, atol=1e-4)
