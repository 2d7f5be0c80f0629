"""Image bytes: validation and RGB conversion for LMDB writing, reduced-size decoding for reading.

Writing (:func:`prepare_image`): a file is kept byte-for-byte when it is an RGB JPEG or PNG that
needs no resizing (cheapest, lossless). Otherwise it is converted to RGB and re-encoded (JPEG,
quality 90, for JPEG sources; PNG for the rest): grayscale, palette, RGBA/LA (composited on
white), CMYK, 16-bit (scaled to 8 bits). With ``max_side`` the longer side is capped.
Undecodable files raise :class:`SkippedImage` with the reason.

Reading (:func:`open_image`, :func:`decode_rgb`): JPEGs are decoded at a reduced size
(``Image.draft``: the decoder does 1/2, 1/4, 1/8 scaling almost for free) whenever that still
covers the requested size.

Every reader of image files or bytes in the project goes through this module, so all of them:

- read only regular files (:func:`read_regular_file`: a named pipe, socket or device is refused
  without blocking on it);
- refuse images of more than :func:`max_image_pixels` pixels from the header, before decoding
  (:class:`ImageTooLarge`; default Pillow's own limit, 89,478,485 pixels; the environment
  variable ``VIRTEX_MAX_IMAGE_PIXELS`` or ``build-lmdb --max-pixels`` changes it);
- apply the EXIF orientation (:func:`exif_orientation`, :func:`apply_orientation`): a portrait
  phone photo stored sideways with ``Orientation=6`` is used upright. :func:`prepare_image`
  stores it upright (re-encoded), so LMDB records never need it.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "ImageTooLarge",
    "NotARegularFile",
    "PreparedImage",
    "SkippedImage",
    "apply_orientation",
    "check_pixels",
    "decode_rgb",
    "exif_orientation",
    "max_image_pixels",
    "open_image",
    "prepare_image",
    "read_regular_file",
    "to_rgb",
    "upright_size",
]

# Truncated files are errors, never silently grey-filled.
ImageFile.LOAD_TRUNCATED_IMAGES = False
JPEG_QUALITY = 90

#: Pillow's default ``Image.MAX_IMAGE_PIXELS`` (a quarter gigabyte of RGB), as a fixed number so
#: that another library lowering or disabling Pillow's global does not change ours.
DEFAULT_MAX_IMAGE_PIXELS = 1024 * 1024 * 1024 // 4 // 3
#: Environment variable that overrides :data:`DEFAULT_MAX_IMAGE_PIXELS` (inherited by
#: DataLoader workers and build-lmdb's processes).
MAX_PIXELS_ENV = "VIRTEX_MAX_IMAGE_PIXELS"

#: EXIF orientation (tag 0x0112) -> the transpose that makes the image upright (as Pillow's
#: ``ImageOps.exif_transpose``). 1 (or absent) is already upright.
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ORIENTATION_TAG = 0x0112


class ImageTooLarge(ValueError):
    """An image whose header claims more pixels than :func:`max_image_pixels` allows."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotARegularFile(OSError):
    """A path that is a named pipe, socket or device (reading it could block or never end)."""


def max_image_pixels(override: int | None = None) -> int:
    """The pixel limit: ``override``, else ``$VIRTEX_MAX_IMAGE_PIXELS``, else Pillow's default.

    Raises:
        ValueError: the environment variable is not a positive integer.
    """
    if override is not None:
        limit = override
    else:
        text = os.environ.get(MAX_PIXELS_ENV, "").strip()
        try:
            limit = int(text) if text else DEFAULT_MAX_IMAGE_PIXELS
        except ValueError:
            raise ValueError(f"{MAX_PIXELS_ENV}={text[:40]!r} is not an integer") from None
    if limit < 1:
        raise ValueError(f"the image pixel limit must be positive, got {limit}")
    return limit


def check_pixels(image: Image.Image, limit: int | None = None) -> None:
    """Raise :class:`ImageTooLarge` if an (opened) image has more pixels than the limit."""
    width, height = image.size
    bound = max_image_pixels(limit)
    if width * height > bound:
        raise ImageTooLarge(
            f"image too large: {width}x{height} = {width * height:,} pixels, above the limit "
            f"of {bound:,} (set {MAX_PIXELS_ENV} to allow more)"
        )


