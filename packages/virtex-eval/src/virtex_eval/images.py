"""Image files for evaluation: finding them, decoding them, and errors that name the file.

Every evaluation command that reads images from disk (captioning, zero-shot, probes) goes
through this module, so a missing, empty, truncated or non-image file always fails the same way:
:class:`ImageFileError` (a ``ValueError``) whose message starts with the path. So does a path
that is not a regular file (a named pipe is refused without blocking on it) and an image above
the pixel limit (``VIRTEX_MAX_IMAGE_PIXELS``, default Pillow's 89,478,485; checked from the
header before decoding). Images are used upright (EXIF orientation applied).

Preprocessing is ``virtex_data.transforms.EvalTransform`` (shorter side to ``round(S / 0.875)``,
centre crop ``S``, ImageNet normalisation), the same transform the training run validates with.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from virtex_data.image_codec import ImageTooLarge, decode_rgb, read_regular_file
from virtex_data.transforms import EvalTransform, TransformConfig

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFileDataset",
    "ImageFileError",
    "LenientImageFileDataset",
    "eval_transform",
    "find_images",
    "load_image",
    "load_image_tensor",
]

#: File name endings treated as images when a directory is searched (case-insensitive).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")

# What PIL raises on bad data: unidentified format, truncated stream, bad header fields.
_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError)


class ImageFileError(ValueError):
    """An image file that cannot be used; the message starts with its path."""

    def __init__(self, path: str | os.PathLike[str], reason: str | None = None) -> None:
        if reason is None:
            # One argument: a formatted message, e.g. a DataLoader worker's re-raise, which wraps
            # the original message in the worker's traceback: keep only the original.
            lines = [line for line in str(path).splitlines() if line.strip()]
            message = lines[-1] if lines else str(path)
            message = message.removeprefix(f"{type(self).__name__}: ")
            super().__init__(message)
            self.path: Path | None = None
            self.reason = message
            return
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


def eval_transform(image_size: int = 224, resize: int | None = None) -> EvalTransform:
    """The evaluation transform: shorter side to ``resize`` (default ``round(S / 0.875)``),
    centre crop ``image_size``, ImageNet normalisation."""
    return EvalTransform(TransformConfig(image_size=image_size, eval_resize=resize))


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def find_images(paths: Iterable[str | os.PathLike[str]], *, recursive: bool = True) -> list[Path]:
    """Image files named by ``paths``: files as given, directories searched (sorted).

    A file given explicitly is kept whatever its name ends with (it fails later, naming the
    file, if it is not an image); inside directories only :data:`IMAGE_EXTENSIONS` count.

    Raises:
        ImageFileError: a path that does not exist, or a directory without images.
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            inside = sorted(p for p in path.glob(pattern) if p.is_file() and _is_image_name(p))
            if not inside:
                raise ImageFileError(
                    path, f"directory holds no images (looked for {', '.join(IMAGE_EXTENSIONS)})"
                )
            found.extend(inside)
        elif path.is_file():
            found.append(path)
        elif path.exists():
            raise ImageFileError(path, "not a regular file (a named pipe, socket or device)")
        else:
            raise ImageFileError(path, "no such file or directory")
    return found


def _read(path: Path) -> bytes:
    try:
        data = read_regular_file(path)
    except FileNotFoundError:
        raise ImageFileError(path, "no such image file") from None
    except IsADirectoryError:
        raise ImageFileError(path, "is a directory, not an image file") from None
    except OSError as error:
        raise ImageFileError(path, f"cannot read file ({error.strerror or error})") from None
    if not data:
        raise ImageFileError(path, "empty file")
    return data


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """The fully decoded, upright RGB image of a file (grayscale, palette, RGBA, CMYK, 16-bit
    converted; EXIF orientation applied).

    Raises:
        ImageFileError: missing, unreadable, not a regular file, empty, above the pixel limit,
            corrupt or truncated file.
    """
    path = Path(path)
    data = _read(path)
    try:
        image = decode_rgb(data)
        image.load()
        return image
    except ImageTooLarge as error:
        raise ImageFileError(path, error.reason) from None
    except UnidentifiedImageError:
        raise ImageFileError(path, "not a recognised image (corrupt or wrong format)") from None
    except _DECODE_ERRORS as error:
        raise ImageFileError(path, f"corrupt or truncated image ({error})") from None


def load_image_tensor(path: str | os.PathLike[str], transform: EvalTransform) -> Tensor:
    """``transform.image`` of a file: ``(3, S, S)`` float32.

    The bytes go straight to the transform, so large JPEGs use its reduced-size decoding.

    Raises:
        ImageFileError: missing, unreadable, empty, corrupt or truncated file.
    """
    path = Path(path)
    data = _read(path)
    try:
        return transform.image(data)
    except ImageTooLarge as error:
        raise ImageFileError(path, error.reason) from None
    except UnidentifiedImageError:
        raise ImageFileError(path, "not a recognised image (corrupt or wrong format)") from None
    except _DECODE_ERRORS as error:
        raise ImageFileError(path, f"corrupt or truncated image ({error})") from None


class ImageFileDataset(Dataset[tuple[int, Tensor]]):
    """Image files as a map-style dataset of ``(index, image (3, S, S))`` for a DataLoader.

    Args:
        paths: the image files.
        transform: e.g. :func:`eval_transform`.
    """

    def __init__(self, paths: Sequence[str | os.PathLike[str]], transform: EvalTransform) -> None:
        self.paths = [Path(p) for p in paths]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, Tensor]:
        return index, load_image_tensor(self.paths[index], self.transform)

    @staticmethod
    def collate(samples: Sequence[tuple[int, Tensor]]) -> tuple[Tensor, Tensor]:
        """``(indices (B,), images (B, 3, S, S))``."""
        indices = torch.tensor([index for index, _ in samples], dtype=torch.long)
        return indices, torch.stack([image for _, image in samples])


class LenientImageFileDataset(Dataset[tuple[int, Tensor | None, str | None]]):
    """:class:`ImageFileDataset` that yields ``(index, None, reason)`` for an unusable file
    instead of raising, so that one bad image does not stop a run.

    Args:
        paths: the image files.
        transform: e.g. :func:`eval_transform`.
    """

    def __init__(self, paths: Sequence[str | os.PathLike[str]], transform: EvalTransform) -> None:
        self.paths = [Path(p) for p in paths]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, Tensor | None, str | None]:
        try:
            return index, load_image_tensor(self.paths[index], self.transform), None
        except ImageFileError as error:
            return index, None, error.reason

    @staticmethod
    def collate(
        samples: Sequence[tuple[int, Tensor | None, str | None]],
    ) -> tuple[Tensor, Tensor | None, list[tuple[int, str]]]:
        """``(indices (B',), images (B', 3, S, S) or None if B' = 0, [(index, reason)])`` where
        ``B'`` counts the usable images of the batch."""
        good = [(index, image) for index, image, _ in samples if image is not None]
        failed = [(i, reason or "unreadable") for i, image, reason in samples if image is None]
        indices = torch.tensor([index for index, _ in good], dtype=torch.long)
        images = torch.stack([image for _, image in good]) if good else None
        return indices, images, failed
