"""Hub caption datasets (Flickr8k, Flickr30k, COCO Karpathy, any hf-captions:), read from local copies that have
the real datasets' column names, split layouts and storage formats."""

from __future__ import annotations

import datasets as hfds
import numpy as np
import pytest
from PIL import Image

from clipadapt.captioning.data import CaptionDataConfig, load_caption_dataset
from clipadapt.errors import DataError


def _picture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8))


def _save(parts: dict, root, fmt: str):
    if fmt == "save_to_disk":
        hfds.DatasetDict(parts).save_to_disk(str(root))
    else:  # the hub's own layout: data/<split>-00000-of-00001.parquet
        (root / "data").mkdir(parents=True)
        for split, part in parts.items():
            part.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    return root


@pytest.mark.parametrize("fmt", ["parquet", "save_to_disk"])
def test_flickr8k_keeps_its_hub_splits_and_five_caption_columns(tmp_path, fmt):
    features = hfds.Features({"image": hfds.Image(), **{f"caption_{k}": hfds.Value("string") for k in range(5)}})
    sizes = {"train": 6, "validation": 3, "test": 4}
    parts = {}
    for split, n in sizes.items():
        rows = {"image": [_picture(100 * len(split) + i) for i in range(n)]}
        for k in range(5):
            rows[f"caption_{k}"] = [f"{split} image {i} caption {k}" if (i, k) != (0, 4) else "  " for i in range(n)]
        parts[split] = hfds.Dataset.from_dict(rows, features=features)
    root = _save(parts, tmp_path / "flickr8k", fmt)
    dataset = load_caption_dataset(CaptionDataConfig(dataset="flickr8k", root=str(root)))
    assert {name: len(split) for name, split in dataset.splits.items()} == {"train": 6, "val": 3, "test": 4}
    first = dataset.split("train").images[0]
    assert first.captions == [f"train image 0 caption {k}" for k in range(4)]  # the blank fifth is refused
    assert dataset.split("val").images[1].captions[0] == "validation image 1 caption 0"
    assert dataset.refused_counts() == {"empty caption": 3}
    assert dataset.info["repo"] == "jxie/flickr8k" and dataset.info["image_root"] is None
    loaded = dataset.split("test").load(2)
    assert loaded.mode == "RGB" and np.array_equal(np.asarray(loaded), np.asarray(_picture(400 + 2)))
    assert dataset.split("test").describe(2) == "jxie/flickr8k/test[2]"


def test_flickr30k_takes_karpathys_split_from_the_split_column(tmp_path):
    splits = ["train", "val", "test", "train", "train", "test", "bogus"]
    table = hfds.Dataset.from_dict({
        "image": [_picture(i) for i in range(len(splits))],
        "caption": [[f"photo {i} says {k}" for k in range(5)] for i in range(len(splits))],
        "sentids": [[str(5 * i + k) for k in range(5)] for i in range(len(splits))],
        "split": splits,
        "img_id": [str(1000 + i) for i in range(len(splits))],
        "filename": [f"{1000 + i}.jpg" for i in range(len(splits))],
    }, features=hfds.Features({"image": hfds.Image(), "caption": hfds.Sequence(hfds.Value("string")),
                               "sentids": hfds.Sequence(hfds.Value("string")), "split": hfds.Value("string"),
                               "img_id": hfds.Value("string"), "filename": hfds.Value("string")}))
    root = _save({"test": table}, tmp_path / "flickr30k", "parquet")  # the hub has one split holding all
    dataset = load_caption_dataset(CaptionDataConfig(dataset="flickr30k", root=str(root)))
    assert [image.image_id for image in dataset.split("train").images] == ["1000", "1003", "1004"]
    assert [image.image_id for image in dataset.split("test").images] == ["1002", "1005"]
    assert dataset.split("val").images[0].captions == [f"photo 1 says {k}" for k in range(5)]
    assert dataset.refused_counts() == {"unknown split 'bogus'": 1}
    assert np.array_equal(np.asarray(dataset.split("test").load(1)), np.asarray(_picture(5)))


def test_coco_karpathy_reads_images_from_the_image_root_and_refuses_paths_outside(tmp_path):
    coco = tmp_path / "coco"
    for folder, name in (("train2014", "COCO_train2014_000000000001.jpg"),
                         ("val2014", "COCO_val2014_000000000002.jpg"), ("val2014", "COCO_val2014_000000000003.jpg")):
        (coco / folder).mkdir(parents=True, exist_ok=True)
        _picture(len(name)).save(coco / folder / name)
    features = hfds.Features({"filepath": hfds.Value("string"), "sentences": hfds.Sequence(hfds.Value("string")),
                              "cocoid": hfds.Value("int32"), "filename": hfds.Value("string"),
                              "url": hfds.Value("string")})

    def part(rows):
        return hfds.Dataset.from_dict({
            "filepath": [r[0] for r in rows], "filename": [r[1] for r in rows], "cocoid": [r[2] for r in rows],
            "sentences": [[f"a scene {r[2]}", f"another view of {r[2]}"] for r in rows],
            "url": [f"http://images.cocodataset.org/{r[0]}/{r[1]}" for r in rows]}, features=features)

    parts = {"train": part([("train2014", "COCO_train2014_000000000001.jpg", 1)]),
             "restval": part([("val2014", "COCO_val2014_000000000002.jpg", 2), ("..", "secret.jpg", 9)]),
             "validation": part([("val2014", "COCO_val2014_000000000003.jpg", 3)]),
             "test": part([("val2014", "COCO_val2014_000000000404.jpg", 4)])}
    root = _save(parts, tmp_path / "karpathy", "parquet")
    with pytest.raises(DataError, match="holds no images, only their paths .*--image-root"):
        load_caption_dataset(CaptionDataConfig(dataset="coco-karpathy", root=str(root)))
    dataset = load_caption_dataset(CaptionDataConfig(dataset="coco-karpathy", root=str(root),
                                                     image_root=str(coco), test_fraction=0.5))
    assert [image.image_id for image in dataset.split("val").images] == ["3"]
    # restval counts as train; the test image is missing, so test is carved from train
    assert sorted(image.image_id for split in ("train", "test") for image in dataset.split(split).images) == ["1", "2"]
    assert dataset.refused_counts() == {"path leaves the image folder": 1, "image file missing": 1}
    assert dataset.split("val").describe(0).endswith("val2014/COCO_val2014_000000000003.jpg")


