from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil

from clipadapt.data.images import ImageLoadError, load_image
from clipadapt.data.transforms import ClipPreprocess, PreprocessConfig
from tests.helpers import decompression_bomb_png, jpeg_bytes, random_photo


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (224, 224), (100, 60), (1023, 17), (301, 299)])
def test_preprocess_equals_transformers_clip_image_processor(size):
    image = load_image(jpeg_bytes(random_photo(*size, seed=size[0])))
    processor = CLIPImageProcessorPil()  # OpenAI CLIP defaults: 224 short side, 224 crop, bicubic
    expected = processor(images=image, return_tensors="pt")["pixel_values"][0]
    ours = ClipPreprocess(PreprocessConfig.from_image_processor(processor))(image)
    assert ours.shape == expected.shape == (3, 224, 224)
    assert torch.allclose(ours, expected, atol=1e-5), (ours - expected).abs().max()


def test_preprocess_reads_non_default_processor_settings():
    processor = CLIPImageProcessorPil(size={"shortest_edge": 48}, crop_size={"height": 40, "width": 32},
                                      image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.5, 1.0])
    config = PreprocessConfig.from_image_processor(processor)
    assert config.resize == 48 and config.crop == (40, 32) and config.std == (0.25, 0.5, 1.0)
    image = random_photo(90, 70, seed=3)
    expected = processor(images=image, return_tensors="pt")["pixel_values"][0]
    assert torch.allclose(ClipPreprocess(config)(image), expected, atol=1e-5)


def test_train_augment_is_seeded_and_sized():
    preprocess = ClipPreprocess(PreprocessConfig(resize=32, crop=(32, 32)))
    image = random_photo(80, 60, seed=1)
    first = preprocess.train_augment()
    first.rng = random.Random(7)
    second = preprocess.train_augment()
    second.rng = random.Random(7)
    a, b = first(image), second(image)
    assert a.shape == (3, 32, 32) and torch.equal(a, b)
    assert not torch.equal(a, preprocess(image))  # it does augment


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_unusual_modes_are_converted_not_rejected():
    gray = Image.fromarray(np.full((10, 12), 100, np.uint8), mode="L")
    rgba = Image.fromarray(np.dstack([np.full((10, 12, 3), 200, np.uint8), np.zeros((10, 12), np.uint8)]),
                           mode="RGBA")
    palette = gray.convert("P")
    sixteen = Image.fromarray(np.full((10, 12), 65535, np.uint16))  # 16-bit grayscale
    cmyk = Image.new("CMYK", (12, 10), (0, 255, 255, 0))
    for image, fmt in [(gray, "PNG"), (rgba, "PNG"), (palette, "GIF"), (sixteen, "PNG"), (cmyk, "JPEG")]:
        loaded = load_image(_encode(image, fmt))
        assert loaded.mode == "RGB" and loaded.size == (12, 10)
    # fully transparent pixels are composited on white, 16-bit white stays white
    assert load_image(_encode(rgba, "PNG")).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(_encode(sixteen, "PNG")).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(_encode(gray, "PNG")).getpixel((0, 0)) == (100, 100, 100)


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b"this is not an image", "not an image"),
    (jpeg_bytes(random_photo(64, 48))[:400], "truncated"),
    (decompression_bomb_png(), "decompression bomb"),
])
def test_unreadable_images_raise_with_reason(data, reason):
    with pytest.raises(ImageLoadError, match=reason):
        load_image(data)


def test_pixel_limit_is_configurable():
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        load_image(jpeg_bytes(random_photo(64, 48)), max_pixels=1000)


def exif_rotated_jpeg(path, orientation: int = 6) -> np.ndarray:
    """A 60x40 photo stored sideways with an EXIF orientation tag, as phones write them; returns the upright pixels."""
    upright = np.zeros((60, 40, 3), dtype=np.uint8)
    upright[:10] = (255, 0, 0)  # a red band at the top of the upright picture
    upright[10:] = (0, 0, 255)
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # orientation 6 = rotate 270 to view
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, format="JPEG", quality=95, exif=exif.tobytes())
    return upright


def test_exif_orientation_is_applied_like_transformers(tmp_path):
    from transformers.image_utils import load_image as transformers_load_image

    upright = exif_rotated_jpeg(tmp_path / "phone.jpg")
    ours = np.asarray(load_image(tmp_path / "phone.jpg"))
    assert ours.shape == upright.shape  # 60 high, 40 wide, although stored 40 high and 60 wide
    assert ours[:8].mean(axis=(0, 1))[0] > 200 and ours[:8].mean(axis=(0, 1))[2] < 60  # red on top
    theirs = np.asarray(transformers_load_image(str(tmp_path / "phone.jpg")))
    assert np.array_equal(ours, theirs)
    from_bytes = np.asarray(load_image((tmp_path / "phone.jpg").read_bytes()))  # hub cells hold bytes
    assert np.array_equal(from_bytes, ours)


def test_image_folders_see_phone_photos_upright(tmp_path):
    from clipadapt.data import DataConfig, load_dataset

    for name in ("a", "b"):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for i in range(3):
            exif_rotated_jpeg(tmp_path / "photos" / name / f"{i}.jpg")
    dataset = load_dataset(DataConfig(dataset=f"imagefolder:{tmp_path / 'photos'}"))
    split = dataset.split("test")
    image = split.load(0)
    assert image.size == (40, 60)  # (width, height) upright
