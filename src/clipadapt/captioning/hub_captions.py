"""Caption datasets from the Hugging Face hub (through ``datasets``), or from a local copy of one (``data.root``).

Known datasets, each read with its real column names:

* ``flickr8k``: ``jxie/flickr8k``, Karpathy's 6,000/1,000/1,000 split as hub splits ``train``/``validation``/
  ``test``; the image in ``image``, five captions in ``caption_0`` ... ``caption_4``.
* ``flickr30k``: ``nlphuji/flickr30k``, one hub split (``test``) holding all 31,783 images; Karpathy's split in the
  ``split`` column, the image in ``image``, five captions in the list column ``caption``, the id in ``img_id``.
* ``coco-karpathy``: ``yerevann/coco-karpathy``, Karpathy's COCO split (hub splits ``train``, ``restval``,
  ``validation``, ``test``): captions in the list column ``sentences``, the id in ``cocoid``. It holds no images,
  only ``filepath``/``filename`` (``val2014/COCO_val2014_...jpg``): pass the folder holding COCO's ``train2014``
  and ``val2014`` as ``data.image_root``; paths are checked as for COCO files (inside the folder, present).

``hf-captions:ORG/NAME`` reads any other: the image column is the one typed ``datasets.Image``; captions are a
list-of-strings column (``caption``, ``captions``, ``sentences``, ``text``, ...) or several ``caption_N`` string
columns; a ``split`` column is used when present; rows sharing an id (one caption per row) are merged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from clipadapt.captioning.data import (
    KARPATHY_SPLITS,
    CaptionDataConfig,
    CaptionDataset,
    CaptionImage,
    EntryCollector,
    caption_dataset_from,
    image_root,
    register_caption_dataset,
)
from clipadapt.data.hub import HubSource, load_dataset_dict
from clipadapt.errors import DataError

HUB_SPLITS = {**KARPATHY_SPLITS, "validation": "val", "valid": "val"}
CAPTION_LIST_COLUMNS = ("caption", "captions", "sentences", "sentences_raw", "raw", "text", "alt_text")
ID_COLUMNS = ("img_id", "cocoid", "image_id", "imgid", "id")


@dataclass(frozen=True)
class HubCaptionSpec:
    """How to read one hub caption dataset; None columns are detected."""

    repo: str
    description: str = ""
    image_column: str | None = None  # "" : no image column, files under image_root named by path_columns
    caption_columns: tuple[str, ...] = ()  # one list column, or several string columns
    id_column: str | None = None
    split_column: str | None = None  # a per-row split (Karpathy's) used instead of the hub split's name
    path_columns: tuple[str, ...] = ()


KNOWN_HUB_CAPTIONS = {
    "flickr8k": HubCaptionSpec("jxie/flickr8k", "Flickr8k, Karpathy split", "image",
                               tuple(f"caption_{k}" for k in range(5)), split_column=""),
    "flickr30k": HubCaptionSpec("nlphuji/flickr30k", "Flickr30k, Karpathy split", "image", ("caption",),
                                "img_id", "split"),
    "coco-karpathy": HubCaptionSpec("yerevann/coco-karpathy", "COCO 2014, Karpathy split (images under "
                                    "data.image_root)", "", ("sentences",), "cocoid", "",
                                    ("filepath", "filename")),
}


def _detect(spec: HubCaptionSpec, features, columns: list[str]) -> HubCaptionSpec:
    """The spec with every None column filled from the table's features, or a one-line error naming them."""
    import datasets

    def check(name: str) -> str:
        if name and name not in columns:
            raise DataError(f"dataset '{spec.repo}' has no column '{name}'; columns: {', '.join(columns)}")
        return name

    image = spec.image_column
    if image is None:
        image = next((c for c in columns if isinstance(features[c], datasets.Image)), None)
        if image is None:
            raise DataError(f"dataset '{spec.repo}' has no image column (a datasets.Image feature); "
                            f"columns: {', '.join(columns)}")
    captions = spec.caption_columns
    if not captions:
        numbered = sorted((c for c in columns if re.fullmatch(r"captions?_\d+", c)),
                          key=lambda c: int(c.rsplit("_", 1)[1]))
        listed = next((c for c in CAPTION_LIST_COLUMNS if c in columns), None)
        captions = tuple(numbered) or ((listed,) if listed else ())
        if not captions:
            raise DataError(f"cannot tell which column of '{spec.repo}' holds the captions (looked for "
                            f"{', '.join(CAPTION_LIST_COLUMNS)} or caption_N); columns: {', '.join(columns)}")
    identity = spec.id_column if spec.id_column is not None else next((c for c in ID_COLUMNS if c in columns), "")
    split = spec.split_column if spec.split_column is not None else ("split" if "split" in columns else "")
    for name in (image, *captions, identity, split, *spec.path_columns):
        check(name)
    return HubCaptionSpec(spec.repo, spec.description, image, captions, identity, split, spec.path_columns)


