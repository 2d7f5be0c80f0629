"""Convert a caption file + image folder into one LMDB file (format: :mod:`lmdb_format`).

Images are read, validated and (if needed) converted in worker processes; the parent writes
records in input order. The file is built as ``OUT.partial`` and renamed to ``OUT`` only after
the manifest (written last) is committed and synced, so a reader never sees half a file under the
final name.

Bad inputs are skipped and listed in the manifest (``skipped``: missing, unreadable, not a regular
file, above the pixel limit, corrupt, a path outside the image folder, no usable caption) or
counted (``dropped_captions``: empty captions and captions that are not strings); ``strict=True``
stops at the first instead.
"""

from __future__ import annotations

import contextlib
import datetime
import multiprocessing
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb
from tqdm import tqdm

from virtex_data.image_codec import SkippedImage, max_image_pixels, prepare_image
from virtex_data.lmdb_format import (
    MANIFEST_KEY,
    ImageRecord,
    Manifest,
    encode_record,
    record_key,
)
from virtex_data.normalize import NORMALIZATION_VERSION, normalize_caption
from virtex_data.sources import (
    CaptionSource,
    ImageCaptions,
    OutsideImageFolder,
    image_path,
    read_captions,
)

__all__ = ["PARTIAL_SUFFIX", "BuildError", "build_lmdb"]

PARTIAL_SUFFIX = ".partial"
_COMMIT_EVERY = 256


class BuildError(Exception):
    """A bad input under ``strict=True`` (the message names the image and the reason)."""


@dataclass
class _Outcome:
    image_id: int
    file_name: str
    record: bytes | None
    reason: str | None
    dropped: int
    converted_from: str | None
    resized: bool
    invalid: int = 0  # captions that were not strings
    oriented: bool = False


_Job = tuple[ImageCaptions, str, int | None, int]


def _process(job: _Job) -> _Outcome:
    item, image_dir, max_side, max_pixels = job
    captions = [normalize_caption(c) for c in item.captions]
    kept = [c for c in captions if c]
    dropped = len(captions) - len(kept)
    invalid = item.invalid_captions

    def skip(reason: str) -> _Outcome:
        return _Outcome(
            item.image_id, item.file_name, None, reason, dropped, None, False, invalid=invalid
        )

    if not item.captions:
        return skip("no captions" if not invalid else "no captions that are strings")
    if not kept:
        return skip("only empty captions")
    try:
        prepared = prepare_image(image_path(image_dir, item.file_name), max_side, max_pixels)
    except OutsideImageFolder as error:
        return skip(str(error))
    except SkippedImage as skipped:
        return skip(skipped.reason)
    record = ImageRecord(
        item.image_id,
        item.file_name,
        prepared.data,
        prepared.format,
        prepared.width,
        prepared.height,
        kept,
    )
    return _Outcome(
        item.image_id,
        item.file_name,
        encode_record(record),
        None,
        dropped,
        prepared.converted_from,
        prepared.resized,
        invalid=invalid,
        oriented=prepared.oriented,
    )


def _outcomes(jobs: list[_Job], workers: int) -> Iterator[_Outcome]:
    if workers <= 1:
        yield from map(_process, jobs)
        return
    context = multiprocessing.get_context("fork" if os.name != "nt" else "spawn")
    with context.Pool(workers) as pool:
        yield from pool.imap(_process, jobs, chunksize=16)


def _record_or_skip(outcome: _Outcome, strict: bool, skipped: list[dict[str, Any]]) -> bytes | None:
    """``outcome``'s record, or ``None`` when its image has none: it is then noted in
    ``skipped`` (``strict``: a :class:`BuildError` instead). Shared by the LMDB and the shard
    writers."""
    if outcome.record is not None:
        return outcome.record
    if strict:
        raise BuildError(f"image {outcome.image_id} ({outcome.file_name}): {outcome.reason}")
    skipped.append(
        {"image_id": outcome.image_id, "file": outcome.file_name, "reason": outcome.reason}
    )
    return None


def _map_size(source: CaptionSource, image_dir: Path) -> int:
    total = 0
    for item in source.images:
        with contextlib.suppress(OSError, OutsideImageFolder):
            total += image_path(image_dir, item.file_name).stat().st_size
    # Re-encoding (PNG of a converted JPEG) can grow an image; LMDB's map is sparse, so a generous
    # upper bound costs nothing on disk.
    return max(64 << 20, 4 * total + 1024 * len(source.images) + (64 << 20))