def read_regular_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a regular file; anything else is refused without blocking on it.

    The file is opened non-blocking and checked with ``fstat`` on the open descriptor, so a named
    pipe with no writer cannot hang the reader and a swap between check and read is harmless.

    Raises:
        FileNotFoundError, PermissionError, ...: as ``open``.
        IsADirectoryError: a folder.
        NotARegularFile: a named pipe, socket or device.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory, not an image file", str(path))
        if not stat.S_ISREG(mode):
            raise NotARegularFile(
                errno.EINVAL, "not a regular file (a named pipe, socket or device)", str(path)
            )
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read()
    finally:
        os.close(fd)


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation (1-8) of an opened image; 1 when absent or unreadable.

    Reads only the header (works on a lazily opened image, before ``draft``).
    """
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # malformed EXIF is metadata we ignore, never a reason to drop the image
        return 1
    return value if isinstance(value, int) and value in _UPRIGHT else 1


def upright_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    """``(width, height)`` of the image once :func:`apply_orientation` has turned it."""
    return (size[1], size[0]) if orientation in (5, 6, 7, 8) else size


def apply_orientation(image: Image.Image, orientation: int) -> Image.Image:
    """The image turned upright for an EXIF ``orientation`` (the image itself for 1).

    The turned image carries no orientation any more: ``transpose`` copies ``info``, and a
    reader given the result (e.g. an evaluation transform given a decoded image) would otherwise
    turn it a second time. Pillow also reads the orientation from XMP, so that goes too.
    """
    method = _UPRIGHT.get(orientation)
    if method is None:
        return image
    turned = image.transpose(method)
    for key in ("exif", "xmp", "XML:com.adobe.xmp"):
        turned.info.pop(key, None)
    return turned


def _open(data: bytes, max_pixels: int | None) -> Image.Image:
    """``Image.open`` (lazy) with the pixel limit applied to the header's size."""
    bound = max_image_pixels(max_pixels)
    with warnings.catch_warnings():
        # Our limit decides; Pillow's warning (and its error at twice its own limit) are
        # replaced by ImageTooLarge. A limit above Pillow's raises Pillow's accordingly.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        if Image.MAX_IMAGE_PIXELS is not None and bound > Image.MAX_IMAGE_PIXELS:
            Image.MAX_IMAGE_PIXELS = bound
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as error:
            raise ImageTooLarge(f"image too large: {error}") from None
    check_pixels(image, bound)
    return image


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
    oriented: bool = False  # turned upright from an EXIF orientation other than 1


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


def prepare_image(
    path: str | os.PathLike[str], max_side: int | None = None, max_pixels: int | None = None
) -> PreparedImage:
    """Read and validate one image file for an LMDB record (stored upright).

    Args:
        path: the image file (a regular file).
        max_side: if given, images whose longer side exceeds it are downscaled (aspect kept).
        max_pixels: pixel limit (default :func:`max_image_pixels`).

    Raises:
        SkippedImage: missing, unreadable, not a regular file, too many pixels, corrupt or
            truncated (with the reason).
    """
    try:
        raw = read_regular_file(path)
    except FileNotFoundError:
        raise SkippedImage("missing image file") from None
    except OSError as error:
        raise SkippedImage(f"cannot read file: {error.strerror or error}") from None
    image: Image.Image
    try:
        image = _open(raw, max_pixels)
        source_format = (image.format or "").upper()
        mode = image.mode
        width, height = image.size  # from the header, before any draft
        orientation = exif_orientation(image)
        big = max_side is not None and max(image.size) > max_side
        if source_format == "JPEG" and mode == "RGB" and not big and orientation == 1:
            # Stored as is: validating needs the whole entropy-coded stream parsed, not the
            # full-size pixels. A 1/8-scale decode does that (truncation still raises) ~3x faster.
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
        image.load()
    except ImageTooLarge as error:
        raise SkippedImage(error.reason) from None
    except UnidentifiedImageError:
        raise SkippedImage("not a recognised image (corrupt or wrong format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise SkippedImage(f"corrupt or truncated image: {error}") from None
    if image.width < 1 or image.height < 1:
        raise SkippedImage("empty image")
    keep_bytes = mode == "RGB" and source_format in ("JPEG", "PNG") and orientation == 1
    oriented = orientation != 1
    if oriented:
        image = apply_orientation(image, orientation)
    resized = False
    if max_side is not None and max(image.size) > max_side:
        scale = max_side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = to_rgb(image).resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)
        keep_bytes, resized = False, True
    if keep_bytes:
        fmt = "jpeg" if source_format == "JPEG" else "png"
        return PreparedImage(raw, fmt, width, height, None, False)
    # Re-encoded without the EXIF block: the pixels are upright now.
    rgb = to_rgb(image)
    out = io.BytesIO()
    if source_format == "JPEG" or resized:
        rgb.save(out, format="JPEG", quality=JPEG_QUALITY)
        fmt = "jpeg"
    else:
        rgb.save(out, format="PNG")
        fmt = "png"
    converted = None if mode == "RGB" else mode
    return PreparedImage(
        out.getvalue(), fmt, rgb.width, rgb.height, converted, resized, oriented=oriented
    )


def open_image(
    data: bytes, min_size: tuple[int, int] | None = None, max_pixels: int | None = None
) -> Image.Image:
    """Open encoded bytes lazily; with ``min_size=(w, h)`` JPEGs use reduced-size decoding.

    ``Image.draft`` picks the largest DCT scale (1/2, 1/4, 1/8) whose result is still at least
    ``min_size``; the returned image may therefore be smaller than the file's size. The EXIF
    orientation is NOT applied (the image is lazy): see :func:`decode_rgb`.

    Raises:
        ImageTooLarge: more pixels than :func:`max_image_pixels` (from the header).
        PIL.UnidentifiedImageError: not an image.
    """
    image = _open(data, max_pixels)
    if min_size is not None and image.format == "JPEG":
        image.draft("RGB", min_size)
    return image


def decode_rgb(
    data: bytes, min_size: tuple[int, int] | None = None, max_pixels: int | None = None
) -> Image.Image:
    """Decode bytes to an upright RGB image (reduced-size decoding as in :func:`open_image`)."""
    image = open_image(data, min_size, max_pixels)
    orientation = exif_orientation(image)
    return to_rgb(apply_orientation(image, orientation))
