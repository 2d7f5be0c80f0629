"""The LMDB file format (version 1): msgpack records, never pickles.

One LMDB file (``subdir=False``). Keys are ASCII:

- ``b"__manifest__"``: a msgpack map (see :class:`Manifest`): ``format`` (``"virtex-lmdb"``),
  ``format_version`` (1), ``normalization_version``, ``count``, ``image_ids`` (by index),
  ``skipped`` (``[{"image_id", "file", "reason"}]``), ``dropped_captions`` (empty captions),
  ``unknown_image_ids`` (caption annotations naming no image), ``oriented`` (images turned
  upright from their EXIF orientation), ``sources``, ``max_side``,
  ``tokenizer_sha256``, ``created`` (UTC ISO time), ``complete`` (true).
  It is written in the last transaction: a file without it is incomplete.
- ``b"%010d" % index`` for ``index in range(count)``: a msgpack map ``{"id": int,
  "file": str, "image": bytes (encoded JPEG/PNG, RGB), "format": "jpeg"|"png",
  "width": int, "height": int, "captions": [str, ...] (normalised, non-empty)}``.

One record per image, captions included: a training sample costs exactly one read.
:func:`decode_record` checks every field's type (and that there is at least one caption), so a
malformed or hostile record gives :class:`LmdbFormatError`, never another exception.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MANIFEST_KEY",
    "ImageRecord",
    "LmdbFormatError",
    "Manifest",
    "decode_record",
    "encode_record",
    "record_key",
]

FORMAT_NAME = "virtex-lmdb"
FORMAT_VERSION = 1
MANIFEST_KEY = b"__manifest__"


class LmdbFormatError(ValueError):
    """An LMDB file or record this reader cannot use (message names the file and the problem)."""


def record_key(index: int) -> bytes:
    """Key of the ``index``-th record."""
    return b"%010d" % index


@dataclass(frozen=True)
class ImageRecord:
    """One image with its captions, as stored."""

    image_id: int
    file_name: str
    image: bytes
    format: str
    width: int
    height: int
    captions: list[str]


def encode_record(record: ImageRecord) -> bytes:
    """msgpack bytes of a record."""
    return bytes(
        msgpack.packb(
            {
                "id": record.image_id,
                "file": record.file_name,
                "image": record.image,
                "format": record.format,
                "width": record.width,
                "height": record.height,
                "captions": list(record.captions),
            },
            use_bin_type=True,
        )
    )


_RECORD_TYPES: dict[str, type | tuple[type, ...]] = {
    "id": int,
    "file": str,
    "image": bytes,
    "format": str,
    "width": int,
    "height": int,
    "captions": list,
}


def decode_record(data: bytes) -> ImageRecord:
    """Parse and check a record.

    Raises:
        LmdbFormatError: not msgpack, not a map, a missing or mistyped field, a format other
            than jpeg/png, a size below 1, no captions or a non-string caption (the caller adds
            the file and the index to the message).
    """
    try:
        value = msgpack.unpackb(data, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as error:
        # ValueError covers msgpack's ExtraData, FormatError, StackError and bad UTF-8.
        raise LmdbFormatError(f"malformed record: not msgpack ({type(error).__name__})") from None
    if not isinstance(value, dict):
        raise LmdbFormatError(f"malformed record: a {type(value).__name__}, not a map")
    for key, kind in _RECORD_TYPES.items():
        if key not in value:
            raise LmdbFormatError(f"malformed record: no {key!r} field")
        field_value = value[key]
        # bool is an int to Python, never a valid id or size here.
        if not isinstance(field_value, kind) or isinstance(field_value, bool):
            raise LmdbFormatError(
                f"malformed record: {key!r} is a {type(field_value).__name__}, not a "
                f"{kind.__name__ if isinstance(kind, type) else kind}"
            )
    if value["format"] not in ("jpeg", "png"):
        raise LmdbFormatError(f"malformed record: format {value['format'][:20]!r}")
    if value["width"] < 1 or value["height"] < 1:
        raise LmdbFormatError(f"malformed record: size {value['width']}x{value['height']}")
    captions = value["captions"]
    if not captions:
        raise LmdbFormatError("malformed record: no captions")
    if not all(isinstance(c, str) for c in captions):
        raise LmdbFormatError("malformed record: a caption that is not a string")
    return ImageRecord(
        image_id=value["id"],
        file_name=value["file"],
        image=value["image"],
        format=value["format"],
        width=value["width"],
        height=value["height"],
        captions=list(captions),
    )


@dataclass
class Manifest:
    """What an LMDB file holds and how it was made."""

    count: int
    image_ids: list[int]
    normalization_version: int
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    skipped: list[dict[str, Any]] = field(default_factory=list)
    dropped_captions: list[dict[str, Any]] = field(default_factory=list)
    unknown_image_ids: list[int] = field(default_factory=list)
    converted: dict[str, int] = field(default_factory=dict)
    resized: int = 0
    oriented: int = 0
    sources: list[str] = field(default_factory=list)
    max_side: int | None = None
    tokenizer_sha256: str | None = None
    created: str = ""
    complete: bool = True

    def to_bytes(self) -> bytes:
        return bytes(msgpack.packb(self.__dict__, use_bin_type=True))

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        value = msgpack.unpackb(data, raw=False, strict_map_key=False)
        if not isinstance(value, dict):
            raise ValueError("manifest is not a map")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in value.items() if k in known})
