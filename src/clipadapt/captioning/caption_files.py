"""Caption annotation files: COCO captions JSON (a file or a folder of per-split files), Karpathy's split files, and
Every entry goes through ``EntryCollector``'s checks before an
image is opened (see ``captioning/data.py``)."""

from __future__ import annotations

from pathlib import Path

from clipadapt.captioning.data import (
    KARPATHY_SPLITS,
    SPLITS,
    CaptionDataConfig,
    CaptionDataset,
    CaptionImage,
    EntryCollector,
    caption_dataset_from,
    image_root,
    register_caption_dataset,
)
from clipadapt.data.base import read_json_file
from clipadapt.errors import DataError


def _read_json(path: Path) -> dict:
    data = read_json_file(path, "caption file")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"caption file '{path}' has no 'images' list (expected COCO or Karpathy format)")
    return data


def read_coco_file(path: Path, collector: EntryCollector) -> dict[str | None, list[CaptionImage]]:
    """Images of one COCO captions file, grouped by their ``split`` field (None where absent)."""
    data = _read_json(path)
    if not isinstance(data.get("annotations"), list):
        raise DataError(f"caption file '{path}' has no 'annotations' list (expected COCO captions format)")
    records: dict[str, dict] = {}
    for record in data["images"]:
        if not isinstance(record, dict) or "id" not in record:
            collector.refuse(str(record)[:80], "image record without an id")
            continue
        records[str(record["id"])] = record
    captions: dict[str, list[str]] = {key: [] for key in records}
    for annotation in data["annotations"]:
        image_id = str(annotation.get("image_id")) if isinstance(annotation, dict) else None
        if image_id not in captions:
            collector.refuse(f"annotation {annotation.get('id') if isinstance(annotation, dict) else annotation}",
                             "unknown image id")
            continue
        text = collector.caption(f"image {image_id}", annotation.get("caption"))
        if text is not None:
            captions[image_id].append(text)
    grouped: dict[str | None, list[CaptionImage]] = {}
    for image_id, record in records.items():
        image = _image(collector, image_id, record.get("file_name"), captions[image_id])
        if image is not None:
            grouped.setdefault(record.get("split"), []).append(image)
    return grouped


def read_karpathy_file(path: Path, collector: EntryCollector) -> dict[str | None, list[CaptionImage]]:
    data = _read_json(path)
    grouped: dict[str | None, list[CaptionImage]] = {}
    for index, record in enumerate(data["images"]):
        if not isinstance(record, dict):
            collector.refuse(f"entry {index}", "not an image record")
            continue
        image_id = str(record.get("cocoid", record.get("imgid", index)))
        split = KARPATHY_SPLITS.get(record.get("split"))
        if split is None:
            collector.refuse(f"image {image_id}", f"unknown split {record.get('split')!r}")
            continue
        relative = "/".join(part for part in (record.get("filepath"), record.get("filename")) if part)
        texts = [collector.caption(f"image {image_id}", s.get("raw") if isinstance(s, dict) else None)
                 for s in record.get("sentences", [])]
        image = _image(collector, image_id, relative, [t for t in texts if t is not None])
        if image is not None:
            grouped.setdefault(split, []).append(image)
    return grouped


def _image(collector: EntryCollector, image_id: str, relative, captions: list[str]) -> CaptionImage | None:
    path = collector.image_path(relative)
    if path is None:
        return None
    if not captions:
        collector.refuse(str(relative), "no captions")
        return None
    return CaptionImage(image_id, path, captions)


@register_caption_dataset("coco", takes_argument=True, usage="coco:FILE.json|FOLDER")
def coco_captions(config: CaptionDataConfig, argument: str | None) -> CaptionDataset:
    """COCO captions JSON (images + annotations), one file or captions_{train,val,test}.json in a folder."""
    path = Path(argument or "")
    if path.is_dir():
        files = {split: path / f"captions_{split}.json" for split in SPLITS}
        files = {split: file for split, file in files.items() if file.is_file()}
        if not files:
            raise DataError(f"folder '{path}' holds none of captions_train.json, captions_val.json, "
                            "captions_test.json")
        collector = EntryCollector(image_root(config, path))
        grouped: dict[str | None, list[CaptionImage]] = {}
        for split, file in files.items():
            for images in read_coco_file(file, collector).values():  # the file name decides the split
                grouped.setdefault(split, []).extend(images)
        return caption_dataset_from(f"coco:{path}", grouped, collector, config,
                                    {"files": {k: str(v) for k, v in files.items()}})
    if not path.is_file():
        raise DataError(f"caption file '{path}' does not exist")
    collector = EntryCollector(image_root(config, path.parent))
    return caption_dataset_from(f"coco:{path}", read_coco_file(path, collector), collector, config,
                                {"files": [str(path)]})


@register_caption_dataset("karpathy", takes_argument=True, usage="karpathy:FILE.json")
def karpathy_captions(config: CaptionDataConfig, argument: str | None) -> CaptionDataset:
    """Karpathy split file (dataset_coco.json, dataset_flickr8k.json, ...): images, splits and sentences."""
    path = Path(argument or "")
    if not path.is_file():
        raise DataError(f"caption file '{path}' does not exist")
    collector = EntryCollector(image_root(config, path.parent))
    return caption_dataset_from(f"karpathy:{path}", read_karpathy_file(path, collector), collector, config,
                                {"files": [str(path)]})
