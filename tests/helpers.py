"""Image and dataset builders shared by the tests."""

from __future__ import annotations

import importlib.util
import io
import os
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

CI_VALUES = ("true", "1", "yes")


def running_in_ci() -> bool:
    """True under CI (``CI=true``, as GitHub Actions, GitLab and ``.ci/run`` set it)."""
    return os.environ.get("CI", "").strip().lower() in CI_VALUES


def require_or_skip(available: bool, what: str) -> None:
    """Skip a test whose outside tool is missing, except under ``CI=true``, where the test fails instead: CI runs
    every test it advertises (``.ci/run`` installs Java and Chromium), so a missing tool there must not pass
    quietly as a skip."""
    if available:
        return
    if running_in_ci():
        pytest.fail(f"{what} is missing, and CI={os.environ['CI']} runs every test: install it (.ci/run does) "
                    f"instead of skipping", pytrace=False)
    pytest.skip(f"{what} is missing on this machine (CI installs it; with CI=true this test fails instead)")


def require_ray() -> None:
    """The Ray executor's tests need Ray (the dev extra installs it): skipped without it, failed under CI."""
    require_or_skip(importlib.util.find_spec("ray") is not None, "Ray (pip install 'clipadapt[ray]')")


COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220)}


FOUR_COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (230, 210, 40)}