def test_hf_captions_detects_columns_and_merges_one_caption_per_row(tmp_path):
    table = hfds.Dataset.from_dict({
        "pixels": [_picture(i // 2) for i in range(8)],
        "image_id": [i // 2 for i in range(8)],
        "text": [f"picture {i // 2} take {i % 2}" for i in range(8)]},
        features=hfds.Features({"pixels": hfds.Image(), "image_id": hfds.Value("int64"), "text": hfds.Value("string")}))
    root = _save({"train": table.select(range(6)), "test": table.select(range(6, 8))}, tmp_path / "own",
                 "save_to_disk")
    dataset = load_caption_dataset(CaptionDataConfig(dataset="hf-captions:me/pictures", root=str(root),
                                                     val_fraction=0.34))
    assert dataset.info["image_column"] == "pixels" and dataset.info["caption_columns"] == ["text"]
    every = {image.image_id: image.captions for split in dataset.splits.values() for image in split.images}
    assert every == {str(i): [f"picture {i} take 0", f"picture {i} take 1"] for i in range(4)}
    assert len(dataset.split("test")) == 1 and len(dataset.split("val")) == 1


def test_hf_captions_without_caption_column_names_the_columns(tmp_path):
    table = hfds.Dataset.from_dict({"image": [_picture(0)], "label": [1]},
                                   features=hfds.Features({"image": hfds.Image(), "label": hfds.Value("int64")}))
    root = _save({"train": table}, tmp_path / "own", "save_to_disk")
    with pytest.raises(DataError, match=r"cannot tell which column of 'me/labels' holds the captions .*columns: "
                                        r"image, label"):
        load_caption_dataset(CaptionDataConfig(dataset="hf-captions:me/labels", root=str(root)))


def test_hub_caption_dataset_without_network_explains_offline_use(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(hfds.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match=r"could not load hub dataset 'jxie/flickr8k'.*save_to_disk.*--data-root"):
        load_caption_dataset(CaptionDataConfig(dataset="flickr8k"))


def test_a_caption_run_on_a_hub_copy_trains_scores_and_draws_from_table_images(tiny_clip_dir, tiny_lm_dir, tmp_path):
    """Images that live in a hub table (no files) go through encoding, scoring, the best/worst figure and the
    attention figures; predictions name them by table row."""
    import json

    from typer.testing import CliRunner

    from clipadapt.cli import app
    from clipadapt.world.caption_data import write_caption_dataset

    world = write_caption_dataset(tmp_path / "world", {"train": (1, 8), "val": (2, 3), "test": (3, 3)}, resolution=32)
    features = hfds.Features({"image": hfds.Image(), **{f"caption_{k}": hfds.Value("string") for k in range(5)}})
    parts = {}
    for split, hub_name in (("train", "train"), ("val", "validation"), ("test", "test")):
        coco = json.loads((world / f"captions_{split}.json").read_text())
        texts = {}
        for annotation in coco["annotations"]:
            texts.setdefault(annotation["image_id"], []).append(annotation["caption"])
        rows = {"image": [Image.open(world / record["file_name"]).convert("RGB") for record in coco["images"]]}
        for k in range(5):
            rows[f"caption_{k}"] = [texts[record["id"]][k] for record in coco["images"]]
        parts[hub_name] = hfds.Dataset.from_dict(rows, features=features)
    root = _save(parts, tmp_path / "flickr8k", "parquet")
    run = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "caption", "train", "bridge-only", "--model", str(tiny_clip_dir), "--decoder", str(tiny_lm_dir),
        "--dataset", "flickr8k", "--data-root", str(root), "--epochs", "1", "--set", "decode.max_new_tokens=5",
        "--set", "decode.tokenizer=simple", "--set", "run.attention_images=2", "--out", str(run)])
    assert result.exit_code == 0, result.output
    predictions = json.loads((run / "predictions.json").read_text())
    assert [p["file"] for p in predictions] == [f"jxie/flickr8k/test[{k}]" for k in range(3)]
    assert all(len(p["references"]) == 5 and p["caption"] for p in predictions)
    record = json.loads((run / "metrics.json").read_text())
    assert record["data"]["repo"] == "jxie/flickr8k" and record["data"]["images"] == {"train": 8, "val": 3, "test": 3}
    assert (run / "best_worst.png").stat().st_size > 10_000 and len(list((run / "attention").glob("*.png"))) == 2
