"""Safe image decoding: every accepted image becomes RGB; every rejected one gets a reason."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


class ImageLoadError(Exception):
    """An image that cannot be decoded; the message says why."""


def load_image(source: Any, max_pixels: int | None = None) -> Image.Image:
    """Decode ``source`` (path, bytes, ``{"bytes", "path"}`` dict, PIL image or HWC array) to an RGB image.

    Truncated files, empty files, non-images and decompression bombs raise ``ImageLoadError``.
    Grayscale, palette, RGBA (composited on white, as transformers does), CMYK and 16-bit images are converted,
    and an EXIF orientation (phone photos) is applied, as transformers' and datasets' own loaders do.
    """
    limit = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
    try:
        if isinstance(source, Image.Image):
            image = source
        elif isinstance(source, np.ndarray):
            image = Image.fromarray(source)
        else:
            image = _open(source, limit)
        return to_rgb(upright(image))
    except ImageLoadError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageLoadError(_reason(e)) from None
    except (OSError, ValueError, SyntaxError) as e:  # truncated data, bad headers
        raise ImageLoadError(_reason(e)) from None


def _open(source: Any, limit: int | None) -> Image.Image:
    if isinstance(source, dict):  # a datasets.Image(decode=False) cell
        data, path = source.get("bytes"), source.get("path")
        source = data if data else path
        if source is None:
            raise ImageLoadError("empty image cell")
    if isinstance(source, bytes | bytearray):
        if not source:
            raise ImageLoadError("empty file (0 bytes)")
        fp: Any = io.BytesIO(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise ImageLoadError(f"no such file: {path}")
        if path.stat().st_size == 0:
            raise ImageLoadError("empty file (0 bytes)")
        fp = path
    old = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        # Anything above the limit is refused, not merely warned about.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        Image.MAX_IMAGE_PIXELS = limit
        try:
            image = Image.open(fp)
            if limit is not None and image.width * image.height > limit:
                raise ImageLoadError(
                    f"decompression bomb: {image.width}x{image.height} pixels exceeds the limit of {limit}"
                )
            image.load()  # decode now, so truncated data fails here and not later
        finally:
            Image.MAX_IMAGE_PIXELS = old
    return image


def upright(image: Image.Image) -> Image.Image:
    """The image as it should be viewed: rotated and mirrored as its EXIF orientation tag says."""
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation)
    except Exception:  # unreadable EXIF is not worth losing the image over
        return image
    if orientation in (None, 1):
        return image
    try:
        return ImageOps.exif_transpose(image)
    except Exception:
        return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparency is composited on white, 16-bit data is scaled to 8 bits."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        peak = array.max() if array.size else 0
        if image.mode.startswith("I;16") or peak > 255:
            array = array / 257.0  # 65535 -> 255
        image = Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), mode="L")
    has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if isinstance(error, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return f"decompression bomb: {text}"
    if isinstance(error, UnidentifiedImageError):
        return "not an image (unrecognised format)"
    if "truncated" in text.lower():
        return f"truncated image data ({text})"
    return f"corrupt image data ({text})"