def coloured_image(colour: tuple[int, int, int], size=(40, 30), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.array(colour, dtype=np.int16)[None, None, :]
    noise = rng.integers(-25, 25, size=(size[1], size[0], 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), mode="RGB")


def random_photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth random image (gradients + blobs), closer to a photo than white noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = []
    for _ in range(3):
        a, b, c = rng.uniform(-1, 1, 3)
        channel = 128 + 60 * np.sin(a * x / 17 + b * y / 23 + c) + rng.normal(0, 12, (height, width))
        channels.append(channel)
    return Image.fromarray(np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8), mode="RGB")


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def decompression_bomb_png(width: int = 40_000, height: int = 40_000) -> bytes:
    """A tiny PNG whose header claims width x height pixels (1.6 G by default)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    row = b"\x00" + b"\x00" * width
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(row)) + chunk(b"IEND", b"")


def write_bad_images(folder: Path) -> dict[str, str]:
    """Every kind of unreadable file the loaders must skip; returns name -> kind."""
    folder.mkdir(parents=True, exist_ok=True)
    good = jpeg_bytes(coloured_image(COLOURS["red"], (64, 48)))
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not an image\n")
    (folder / "bomb.png").write_bytes(decompression_bomb_png())
    return {"truncated.jpg": "truncated", "empty.jpg": "empty", "text.jpg": "text", "bomb.png": "bomb"}


def make_image_folder(root: Path, per_class: int = 6, splits: tuple[str, ...] = (), seed: int = 0) -> Path:
    """root/[split/]<colour>/<i>.{jpg,png}: three clearly coloured classes."""
    rng = np.random.default_rng(seed)
    for split in splits or ("",):
        for name, colour in COLOURS.items():
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                image = coloured_image(colour, (int(rng.integers(30, 60)), int(rng.integers(30, 60))), seed=i)
                suffix = ".jpg" if i % 2 else ".png"
                image.save(folder / f"{split or 'img'}_{i}{suffix}")
    return root


WORLD_DOC = Path(__file__).resolve().parents[1] / "docs" / "world.md"
# docs/world.md's column -> the world task (its zero-shot acc1 on the test split, template `simple`)
WORLD_DOC_COLUMNS = {"world:shapes (48)": "shapes", "shapes-novel (16)": "shapes-novel", "shape (6)": "shape",
                     "colour (8)": "colour", "shifted (48)": "shapes-shifted"}


def _table_cells(line: str) -> list[str]:
    return [c.strip().strip("*") for c in line.strip().strip("|").split("|")]


def _world_figures(header: list[str], row: list[str], path: Path) -> dict[str, float]:
    cells = dict(zip(header, row, strict=True))
    missing = set(WORLD_DOC_COLUMNS) - set(cells)
    if missing:
        raise ValueError(f"{path}: the table has no column {', '.join(sorted(missing))}")
    return {task: float(cells[column]) for column, task in WORLD_DOC_COLUMNS.items()}


def documented_world_figures(path: Path = WORLD_DOC) -> dict[str, float]:
    """The zero-shot figures docs/world.md records for world:tiny's default recipe (the one row of its table that
    says "the default recipe"), by task name."""
    lines = path.read_text().splitlines()
    headers = [_table_cells(line) for line in lines if line.startswith("| recipe |")]
    rows = [_table_cells(line) for line in lines if line.startswith("|") and "the default recipe" in line]
    if len(headers) != 1 or len(rows) != 1:
        raise ValueError(f"{path}: expected one '| recipe |' table with one 'the default recipe' row, found "
                         f"{len(headers)} tables and {len(rows)} rows")
    return _world_figures(headers[0], rows[0], path)


def documented_thread_figures(path: Path = WORLD_DOC) -> dict[int, dict[str, float]]:
    """docs/world.md's builds of the default recipe with other thread counts (the '| threads |' table, a stand-in
    for other machines): ``{threads: {task: acc1}}``."""
    lines = path.read_text().splitlines()
    start = [i for i, line in enumerate(lines) if line.startswith("| threads |")]
    if len(start) != 1:
        raise ValueError(f"{path}: expected one '| threads |' table, found {len(start)}")
    header = _table_cells(lines[start[0]])
    figures = {}
    for line in lines[start[0] + 2:]:
        if not line.startswith("|"):
            break
        row = _table_cells(line)
        if row[0].split()[0].isdigit():  # the spread row, if any, is derived, not read
            figures[int(row[0].split()[0])] = _world_figures(header, row, path)
    return figures


def documented_world_spread(path: Path = WORLD_DOC) -> dict[str, float]:
    """By task: the largest distance between the default recipe's documented figure and a build with another thread
    count (how far a build on another machine may land from the documented figure)."""
    default, by_threads = documented_world_figures(path), documented_thread_figures(path)
    return {task: round(max(abs(row[task] - default[task]) for row in by_threads.values()), 4) for task in default}


@contextmanager
def clipadapt_home(path: Path) -> Iterator[Path]:
    """Point $CLIPADAPT_HOME at ``path`` for fixtures wider than one test (monkeypatch is per test)."""
    previous = os.environ.get("CLIPADAPT_HOME")
    os.environ["CLIPADAPT_HOME"] = str(path)
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop("CLIPADAPT_HOME", None)
        else:
            os.environ["CLIPADAPT_HOME"] = previous


def train_captioner_steps(captioner, batch: dict, steps: int) -> list[float]:
    """AdamW steps on what requires grad; checks every step that gradients reach exactly those parameters and
    that the rest stays bit-identical. Returns the losses."""
    import torch

    trained = {n for n, p in captioner.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in captioner.named_parameters() if n not in trained}
    optimizer = torch.optim.AdamW([p for p in captioner.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(steps):
        loss = captioner(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        assert {n for n, p in captioner.named_parameters() if p.grad is not None} == trained
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(torch.equal(p, frozen[n]) for n, p in captioner.named_parameters() if n in frozen)
    return losses


DISAGREE_COLOURS = {"amber": (200, 125, 45), "rust": (185, 100, 60)}  # close: no candidate is perfect


def make_disagreeing_folder(root: Path, colours: dict[str, tuple[int, int, int]] | None = None,
                            train_per_class: int = 12, val_per_class: tuple[int, int] = (7, 6)) -> Path:
    """An image folder on which validation and test disagree about every candidate, by construction.

    Two colour classes (close ones by default). ``train/`` and ``val/`` are labelled truly; ``test/`` holds
    pixel-identical copies of the ``val/`` images with the two labels swapped (saved again with a note, so they are
    other files with other bytes: the held-out check refuses the same file or a byte-identical copy in two splits, and
    this fixture shares images between val and test on purpose). A deterministic classifier predicts the same on an
    image and its copy, so for every candidate (template set, C, epoch, alpha, weights, sweep cell) test
    accuracy = 1 - val accuracy, exactly: the candidate best on validation is the worst on test. An odd number of
    val images (7 + 6) rules out the tie at 0.5. A selection that read test would report 1 - min(val), not
    1 - max(val).
    """
    colours = colours or DISAGREE_COLOURS
    rng = np.random.default_rng(11)
    names = list(colours)
    for split, counts in (("train", (train_per_class, train_per_class)), ("val", val_per_class)):
        for name, count in zip(names, counts, strict=True):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                base = np.array(colours[name], dtype=np.int16)[None, None, :]
                size = (int(rng.integers(28, 48)), int(rng.integers(28, 48)))
                noise = rng.integers(-70, 70, size=(size[1], size[0], 3))
                pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels, mode="RGB").save(folder / f"{name}-{i}.png")
    for true_name, swapped in zip(names, reversed(names), strict=True):
        target = root / "test" / swapped
        target.mkdir(parents=True, exist_ok=True)
        for path in sorted((root / "val" / true_name).glob("*.png")):
            note = PngInfo()  # other bytes, same pixels: the held-out check refuses byte-identical copies
            note.add_text("copy-of", f"val/{true_name}/{path.name}")
            Image.open(path).save(target / path.name, pnginfo=note)
    return root


def make_disagreeing_captions(root: Path, train: int = 12, val: int = 6) -> Path:
    """A COCO caption folder (world scenes) whose test split is the val images with their captions rotated: image k
    carries image k+1's five captions. The epoch whose captions fit val best is not the one that fits test best."""
    import json
    import shutil

    from clipadapt.world.caption_data import write_caption_dataset

    write_caption_dataset(root, {"train": (1, train), "val": (2, val)}, resolution=32)
    data = json.loads((root / "captions_val.json").read_text())
    (root / "images" / "test").mkdir(parents=True, exist_ok=True)
    images = []
    for record in data["images"]:
        name = Path(record["file_name"]).name
        shutil.copyfile(root / record["file_name"], root / "images" / "test" / name)
        images.append({**record, "file_name": f"images/test/{name}"})
    ids = [record["id"] for record in data["images"]]
    rotated = {ids[(k + 1) % len(ids)]: ids[k] for k in range(len(ids))}  # captions of k+1 -> image k
    annotations = [{**a, "image_id": rotated[a["image_id"]]} for a in data["annotations"]]
    (root / "captions_test.json").write_text(json.dumps({"images": images, "annotations": annotations}) + "\n")
    return root


