"""Reading image-caption pairs: COCO captions JSON, JSONL and CSV.

- COCO (``captions_train2017.json``): ``{"images": [{"id", "file_name", ...}],
  "annotations": [{"image_id", "caption", ...}]}``. Annotations whose ``image_id`` is not in
  ``images`` are collected in :attr:`CaptionSource.unknown_image_ids`.
- JSONL: one object per line with ``image`` (a path relative to the image folder) and
  ``caption``; optional integer ``image_id``.
- CSV: a header with ``image`` and ``caption`` columns (optional ``image_id``).

For JSONL and CSV, rows with the same ``image`` are one image; ids are assigned in order of first
appearance (starting at 0) unless an ``image_id`` column gives them.

A caption that is not a string (``null``, a number, a list) is not a caption: it is left out and
counted in :attr:`ImageCaptions.invalid_captions` (never stored as the text ``"none"``). Image
paths are relative to the image folder; :func:`image_path` refuses absolute paths and ``..``
escapes, so a caption file cannot make a reader embed files from elsewhere.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePath

__all__ = [
    "CaptionSource",
    "ImageCaptions",
    "OutsideImageFolder",
    "image_path",
    "iter_captions",
    "read_captions",
]


@dataclass
class ImageCaptions:
    """One image and its raw captions (not yet normalised)."""

    image_id: int
    file_name: str
    captions: list[str] = field(default_factory=list)
    #: Captions left out because they were not strings (``null``, numbers, lists).
    invalid_captions: int = 0

    def add(self, caption: object) -> None:
        """Keep ``caption`` if it is a string, else count it in :attr:`invalid_captions`."""
        if isinstance(caption, str):
            self.captions.append(caption)
        else:
            self.invalid_captions += 1


@dataclass
class CaptionSource:
    """The images of one caption file, in file order."""

    path: str
    images: list[ImageCaptions]
    unknown_image_ids: list[int] = field(default_factory=list)


class OutsideImageFolder(ValueError):
    """An image path from a caption file that is absolute or leaves the image folder."""


def image_path(folder: str | os.PathLike[str], name: str) -> Path:
    """``folder / name`` for a relative ``name`` that stays inside ``folder``.

    The check is on the path's text (``a/../b.jpg`` is fine, ``../b.jpg`` and ``/etc/x`` are
    not); symbolic links inside the folder are followed as usual (datasets are often assembled
    with them).

    Raises:
        OutsideImageFolder: an absolute path, a drive, or one that climbs out with ``..``.
    """
    text = str(name)
    pure = PurePath(text)
    normal = os.path.normpath(text) if text else text
    if (
        not text
        or pure.is_absolute()
        or pure.drive
        or text.startswith(("/", "\\"))
        or normal == ".."
        or normal.startswith(".." + os.sep)
        or normal.startswith("../")
    ):
        raise OutsideImageFolder(f"image path {text[:200]!r} is not inside the image folder")
    return Path(folder) / normal


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    if suffix == ".json":
        return "coco"
    raise ValueError(f"{path}: unknown caption file type {suffix!r} (use .json, .jsonl or .csv)")


def _read_coco(path: Path) -> CaptionSource:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON: {error}") from error
    for key in ("images", "annotations"):
        if key not in data:
            raise ValueError(f"{path}: COCO captions JSON has no {key!r} key")
    images: dict[int, ImageCaptions] = {}
    for n, image in enumerate(data["images"]):
        try:
            images[int(image["id"])] = ImageCaptions(int(image["id"]), str(image["file_name"]))
        except KeyError as error:
            raise ValueError(f"{path}: images[{n}] has no {error.args[0]!r}") from error
    unknown: list[int] = []
    for n, annotation in enumerate(data["annotations"]):
        try:
            image_id, caption = int(annotation["image_id"]), annotation["caption"]
        except KeyError as error:
            raise ValueError(f"{path}: annotations[{n}] has no {error.args[0]!r}") from error
        if image_id not in images:
            unknown.append(image_id)
            continue
        images[image_id].add(caption)
    return CaptionSource(str(path), list(images.values()), sorted(set(unknown)))


def _rows(path: Path, kind: str) -> Iterator[tuple[int, dict[str, str]]]:
    with path.open(encoding="utf-8", newline="") as handle:
        if kind == "csv":
            reader = csv.DictReader(handle)
            for n, row in enumerate(reader, start=2):
                yield n, row
        else:
            for n, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        yield n, json.loads(line)
                    except json.JSONDecodeError as error:
                        raise ValueError(f"{path}:{n}: not valid JSON: {error}") from error


def _read_pairs(path: Path, kind: str) -> CaptionSource:
    images: dict[str, ImageCaptions] = {}
    for line, row in _rows(path, kind):
        if "image" not in row or "caption" not in row:
            raise ValueError(f"{path}:{line}: needs 'image' and 'caption' fields, got {list(row)}")
        name = str(row["image"])
        if name not in images:
            given = row.get("image_id")
            image_id = int(given) if given not in (None, "") else len(images)
            images[name] = ImageCaptions(image_id, name)
        images[name].add(row["caption"])
    return CaptionSource(str(path), list(images.values()))


def read_captions(path: str | os.PathLike[str]) -> CaptionSource:
    """Read one caption file (COCO JSON, JSONL or CSV, by its suffix).

    Raises:
        ValueError: naming the file (and line or record) when it cannot be read.
    """
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"caption file not found: {source}")
    kind = _kind(source)
    return _read_coco(source) if kind == "coco" else _read_pairs(source, kind)


def iter_captions(paths: list[str] | list[Path]) -> Iterator[str]:
    """Every raw caption of every file, for vocabulary training."""
    for path in paths:
        for image in read_captions(path).images:
            yield from image.captions
