"""Image bytes: validation and RGB conversion for LMDB writing, reduced-size decoding for reading.

Writing (:func:`prepare_image`): a file is kept byte-for-byte when it is an RGB JPEG or PNG that
needs no resizing (cheapest, lossless). Otherwise it is converted to RGB and re-encoded (JPEG,
quality 90, for JPEG sources; PNG for the rest): grayscale, palette, RGBA/LA (composited on
white), CMYK, 16-bit (scaled to 8 bits). With ``max_side`` the longer side is capped.
Undecodable files raise :class:`SkippedImage` with the reason.

Reading (:func:`open_image`, :func:`decode_rgb`): JPEGs are decoded at a reduced size
(``Image.draft``: the decoder does 1/2, 1/4, 1/8 scaling almost for free) whenever that still
covers the requested size.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

__all__ = ["PreparedImage", "SkippedImage", "decode_rgb", "open_image", "prepare_image", "to_rgb"]

# Truncated files are errors, never silently grey-filled.
ImageFile.LOAD_TRUNCATED_IMAGES = False
JPEG_QUALITY = 90


class SkippedImage(Exception):
    """An image that cannot be used; ``reason`` is recorded in the LMDB manifest."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class PreparedImage:
    """Encoded RGB image bytes ready for a record."""

    data: bytes
    format: str  # "jpeg" or "png"
    width: int
    height: int
    converted_from: str | None  # original mode when converted, e.g. "CMYK"
    resized: bool


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB (alpha composited on white, 16-bit scaled to 8 bits)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        array = np.clip(np.rint(array * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(array).convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def prepare_image(path: str | os.PathLike[str], max_side: int | None = None) -> PreparedImage:
    """Read and validate one image file for an LMDB record.

    Args:
        path: the image file.
        max_side: if given, images whose longer side exceeds it are downscaled (aspect kept).

    Raises:
        SkippedImage: missing, unreadable, corrupt or truncated file (with the reason).
    """
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise SkippedImage("missing image file") from None
    except OSError as error:
        raise SkippedImage(f"cannot read file: {error}") from None
    image: Image.Image
    try:
        image = Image.open(io.BytesIO(raw))
        source_format = (image.format or "").upper()
        mode = image.mode
        width, height = image.size  # from the header, before any draft
        big = max_side is not None and max(image.size) > max_side
        if source_format == "JPEG" and mode == "RGB" and not big:
            # Stored as is: validating needs the whole entropy-coded stream parsed, not the
            # full-size pixels. A 1/8-scale decode does that (truncation still raises) ~3x faster.
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
        image.load()
    except UnidentifiedImageError:
        raise SkippedImage("not a recognised image (corrupt or wrong format)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise SkippedImage(f"corrupt or truncated image: {error}") from None
    if image.width < 1 or image.height < 1:
        raise SkippedImage("empty image")
    keep_bytes = mode == "RGB" and source_format in ("JPEG", "PNG")
    resized = False
    if max_side is not None and max(image.size) > max_side:
        scale = max_side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = to_rgb(image).resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)
        keep_bytes, resized = False, True
    if keep_bytes:
        fmt = "jpeg" if source_format == "JPEG" else "png"
        return PreparedImage(raw, fmt, width, height, None, False)
    rgb = to_rgb(image)
    out = io.BytesIO()
    if source_format == "JPEG" or resized:
        rgb.save(out, format="JPEG", quality=JPEG_QUALITY)
        fmt = "jpeg"
    else:
        rgb.save(out, format="PNG")
        fmt = "png"
    converted = None if mode == "RGB" else mode
    return PreparedImage(out.getvalue(), fmt, rgb.width, rgb.height, converted, resized)


def open_image(data: bytes, min_size: tuple[int, int] | None = None) -> Image.Image:
    """Open encoded bytes lazily; with ``min_size=(w, h)`` JPEGs use reduced-size decoding.

    ``Image.draft`` picks the largest DCT scale (1/2, 1/4, 1/8) whose result is still at least
    ``min_size``; the returned image may therefore be smaller than the file's size.
    """
    image = Image.open(io.BytesIO(data))
    if min_size is not None and image.format == "JPEG":
        image.draft("RGB", min_size)
    return image


def decode_rgb(data: bytes, min_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode bytes to an RGB image (reduced-size decoding as in :func:`open_image`)."""
    return to_rgb(open_image(data, min_size))
