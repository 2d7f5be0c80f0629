"""The LMDB file format (version 1): msgpack records, never pickles.

One LMDB file (``subdir=False``). Keys are ASCII:

- ``b"__manifest__"``: a msgpack map (see :class:`Manifest`): ``format`` (``"virtex-lmdb"``),
  ``format_version`` (1), ``normalization_version``, ``count``, ``image_ids`` (by index),
  ``skipped`` (``[{"image_id", "file", "reason"}]``), ``dropped_captions`` (empty captions),
  ``unknown_image_ids`` (caption annotations naming no image), ``sources``, ``max_side``,
  ``tokenizer_sha256``, ``created`` (UTC ISO time), ``complete`` (true).
  It is written in the last transaction: a file without it is incomplete.
- ``b"%010d" % index`` for ``index in range(count)``: a msgpack map ``{"id": int,
  "file": str, "image": bytes (encoded JPEG/PNG, RGB), "format": "jpeg"|"png",
  "width": int, "height": int, "captions": [str, ...] (normalised, non-empty)}``.

One record per image, captions included: a training sample costs exactly one read.
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
    "Manifest",
    "decode_record",
    "encode_record",
    "record_key",
]

FORMAT_NAME = "virtex-lmdb"
FORMAT_VERSION = 1
MANIFEST_KEY = b"__manifest__"


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


def decode_record(data: bytes) -> ImageRecord:
    """Parse a record; raises ``ValueError`` (the caller adds file and key to the message)."""
    try:
        value = msgpack.unpackb(data, raw=False)
        return ImageRecord(
            image_id=int(value["id"]),
            file_name=str(value["file"]),
            image=bytes(value["image"]),
            format=str(value["format"]),
            width=int(value["width"]),
            height=int(value["height"]),
            captions=[str(c) for c in value["captions"]],
        )
    except (KeyError, TypeError, ValueError, msgpack.UnpackException) as error:
        raise ValueError(f"malformed record: {error!r}") from error


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