def build_lmdb(
    captions: str | os.PathLike[str],
    images: str | os.PathLike[str],
    output: str | os.PathLike[str],
    workers: int = 1,
    max_side: int | None = None,
    strict: bool = False,
    tokenizer_sha256: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    max_pixels: int | None = None,
) -> Manifest:
    """Write one LMDB file from a caption file (COCO JSON, JSONL or CSV) and an image folder.

    Args:
        captions: the caption file; image paths in it are relative to ``images``.
        images: the image folder.
        output: the LMDB file to create.
        workers: processes that read and convert images.
        max_side: cap on the longer image side (re-encodes larger images as JPEG).
        strict: raise :class:`BuildError` on the first bad input instead of skipping it.
        tokenizer_sha256: recorded in the manifest when given.
        overwrite: replace an existing ``output``.
        progress: show a tqdm bar.
        max_pixels: images with more pixels are skipped (default
            :func:`virtex_data.image_codec.max_image_pixels`: ``$VIRTEX_MAX_IMAGE_PIXELS`` or
            Pillow's 89,478,485).

    Returns:
        The manifest that was written.
    """
    target = Path(output)
    partial = target.with_name(target.name + PARTIAL_SUFFIX)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists (pass overwrite=True / --overwrite to replace)")
    source = read_captions(captions)
    if strict and source.unknown_image_ids:
        raise BuildError(
            f"{captions}: captions reference unknown image ids "
            f"{source.unknown_image_ids[:10]} ({len(source.unknown_image_ids)} in all)"
        )
    image_dir = Path(images)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {image_dir}")
    for stale in (partial, Path(str(partial) + "-lock")):
        stale.unlink(missing_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    env = lmdb.open(
        str(partial),
        subdir=False,
        map_size=_map_size(source, image_dir),
        readahead=False,
        meminit=False,
    )
    image_ids: list[int] = []
    skipped: list[dict[str, Any]] = []
    dropped: list[dict[str, Any]] = []
    converted: Counter[str] = Counter()
    resized = oriented = 0
    pixel_limit = max_image_pixels(max_pixels)
    jobs = [(item, str(image_dir), max_side, pixel_limit) for item in source.images]
    try:
        txn = env.begin(write=True)
        bar = tqdm(
            _outcomes(jobs, workers),
            total=len(jobs),
            desc=f"lmdb {target.name}",
            disable=not progress,
            unit="img",
        )
        for outcome in bar:
            if outcome.dropped:
                dropped.append(
                    {"image_id": outcome.image_id, "count": outcome.dropped, "reason": "empty"}
                )
                if strict:
                    raise BuildError(
                        f"image {outcome.image_id} ({outcome.file_name}): empty caption"
                    )
            if outcome.invalid:
                dropped.append(
                    {
                        "image_id": outcome.image_id,
                        "count": outcome.invalid,
                        "reason": "not a string",
                    }
                )
                if strict:
                    raise BuildError(
                        f"image {outcome.image_id} ({outcome.file_name}): a caption that is "
                        "not a string (null, number or list)"
                    )
            record_bytes = _record_or_skip(outcome, strict, skipped)
            if record_bytes is None:
                continue
            txn.put(record_key(len(image_ids)), record_bytes)
            image_ids.append(outcome.image_id)
            if outcome.converted_from:
                converted[outcome.converted_from] += 1
            resized += outcome.resized
            oriented += outcome.oriented
            if len(image_ids) % _COMMIT_EVERY == 0:
                txn.commit()
                txn = env.begin(write=True)
        bar.close()
        manifest = Manifest(
            count=len(image_ids),
            image_ids=image_ids,
            normalization_version=NORMALIZATION_VERSION,
            skipped=skipped,
            dropped_captions=dropped,
            unknown_image_ids=list(source.unknown_image_ids),
            converted=dict(converted),
            resized=resized,
            oriented=oriented,
            sources=[str(Path(captions).resolve()), str(image_dir.resolve())],
            max_side=max_side,
            tokenizer_sha256=tokenizer_sha256,
            created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        )
        txn.put(MANIFEST_KEY, manifest.to_bytes())
        txn.commit()
        env.sync(True)
    except BaseException:
        env.close()
        partial.unlink(missing_ok=True)
        Path(str(partial) + "-lock").unlink(missing_ok=True)
        raise
    env.close()
    if target.exists():
        target.unlink()
    os.replace(partial, target)
    Path(str(partial) + "-lock").unlink(missing_ok=True)
    return manifest
