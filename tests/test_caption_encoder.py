"""The captioning encoder: patch tokens and pooled embeddings from one pass of the frozen tower, cached."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from clipadapt.captioning.data import CaptionDataConfig, load_caption_dataset
from clipadapt.captioning.encoder import EncoderCache, encode_cached, image_tokens, patch_geometry
from clipadapt.errors import ConfigError


@pytest.fixture
def caption_split(tmp_path):
    root = tmp_path / "coco"
    (root / "images").mkdir(parents=True)
    images, annotations = [], []
    for i in range(5):
        Image.new("RGB", (20, 12), (40 * i, 200 - 30 * i, 90)).save(root / "images" / f"{i}.png")
        images.append({"id": i, "file_name": f"images/{i}.png"})
        annotations.append({"id": i, "image_id": i, "caption": f"picture {i}"})
    (root / "images" / "3.png").write_bytes(b"not a png")  # unreadable: skipped and listed
    (root / "captions.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    dataset = load_caption_dataset(CaptionDataConfig(dataset=f"coco:{root / 'captions.json'}", val_fraction=0,
                                                     test_fraction=0))
    return dataset.split("train")


def test_tokens_and_pooled_come_from_one_pass_and_match_the_bundle(tiny_bundle):
    geometry = patch_geometry(tiny_bundle)
    config = tiny_bundle.vision_tower.config
    assert geometry.grid == (32 // config.patch_size, 32 // config.patch_size)
    assert geometry.prefix_tokens == 1 and geometry.width == config.hidden_size
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tokens, pooled = image_tokens(tiny_bundle, pixels)
        expected = tiny_bundle.encode_image(pixels)
        hidden = tiny_bundle.vision_tower(pixel_values=pixels).last_hidden_state
    assert tokens.shape == (2, geometry.num_tokens, geometry.width)
    torch.testing.assert_close(pooled, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(tokens, tiny_bundle.vision_tower.post_layernorm(hidden))


def test_encoding_is_cached_and_skips_unreadable_images(tiny_bundle, caption_split, tmp_path):
    cache = EncoderCache(tmp_path / "cache")
    first = encode_cached(tiny_bundle, caption_split.image_split(), cache, num_workers=0)
    assert sorted(caption_split.images[int(p)].image_id for p in first.positions) == ["0", "1", "2", "4"]
    assert len(first.skipped) == 1 and first.skipped[0].item.endswith("3.png")
    again = encode_cached(tiny_bundle, caption_split.image_split(), cache, num_workers=0)
    assert again.from_cache and not first.from_cache
    assert torch.equal(again.tokens, first.tokens) and torch.equal(again.pooled, first.pooled)
    assert again.geometry == first.geometry and [s.item for s in again.skipped] == [s.item for s in first.skipped]
    with torch.no_grad():  # the cached tokens are the tower's own, image by image
        pixels = tiny_bundle.preprocess(caption_split.load(int(first.positions[0])))[None]
        tokens, _ = image_tokens(tiny_bundle, pixels)
    torch.testing.assert_close(first.tokens[:1], tokens, rtol=0, atol=1e-5)


def test_a_tower_without_patch_tokens_is_refused(tiny_bundle):
    import dataclasses

    other = dataclasses.replace(tiny_bundle, backend="open_clip")
    with pytest.raises(ConfigError, match="has no patch tokens to caption from"):
        patch_geometry(other)
