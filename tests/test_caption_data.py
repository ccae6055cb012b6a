"""Caption datasets: COCO files and folders, Karpathy split files, world:captions; refusals counted, never read."""

from __future__ import annotations

import json
import os

import pytest
import torch
from PIL import Image

from clipadapt.captioning.data import CaptionDataConfig, load_caption_dataset
from clipadapt.errors import ConfigError, DataError, UnknownNameError


def _image(path, colour=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)


@pytest.fixture
def coco_file(tmp_path):
    """Six good images with two captions each, plus every kind of bad entry."""
    root = tmp_path / "coco"
    images = []
    for i in range(6):
        _image(root / "images" / f"{i}.png")
        images.append({"id": i, "file_name": f"images/{i}.png"})
    outside = tmp_path / "secret.png"
    _image(outside)
    (root / "images" / "link.png").symlink_to(outside)
    images += [{"id": 10, "file_name": "../secret.png"}, {"id": 11, "file_name": str(outside)},
               {"id": 12, "file_name": "images/link.png"}, {"id": 13, "file_name": "images/missing.png"},
               {"id": 14, "file_name": "images/0.png"}]  # 14: only an empty caption
    annotations = [{"id": 100 + 2 * i + j, "image_id": i, "caption": f"caption {j} of  image {i}"}
                   for i in range(6) for j in range(2)]
    annotations += [{"id": 200, "image_id": 99, "caption": "no such image"},
                    {"id": 201, "image_id": 14, "caption": "   "},
                    *({"id": 202 + k, "image_id": k, "caption": "x"} for k in (10, 11, 12, 13))]
    path = root / "captions.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path


def test_coco_file_refuses_bad_entries_without_reading_them(coco_file):
    dataset = load_caption_dataset(CaptionDataConfig(dataset=f"coco:{coco_file}", val_fraction=0.2,
                                                     test_fraction=0.2))
    assert dataset.refused_counts() == {
        "unknown image id": 1, "empty caption": 1, "no captions": 1, "image file missing": 1,
        "path leaves the image folder": 2, "path leaves the image folder (symlink)": 1}
    assert {len(split) for split in dataset.splits.values()} == {4, 1}  # 6 images: 4 train, 1 val, 1 test
    assert sum(len(split) for split in dataset.splits.values()) == 6
    ids = [image.image_id for split in dataset.splits.values() for image in split.images]
    assert sorted(ids) == [str(i) for i in range(6)]  # no image in two splits
    first = dataset.split("train").images[0]
    assert first.captions == [f"caption 0 of image {first.image_id}", f"caption 1 of image {first.image_id}"]
    assert dataset.split("train").load(0).size == (8, 8)
    summary = dataset.summary()
    assert summary["captions"]["train"] == 8 and summary["refused"]["unknown image id"] == 1


def test_carving_is_seeded(coco_file):
    def test_ids(seed):
        config = CaptionDataConfig(dataset=f"coco:{coco_file}", seed=seed, test_fraction=0.3)
        return [image.image_id for image in load_caption_dataset(config).split("test").images]

    assert test_ids(0) == test_ids(0)
    assert any(test_ids(0) != test_ids(seed) for seed in range(1, 6))


