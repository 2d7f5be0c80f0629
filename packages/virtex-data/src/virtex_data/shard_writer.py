"""Write WebDataset tar shards from any caption file that ``build-lmdb`` reads.

Each input image is checked and prepared exactly as ``build-lmdb`` does (the same worker code:
missing, corrupt, oversized or outside-the-folder images and images without a usable caption
are skipped; empty captions are dropped; captions are normalised; CMYK/16-bit/RGBA images are
converted and EXIF rotation applied), then written with ``webdataset.ShardWriter`` as::

    OUT/00000.tar   <key>.jpg|png  <key>.txt (first caption)  <key>.json
    OUT/00001.tar   ...
    OUT/manifest.json

``<key>`` is the record's position (``000000042``); the JSON holds ``image_id``, ``file_name``
and every caption (``captions``), so COCO's five captions per image survive. img2dataset's
shards have the same layout with one caption in ``.txt``; the reader accepts both.
"""

from __future__ import annotations

import datetime
import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from virtex_data.image_codec import max_image_pixels
from virtex_data.lmdb_format import decode_record
from virtex_data.lmdb_writer import BuildError, _outcomes, _record_or_skip
from virtex_data.normalize import NORMALIZATION_VERSION
from virtex_data.sources import read_captions

__all__ = ["MANIFEST_NAME", "ShardManifest", "build_shards"]

MANIFEST_NAME = "manifest.json"


@dataclass
class ShardManifest:
    """What ``build-shards`` wrote (``OUT/manifest.json``)."""

    count: int
    shards: list[str]
    counts: list[int]
    normalization_version: int
    skipped: list[dict[str, Any]] = field(default_factory=list)
    dropped_captions: list[dict[str, Any]] = field(default_factory=list)
    unknown_image_ids: list[int] = field(default_factory=list)
    converted: dict[str, int] = field(default_factory=dict)
    resized: int = 0
    sources: list[str] = field(default_factory=list)
    max_side: int | None = None
    created: str = ""

    @property
    def pattern(self) -> str:
        """The brace pattern of the shards (``{00000..00012}.tar``), relative to OUT."""
        if len(self.shards) == 1:
            return self.shards[0]
        first, last = Path(self.shards[0]).stem, Path(self.shards[-1]).stem
        return f"{{{first}..{last}}}.tar"


def build_shards(
    captions: str | os.PathLike[str],
    images: str | os.PathLike[str],
    output: str | os.PathLike[str],
    shard_size: int = 1000,
    workers: int = 1,
    max_side: int | None = None,
    strict: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    max_pixels: int | None = None,
) -> ShardManifest:
    """Write tar shards of ``shard_size`` samples from a caption file and an image folder.

    Args:
        captions: COCO captions JSON, JSONL or CSV (as ``build-lmdb``).
        images: the folder the caption file's image paths are relative to.
        output: folder to create (must be empty or absent unless ``overwrite``).
        shard_size: samples per shard (the last one may hold fewer).
        workers, max_side, strict, max_pixels: as :func:`virtex_data.lmdb_writer.build_lmdb`.
        overwrite: replace the ``*.tar`` files and manifest of a previous build in ``output``.
        progress: show a tqdm bar.

    Returns:
        The manifest that was written (last, after every shard is closed).

    Raises:
        FileExistsError: ``output`` holds files and ``overwrite`` is not set.
        BuildError: with ``strict``, the first bad input.
    """
    from webdataset import ShardWriter

    if shard_size < 1:
        raise ValueError(f"--shard-size must be at least 1, got {shard_size}")
    target = Path(output)
    if target.exists() and any(target.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{target} is not empty (pass --overwrite to replace it)")
        for old in [*target.glob("*.tar"), target / MANIFEST_NAME]:
            old.unlink(missing_ok=True)
        if any(target.iterdir()):
            raise FileExistsError(f"{target} holds files other than shards: choose another output")
    source = read_captions(captions)
    if strict and source.unknown_image_ids:
        raise BuildError(
            f"{captions}: captions reference unknown image ids {source.unknown_image_ids[:10]}"
        )
    image_dir = Path(images)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {image_dir}")
    target.mkdir(parents=True, exist_ok=True)
    jobs = [
        (item, str(image_dir), max_side, max_image_pixels(max_pixels)) for item in source.images
    ]
    skipped: list[dict[str, Any]] = []
    dropped: list[dict[str, Any]] = []
    converted: Counter[str] = Counter()
    resized = 0
    names: list[str] = []
    counts: list[int] = []
    written = 0
    writer = ShardWriter(str(target / "%05d.tar"), maxcount=shard_size, encoder=False, verbose=0)
    try:
        for outcome in tqdm(_outcomes(jobs, workers), total=len(jobs), disable=not progress):
            for count, reason in ((outcome.dropped, "empty"), (outcome.invalid, "not a string")):
                if count:
                    dropped.append({"image_id": outcome.image_id, "count": count, "reason": reason})
                    if strict:
                        raise BuildError(f"image {outcome.image_id}: caption {reason}")
            record_bytes = _record_or_skip(outcome, strict, skipped)
            if record_bytes is None:
                continue
            record = decode_record(record_bytes)
            meta = {
                "image_id": record.image_id,
                "file_name": record.file_name,
                "captions": record.captions,
            }
            extension = "jpg" if record.format == "jpeg" else record.format
            writer.write(
                {
                    "__key__": f"{written:09d}",
                    extension: record.image,
                    "txt": record.captions[0].encode("utf-8"),
                    "json": json.dumps(meta).encode("utf-8"),
                }
            )
            name = Path(str(writer.fname)).name  # ShardWriter moves to the next file by itself
            if not names or names[-1] != name:
                names.append(name)
                counts.append(0)
            counts[-1] += 1
            written += 1
            if outcome.converted_from:
                converted[outcome.converted_from] += 1
            resized += outcome.resized
    except BaseException:
        writer.close()
        raise
    writer.close()
    manifest = ShardManifest(
        count=written,
        shards=names,
        counts=counts,
        normalization_version=NORMALIZATION_VERSION,
        skipped=skipped,
        dropped_captions=dropped,
        unknown_image_ids=list(source.unknown_image_ids),
        converted=dict(converted),
        resized=resized,
        sources=[str(Path(captions).resolve()), str(image_dir.resolve())],
        max_side=max_side,
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )
    if not written:  # ShardWriter opened an empty first shard: no samples, no shard
        for empty in target.glob("*.tar"):
            empty.unlink()
    temporary = target / (MANIFEST_NAME + ".tmp")
    temporary.write_text(json.dumps(asdict(manifest), indent=1) + "\n", encoding="utf-8")
    os.replace(temporary, target / MANIFEST_NAME)
    return manifest


def read_shard_manifest(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``manifest.json`` of a ``build-shards`` folder, or ``None`` (img2dataset writes none)."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: unreadable manifest: {error}") from None
    return loaded if isinstance(loaded, dict) else None