def repeated_ngrams(ids: list[int], n: int) -> int:
    """How many of a token list's n-grams repeat an earlier one."""
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    return len(grams) - len(set(grams))


def check_decoding_controls(captioner, encoded: dict) -> None:
    """``DecodeConfig``'s controls act on a captioner's decoding, greedy and beams (a random decoder, three images):
    no repeated trigram under no_repeat_ngram_size=3, fewer repeated tokens under a repetition penalty, and
    min_new_tokens holding back an end-of-text that is otherwise certain."""
    import torch

    from clipadapt.captioning.training import DecodeConfig

    captioner.eval()

    def tokens(**settings):
        out = captioner.generate(encoded, **DecodeConfig(max_new_tokens=16, **settings).generation())
        return [captioner.caption_tokens(row) for row in out["sequences"]]

    free = tokens(no_repeat_ngram_size=0)
    assert sum(repeated_ngrams(row, 3) for row in free) > 0  # the random decoder loops ("amber amber amber ...")
    for beams in (1, 3):
        assert all(repeated_ngrams(row, 3) == 0 for row in tokens(no_repeat_ngram_size=3, beams=beams))
    penalised = tokens(no_repeat_ngram_size=0, repetition_penalty=3.0)
    assert sum(repeated_ngrams(row, 1) for row in penalised) < sum(repeated_ngrams(row, 1) for row in free)
    # end-of-text made the certain next token: empty captions, unless min_new_tokens holds it back
    eos = captioner.tokenizer.eos_token_id
    decoder = captioner.decoder.get_base_model() if hasattr(captioner.decoder, "get_base_model") \
        else captioner.decoder
    hook = decoder.get_output_embeddings().register_forward_hook(lambda module, args, logits: logits.index_add(
        -1, torch.tensor([eos]), torch.full((*logits.shape[:-1], 1), 1e4)))
    try:
        assert [len(row) for row in tokens()] == [0, 0, 0]
        assert [len(row) for row in tokens(min_new_tokens=4)] == [4, 4, 4]
        assert [len(row) for row in tokens(min_new_tokens=4, beams=3)] == [4, 4, 4]
    finally:
        hook.remove()