def _texts(value) -> list:
    """A caption cell as a list: a string, a list of strings, or Karpathy's sentence records (``raw``)."""
    if isinstance(value, dict) and "raw" in value:  # a struct column of lists: {"raw": [...], "tokens": [...]}
        value = value["raw"]
    values = value if isinstance(value, list) else [value]
    return [v.get("raw") if isinstance(v, dict) else v for v in values]


def build_hub_captions(name: str, spec: HubCaptionSpec, config: CaptionDataConfig) -> CaptionDataset:
    table = load_dataset_dict(spec.repo, config.root)
    first = table[next(iter(table))]
    spec = _detect(spec, first.features, list(first.column_names))
    if not spec.image_column and not config.image_root:
        raise DataError(f"{name} holds no images, only their paths ({', '.join(spec.path_columns)}); pass the "
                        "folder that holds them as --image-root (data.image_root)")
    collector = EntryCollector(image_root(config, None))
    grouped: dict[str | None, dict[str, CaptionImage]] = {}
    text_columns = [c for c in (*spec.caption_columns, spec.id_column, spec.split_column, *spec.path_columns) if c]
    for hub_name, part in table.items():
        default_split = HUB_SPLITS.get(hub_name)
        if default_split is None and not spec.split_column:
            raise DataError(f"dataset '{spec.repo}' has a split '{hub_name}' that is none of "
                            f"{', '.join(HUB_SPLITS)}")
        source = (HubSource(part, spec.image_column, np.zeros(len(part), dtype=np.int64), f"{spec.repo}/{hub_name}",
                            None) if spec.image_column else None)
        rows = part.select_columns(text_columns).to_dict()  # images are not decoded here
        for row in range(len(part)):
            image_id = str(rows[spec.id_column][row]) if spec.id_column else f"{hub_name}-{row}"
            split = default_split
            if spec.split_column:
                split = KARPATHY_SPLITS.get(rows[spec.split_column][row])
                if split is None:
                    collector.refuse(f"image {image_id}", f"unknown split {rows[spec.split_column][row]!r}")
                    continue
            texts = [collector.caption(f"image {image_id}", text) for column in spec.caption_columns
                     for text in _texts(rows[column][row])]
            texts = [t for t in texts if t is not None]
            images = grouped.setdefault(split, {})
            if image_id in images:  # one caption per row: the rows of an image are merged
                images[image_id].captions.extend(texts)
                continue
            if source is None:
                relative = "/".join(str(rows[c][row]) for c in spec.path_columns if rows[c][row])
                path = collector.image_path(relative)
                if path is None:
                    continue
                images[image_id] = CaptionImage(image_id, path, texts)
            else:
                images[image_id] = CaptionImage(image_id, None, texts, row, source)
    for images in grouped.values():
        for image_id in [i for i, image in images.items() if not image.captions]:
            collector.refuse(f"image {image_id}", "no captions")
            del images[image_id]
    info = {"repo": spec.repo, "local_copy": config.root, "image_column": spec.image_column or None,
            "caption_columns": list(spec.caption_columns)}
    return caption_dataset_from(name, {split: list(images.values()) for split, images in grouped.items()}, collector,
                                config, info)


def _register(key: str, spec: HubCaptionSpec) -> None:
    def factory(config: CaptionDataConfig, argument: str | None = None) -> CaptionDataset:
        return build_hub_captions(key, spec, config)

    factory.__doc__ = f"{spec.description}; hub: {spec.repo}"
    register_caption_dataset(key)(factory)


for _key, _spec in KNOWN_HUB_CAPTIONS.items():
    _register(_key, _spec)


@register_caption_dataset("hf-captions", takes_argument=True, usage="hf-captions:ORG/NAME")
def hub_captions(config: CaptionDataConfig, argument: str | None) -> CaptionDataset:
    """Any hub caption dataset; image, caption, id and split columns detected from its features."""
    return build_hub_captions(f"hf-captions:{argument}", HubCaptionSpec(str(argument)), config)