def test_coco_folder_keeps_its_splits_and_image_root_moves_the_images(tmp_path):
    root = tmp_path / "folder"
    pictures = tmp_path / "pictures"
    for split, count in (("train", 3), ("test", 2)):
        images = [{"id": i, "file_name": f"{split}/{i}.png"} for i in range(count)]
        for i in range(count):
            _image(pictures / split / f"{i}.png")
        annotations = [{"id": i, "image_id": i, "caption": f"{split} {i}"} for i in range(count)]
        root.mkdir(exist_ok=True)
        (root / f"captions_{split}.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    config = CaptionDataConfig(dataset=f"coco:{root}", image_root=str(pictures), val_fraction=0.34)
    dataset = load_caption_dataset(config)
    assert {name: len(split) for name, split in dataset.splits.items()} == {"train": 2, "val": 1, "test": 2}
    assert dataset.split("test").references() == {"0": ["test 0"], "1": ["test 1"]}
    with pytest.raises(DataError, match="image file missing"):  # without the root: nothing usable, and why
        load_caption_dataset(CaptionDataConfig(dataset=f"coco:{root}"))


def test_karpathy_split_file(tmp_path):
    root = tmp_path / "flickr"
    entries = []
    for i, split in enumerate(["train", "restval", "val", "test", "test", "bogus"]):
        _image(root / "Images" / f"{i}.jpg")
        entries.append({"filepath": "Images", "filename": f"{i}.jpg", "split": split, "imgid": i,
                        "sentences": [{"raw": f"A dog number {i}."}, {"raw": ""}]})
    path = root / "dataset_flickr8k.json"
    path.write_text(json.dumps({"dataset": "flickr8k", "images": entries}))
    dataset = load_caption_dataset(CaptionDataConfig(dataset=f"karpathy:{path}"))
    assert {name: len(split) for name, split in dataset.splits.items()} == {"train": 2, "val": 1, "test": 2}
    assert dataset.split("val").images[0].captions == ["A dog number 2."]
    assert dataset.refused_counts() == {"empty caption": 5, "unknown split 'bogus'": 1}


def test_world_captions_is_a_registered_dataset(tmp_path, monkeypatch):
    from clipadapt.world import caption_data

    small = {"train": (1, 8), "val": (2, 3), "test": (3, 3)}
    monkeypatch.setattr(caption_data, "CAPTION_SPLITS", small)
    monkeypatch.setattr(caption_data, "world_captions_dir",
                        lambda: caption_data.write_caption_dataset(tmp_path / "world", small))
    dataset = load_caption_dataset(CaptionDataConfig(dataset="world:captions"))
    assert dataset.name == "world:captions" and not dataset.refused
    assert {name: len(split) for name, split in dataset.splits.items()} == {"train": 8, "val": 3, "test": 3}
    assert all(len(image.captions) == 5 for image in dataset.split("train").images)


@pytest.mark.parametrize("spec, error, message", [
    ("cocoo:x.json", UnknownNameError, "unknown caption dataset 'cocoo:x.json'; valid choices: coco:FILE.json"),
    ("coco:", ConfigError, "caption dataset 'coco:' needs an argument: coco:FILE.json|FOLDER"),
    ("coco:/no/such.json", DataError, "caption file '/no/such.json' does not exist"),
])
def test_bad_dataset_specs(spec, error, message):
    with pytest.raises(error) as raised:
        load_caption_dataset(CaptionDataConfig(dataset=spec))
    assert message in str(raised.value)


def test_unreadable_and_wrong_shaped_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="is not readable JSON"):
        load_caption_dataset(CaptionDataConfig(dataset=f"coco:{bad}"))
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="has no 'annotations' list"):
        load_caption_dataset(CaptionDataConfig(dataset=f"coco:{bad}"))
    with pytest.raises(ConfigError, match="must leave images for training"):
        CaptionDataConfig(val_fraction=0.5, test_fraction=0.5)


def test_refused_paths_are_never_opened(coco_file, monkeypatch):
    opened = []
    real_open = Image.open

    def spy(fp, *args, **kwargs):
        opened.append(str(fp))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", spy)
    dataset = load_caption_dataset(CaptionDataConfig(dataset=f"coco:{coco_file}"))
    for split in dataset.splits.values():
        for index in range(len(split)):
            split.load(index)
    assert len(opened) == 6  # the six good images, each once
    assert not any("secret" in path or "missing" in path or "link" in path for path in opened)


def test_caption_split_encodes_through_the_classification_feature_cache(coco_file, tiny_clip_dir, tmp_path):
    from clipadapt.engine.features import FeatureCache, encode_split
    from clipadapt.models import load_model

    bundle = load_model(str(tiny_clip_dir))
    dataset = load_caption_dataset(CaptionDataConfig(dataset=f"coco:{coco_file}"))
    split = dataset.split("train")
    cache = FeatureCache(tmp_path / "cache")
    first = encode_split(bundle, split.image_split(), num_workers=0, cache=cache)
    again = encode_split(bundle, split.image_split(), num_workers=0, cache=cache)
    assert first.features.shape == (len(split), bundle.embed_dim) and again.from_cache
    assert first.positions.tolist() == list(range(len(split)))
    assert torch.equal(first.features, again.features)
    fingerprint = split.fingerprint()
    _image(split.images[0].path, colour=(0, 0, 255))  # a changed image is a new cache key
    os.utime(split.images[0].path, ns=(1, 10**18))
    assert split.fingerprint() != fingerprint
