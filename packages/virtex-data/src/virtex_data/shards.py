"""Streaming image-caption pairs from WebDataset tar shards (img2dataset's output format).

A shard is a tar file of samples ``<key>.jpg`` (or ``.jpeg``/``.png``/``.webp``) + ``<key>.txt``
(the caption) + optional ``<key>.json``; ``virtex-data build-shards`` and img2dataset's
``--output_format webdataset`` write them. The tar format is read by the ``webdataset`` library
(``tar_file_iterator`` + ``group_by_keys``); this module decides which shards a process reads and
keeps the resume state.

Which samples a process sees (epoch ``e``, ``R`` ranks, ``W`` DataLoader workers per rank):

1. the shard list is permuted with ``seed + e`` (the same permutation on every rank);
2. rank ``r`` owns ``order[r::R]``; shards it has already finished in this epoch (after a
   resume) are removed;
3. worker ``w`` reads the rest's ``[w::W]``, one shard after the other, through a shuffle
   buffer seeded with ``(seed, e, r, w)``.

So every sample is served once per epoch (ranks and workers never share a shard), up to the
samples DataLoader's ``drop_last`` leaves out at the end of each worker's epoch (fewer than one
batch per worker, as the LMDB path drops the tail of its index list).

Each sample is turned into a :class:`virtex_data.datasets.Sample` by the SAME dataset class as the
LMDB path (captioning, masked_lm, token_classification), so transforms, the left/right swap on
flips, tokenisation, masking and batch classes are identical. Captions are normalised with
:func:`virtex_data.normalize.normalize_caption` when read (img2dataset stores raw text).

Bad samples are skipped, counted and logged (logger ``virtex_data.shards``), as ``build-lmdb``
skips them: an image that does not decode, a sample without an image member, a caption that is
empty after normalisation or not UTF-8. A shard that cannot be opened or is truncated ends there
(the samples read before the damage are kept) and is named in the log.

Resume (what is guaranteed): :class:`ShardProgress` records, per rank, the shards whose samples
have ALL been handed to the trainer in the current epoch ("completed") and how many samples of
each other opened shard were consumed ("in flight"). A resumed run re-reads this epoch's shards
that are not completed: no sample is skipped, and the samples repeated are exactly those already
consumed from the shards in flight at the checkpoint (the resume message lists them with their
counts). The order of samples, augmentations and shuffle-buffer draws after a resume are not the
same as in an uninterrupted run (the LMDB path is bit-exact; this one is not). A resume needs the
same shard list, seed and world size; the number of DataLoader workers may change.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import tarfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import IterableDataset, get_worker_info

from virtex_data.batch import CaptionBatch
from virtex_data.config import DataConfig
from virtex_data.datasets import (
    CaptioningDataset,
    Sample,
)
from virtex_data.lmdb_format import ImageRecord
from virtex_data.normalize import normalize_caption
from virtex_data.targets import TARGETS, get_target
from virtex_data.tokenizer import CaptionTokenizer
from virtex_data.transforms import TrainTransform

__all__ = [
    "IMAGE_EXTENSIONS",
    "ShardBatch",
    "ShardCaptionDataset",
    "ShardItem",
    "ShardLoader",
    "ShardProgress",
    "build_shard_dataset",
    "expand_shards",
    "image_id_of",
    "read_shard",
]

logger = logging.getLogger("virtex_data.shards")

#: Image members a sample may hold, in order of preference.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
#: How many skip notes the main process keeps for its summary (all are counted and logged).
KEEP_NOTES = 20
_REMOTE = ("http://", "https://", "s3://", "gs://", "pipe:", "ais://", "hf://")


def expand_shards(spec: str | Sequence[str]) -> list[str]:
    """Expand a shard specification into a list of local paths.

    Args:
        spec: ``"data/{00000..00099}.tar"`` (brace expansion, zero padding kept), several such
            patterns joined by ``::`` (webdataset's convention) or a list of patterns; a folder
            stands for its ``*.tar`` files in name order.

    Returns:
        Paths in the given order, duplicates removed.

    Raises:
        ValueError: an empty specification, no shard, or a remote URL (only local or mounted
            paths are read).
    """
    from braceexpand import braceexpand

    patterns = [spec] if isinstance(spec, str) else list(spec)
    parts = [p.strip() for pattern in patterns for p in str(pattern).split("::") if p.strip()]
    if not parts:
        raise ValueError("shard list is empty: give a path such as data/{00000..00099}.tar")
    paths: list[str] = []
    for part in parts:
        if part.startswith(_REMOTE):
            raise ValueError(
                f"shard {part[:200]!r}: only local or mounted paths are read (copy or mount the "
                "shards first)"
            )
        if Path(part).is_dir():
            paths.extend(str(p) for p in sorted(Path(part).glob("*.tar")))
        else:
            paths.extend(braceexpand(part))
    unique = list(dict.fromkeys(paths))
    if not unique:
        raise ValueError(f"no shards in {patterns!r}")
    return unique


def shards_fingerprint(paths: Sequence[str]) -> str:
    """sha256 of the shard names (a resume must read the same list)."""
    return hashlib.sha256("\n".join(paths).encode("utf-8")).hexdigest()


def image_id_of(key: str, meta: dict[str, Any] | None) -> int:
    """Integer id of a sample: ``image_id`` of its JSON, else the key if it is all digits
    (img2dataset's keys), else the first 63 bits of the key's blake2b hash."""
    if meta is not None:
        given = meta.get("image_id")
        if isinstance(given, int) and not isinstance(given, bool):
            return given
    if key.isdigit():
        return int(key)
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def describe(error: BaseException) -> str:
    """``Type: message`` of a shard read error, without the stream repr webdataset appends."""
    text = str(error).split(" @ <", 1)[0]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


@dataclass
class RawSample:
    """One grouped sample of a shard, before decoding."""

    key: str
    members: dict[str, bytes]


def read_shard(path: str) -> Iterator[RawSample]:
    """The samples of one shard in file order (webdataset's tar reader and key grouping).

    Raises:
        OSError, tarfile.TarError, ValueError: the shard cannot be read (from where it fails).
    """
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    errors: list[BaseException] = []

    def files(stream: Any) -> Iterator[dict[str, Any]]:
        # A damaged tar ends the file list here, so that the sample grouped so far is still
        # yielded (complete or not: an incomplete one is then skipped as such).
        try:
            for member in tar_file_iterator(stream):
                yield {**member, "__url__": path}
        except (OSError, EOFError, tarfile.TarError, ValueError) as error:
            errors.append(error)

    with open(path, "rb") as stream:
        for grouped in group_by_keys(files(stream)):
            members = {k: v for k, v in grouped.items() if not k.startswith("__")}
            yield RawSample(str(grouped["__key__"]), members)
    if errors:
        raise errors[0]


@dataclass
class Decoded:
    """A raw sample turned into what the LMDB datasets read, or the reason it is skipped."""

    record: ImageRecord | None
    reason: str | None = None


def decode_sample(raw: RawSample) -> Decoded:
    """Image bytes and normalised captions of a raw sample (no image decoding yet).

    Captions: the ``captions`` list of the JSON member if there is one (``build-shards``), else
    the ``txt`` member (img2dataset). Empty captions after normalisation are dropped.
    """
    extension = next((e for e in IMAGE_EXTENSIONS if e in raw.members), None)
    if extension is None:
        return Decoded(None, f"no image member (.{'/.'.join(IMAGE_EXTENSIONS)})")
    meta: dict[str, Any] | None = None
    if "json" in raw.members:
        try:
            loaded = json.loads(raw.members["json"].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            loaded = None  # img2dataset's metadata only: the caption is in .txt
        meta = loaded if isinstance(loaded, dict) else None
    texts: list[str] = []
    if meta is not None and isinstance(meta.get("captions"), list):
        texts = [c for c in meta["captions"] if isinstance(c, str)]
    elif "txt" in raw.members:
        try:
            texts = [raw.members["txt"].decode("utf-8")]
        except UnicodeDecodeError as error:
            return Decoded(None, f"caption is not UTF-8 text (byte {error.start})")
    captions = [c for c in (normalize_caption(t) for t in texts) if c]
    if not captions:
        return Decoded(None, "empty caption" if texts else "no caption (.txt or .json)")
    record = ImageRecord(
        image_id=image_id_of(raw.key, meta),
        file_name=raw.key,
        image=raw.members[extension],
        format="jpeg" if extension in ("jpg", "jpeg") else extension,
        width=0,  # unknown until decoded; the datasets read the bytes only
        height=0,
        captions=captions,
    )
    return Decoded(record)


class _OneRecord:
    """A one-record stand-in for :class:`LmdbReader`: lets the LMDB dataset classes turn a
    streamed record into a sample with exactly their code (caption choice, transform,
    tokenisation, per-target labels)."""

    def __init__(self) -> None:
        self.path = ""
        self.record: ImageRecord | None = None
        self.image_ids: list[int] = []

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> ImageRecord:
        assert self.record is not None
        return self.record


@dataclass
class ShardItem:
    """What a worker yields: a sample with where it came from and what happened meanwhile.

    Attributes:
        sample: the dataset sample.
        shard: index of its shard in the expanded list.
        completed: shards whose last sample left this worker with (or before) this one.
        skipped: ``"<shard>: <key>: <reason>"`` of samples skipped since the previous item.
    """

    sample: Sample
    shard: int
    completed: tuple[int, ...] = ()
    skipped: tuple[str, ...] = ()


@dataclass
class ShardBatch:
    """A collated batch plus its shard bookkeeping (unwrapped by :class:`ShardLoader`)."""

    batch: CaptionBatch
    shards: list[int]
    completed: list[int] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def pin_memory(self) -> ShardBatch:
        """Pin the batch's tensors (``DataLoader(pin_memory=True)`` calls it)."""
        return ShardBatch(self.batch.pin_memory(), self.shards, self.completed, self.skipped)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ShardProgress:
    """Epoch and per-rank shard bookkeeping; the trainer treats it like a sampler.

    ``set_epoch``/``epoch``/``advance``/``state_dict``/``load_state_dict`` are what
    :class:`virtex_train.trainer.Trainer` calls on its sampler. :class:`ShardLoader` reports every
    batch handed to the trainer with :meth:`record`.

    Args:
        shards: the expanded shard list.
        seed: shuffling seed (same on every rank).
        rank, world_size: default from ``torch.distributed`` if initialised, else 0 and 1.
    """

    def __init__(
        self,
        shards: Sequence[str],
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        default_rank, default_world = _world()
        self.shards = list(shards)
        self.seed = seed
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} must be in [0, {self.world_size})")
        self.fingerprint = shards_fingerprint(self.shards)
        self.epoch = 0
        self.completed: set[int] = set()
        self.consumed: Counter[int] = Counter()  # samples per shard handed over this epoch
        self.samples = 0  # samples handed to the trainer by this rank, all epochs
        self.skipped = 0
        self.notes: list[str] = []
        #: ``{shard path: samples already consumed}`` of a resumed checkpoint's shards in flight.
        self.resumed_in_flight: dict[str, int] = {}

    # --------------------------------------------------------------- sampler interface
    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` (forgets which shards were completed in the previous one)."""
        if epoch != self.epoch:
            self.completed = set()
            self.consumed = Counter()
        self.epoch = epoch

    def advance(self, samples: int) -> None:
        """Nothing to do: :meth:`record` already counted what the trainer consumed."""

    def record(self, batch: ShardBatch) -> None:
        """Note a batch handed to the trainer: its samples, finished shards and skips."""
        self.consumed.update(batch.shards)
        self.samples += len(batch.shards)
        self.completed.update(batch.completed)
        self.skipped += len(batch.skipped)
        room = KEEP_NOTES - len(self.notes)
        if room > 0:
            self.notes.extend(batch.skipped[:room])

    def rank_shards(self, epoch: int | None = None) -> list[int]:
        """Indices of the shards this rank owns in ``epoch`` (default: the current one)."""
        generator = torch.Generator().manual_seed(
            self.seed + (self.epoch if epoch is None else epoch)
        )
        order = torch.randperm(len(self.shards), generator=generator).tolist()
        return order[self.rank :: self.world_size]

    def in_flight(self) -> dict[str, int]:
        """``{shard path: samples consumed}`` of shards opened but not completed this epoch."""
        return {
            self.shards[s]: n for s, n in sorted(self.consumed.items()) if s not in self.completed
        }

    def _local_state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "completed": sorted(self.completed),
            "in_flight": [
                [s, n] for s, n in sorted(self.consumed.items()) if s not in self.completed
            ],
            "samples": self.samples,
            "skipped": self.skipped,
        }

    def state_dict(self) -> dict[str, Any]:
        """Every rank's position (gathered: every rank must call it under ``torch.distributed``).

        ``{"kind": "shards", "num_shards", "fingerprint", "seed", "world_size", "ranks": [{"epoch",
        "completed", "in_flight": [[shard, consumed]], "samples", "skipped"}]}``.
        """
        local = self._local_state()
        ranks: list[Any] = [local]
        if self.world_size > 1 and dist.is_available() and dist.is_initialized():
            ranks = [None] * self.world_size
            dist.all_gather_object(ranks, local)
        return {
            "kind": "shards",
            "num_shards": len(self.shards),
            "fingerprint": self.fingerprint,
            "seed": self.seed,
            "world_size": self.world_size,
            "ranks": ranks,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue this rank's recorded epoch without its completed shards.

        Raises:
            ValueError: the state is not a shard state, or the shard list, seed or world size
                differ (the recorded shards would then be other shards).
        """
        if state.get("kind") != "shards":
            raise ValueError(
                "the checkpoint's data state is not a shard state (it was trained from an LMDB "
                "file): resume with data.train_lmdb, or start a new output directory"
            )
        if state["num_shards"] != len(self.shards) or state["fingerprint"] != self.fingerprint:
            raise ValueError(
                f"the checkpoint was trained on another shard list ({state['num_shards']} shards, "
                f"now {len(self.shards)}): resume with the same data.train_shards"
            )
        for key, mine in (("seed", self.seed), ("world_size", self.world_size)):
            if state[key] != mine:
                raise ValueError(
                    f"shard state has {key}={state[key]!r} but this run has {mine!r} (shards are "
                    "assigned by seed and world size)"
                )
        local = state["ranks"][self.rank]
        self.epoch = int(local["epoch"])
        self.completed = {int(s) for s in local["completed"]}
        self.consumed = Counter()
        self.samples = int(local["samples"])
        self.skipped = int(local["skipped"])
        self.resumed_in_flight = {self.shards[int(s)]: int(n) for s, n in local["in_flight"]}

    def describe_resume(self) -> str:
        """One paragraph on what a resume re-reads (for the run's log)."""
        owned = len(self.rank_shards())
        done = len(self.completed)
        text = (
            f"shards: rank {self.rank} resumes epoch {self.epoch}: {done} of its {owned} "
            "shards done"
        )
        if self.resumed_in_flight:
            total = sum(self.resumed_in_flight.values())
            listed = ", ".join(f"{Path(p).name} ({n})" for p, n in self.resumed_in_flight.items())
            text += (
                f"; re-reading {len(self.resumed_in_flight)} shard(s) that were in flight, whose "
                f"{total} already-trained sample(s) repeat: {listed}"
            )
        return text


class ShardCaptionDataset(IterableDataset[ShardItem]):
    """Samples of WebDataset shards for one caption target (see the module docstring).

    Args:
        shards: expanded shard paths (:func:`expand_shards`).
        inner: an LMDB dataset class instance built over a :class:`_OneRecord` (see
            :func:`build_shard_dataset`); it turns records into samples and collates them.
        progress: the shared bookkeeping; its epoch, rank and completed shards decide what is
            read.
        shuffle_buffer: samples held for shuffling per worker (``<= 1``: file order).
    """

    def __init__(
        self,
        shards: Sequence[str],
        inner: CaptioningDataset,
        progress: ShardProgress,
        shuffle_buffer: int = 1000,
    ) -> None:
        self.shards = list(shards)
        self.inner = inner
        self.progress = progress
        self.shuffle_buffer = shuffle_buffer
        self.num_classes: int | None = None

    def worker_shards(self) -> list[int]:
        """The shards the calling process (rank and DataLoader worker) reads, in order."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        remaining = [s for s in self.progress.rank_shards() if s not in self.progress.completed]
        return remaining[worker::workers]

    def _rng(self) -> random.Random:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        p = self.progress
        return random.Random(f"{p.seed}/{p.epoch}/{p.rank}/{worker}/{len(p.completed)}")

    def _records(self, shard: int, skipped: list[str]) -> Iterator[ImageRecord]:
        """The usable records of one shard (image still encoded), noting what is skipped."""
        path = self.shards[shard]
        count = 0
        try:
            for raw in read_shard(path):
                decoded = decode_sample(raw)
                if decoded.record is None:
                    skipped.append(self._skip(path, raw.key, decoded.reason or "unreadable"))
                    continue
                count += 1
                yield decoded.record
        except (OSError, EOFError, tarfile.TarError, ValueError) as error:
            # A missing or damaged shard must not end the epoch: what was read is kept.
            skipped.append(
                self._skip(
                    path, "-", f"shard unreadable after {count} sample(s): {describe(error)}"
                )
            )

    def _sample(self, record: ImageRecord, path: str, skipped: list[str]) -> Sample | None:
        """The LMDB dataset's sample of a record, or ``None`` (noted) if its image is bad."""
        slot = self.inner.reader
        assert isinstance(slot, _OneRecord)
        slot.path, slot.record = path, record
        try:
            return self.inner[0]
        except ValueError as error:  # undecodable image (the dataset wraps PIL's error)
            reason = str(error.__cause__ or error)
            skipped.append(self._skip(path, record.file_name, f"unreadable image: {reason}"))
            return None

    @staticmethod
    def _skip(path: str, key: str, reason: str) -> str:
        note = f"{path}: {key}: {reason}"
        logger.warning("skipped %s", note)
        return note

    def __iter__(self) -> Iterator[ShardItem]:
        # The buffer holds encoded records (tens of KB each), not decoded (3, S, S) tensors
        # (600 KB at 224 px): images are decoded and augmented when they leave it.
        rng = self._rng()
        size = max(1, self.shuffle_buffer)
        buffer: list[tuple[ImageRecord, int]] = []
        outstanding: Counter[int] = Counter()  # records of a shard read but not yet taken
        finished: set[int] = set()  # shards read to the end
        done: list[int] = []  # completed shards not yet reported
        skipped: list[str] = []

        def take(keep: int) -> ShardItem | None:
            """A random usable sample of the buffer, leaving at least ``keep`` records."""
            while len(buffer) > keep:
                index = rng.randrange(len(buffer)) if size > 1 else 0
                record, shard = buffer[index]
                buffer[index] = buffer[-1]
                buffer.pop()
                outstanding[shard] -= 1
                if shard in finished and outstanding[shard] == 0:
                    done.append(shard)
                sample = self._sample(record, self.shards[shard], skipped)
                if sample is None:
                    continue
                item = ShardItem(sample, shard, tuple(done), tuple(skipped))
                done.clear()
                skipped.clear()
                return item
            return None

        for shard in self.worker_shards():
            for record in self._records(shard, skipped):
                buffer.append((record, shard))
                outstanding[shard] += 1
                # take() leaves ``size`` (>= 1) records: one is always held back until the end,
                # so that what happens after the last read (a damaged shard's note, an empty
                # shard's completion) still travels with a sample.
                item = take(keep=size)
                if item is not None:
                    yield item
            finished.add(shard)
            if outstanding[shard] == 0:  # nothing usable in it: reported with the next sample
                done.append(shard)
        while buffer:
            item = take(keep=0)
            if item is not None:
                yield item

    def collate(self, items: Sequence[ShardItem]) -> ShardBatch:
        """The target's batch (the LMDB dataset's ``collate``) plus shard bookkeeping."""
        return ShardBatch(
            batch=self.inner.collate([i.sample for i in items]),
            shards=[i.shard for i in items],
            completed=[s for i in items for s in i.completed],
            skipped=[n for i in items for n in i.skipped],
        )


class ShardLoader:
    """Iterates a DataLoader over a :class:`ShardCaptionDataset`, records each batch in the
    progress and yields the plain target batch (what the trainer and objectives expect).

    A batch is recorded when it is handed over, which is when the trainer starts training on
    it; the trainer checkpoints only between steps, so a checkpoint never counts a batch that
    was not trained on, whatever the workers have prefetched.
    """

    def __init__(self, loader: Iterable[ShardBatch], progress: ShardProgress) -> None:
        self.loader = loader
        self.progress = progress

    def __iter__(self) -> Iterator[CaptionBatch]:
        for item in self.loader:
            self.progress.record(item)
            yield item.batch


def build_shard_dataset(
    shards: str | Sequence[str],
    target: str,
    tokenizer: CaptionTokenizer,
    transform: TrainTransform,
    *,
    max_caption_length: int = 30,
    masking: Any = None,
    shuffle_buffer: int = 1000,
    seed: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
) -> ShardCaptionDataset:
    """The training dataset of a shard list for a caption-only target.

    Args:
        shards: a specification for :func:`expand_shards`.
        target: ``captioning``, ``masked_lm`` or ``token_classification``.
        tokenizer: caption tokenizer.
        transform: the training transform (as the LMDB path's).
        max_caption_length: tokens per caption including ``[SOS]``/``[EOS]``.
        masking: :class:`virtex_data.datasets.MaskingConfig` of ``masked_lm``.
        shuffle_buffer: samples per worker held for shuffling.
        seed: shard order and shuffle seed (same on every rank).
        rank, world_size: default from ``torch.distributed``.

    Raises:
        ValueError: another target (``multilabel`` needs COCO instances per image), or a shard
            list that cannot be expanded.
    """
    paths = expand_shards(shards)
    slot = _OneRecord()
    common: dict[str, Any] = {
        "reader": slot,
        "tokenizer": tokenizer,
        "transform": transform,
        "max_caption_length": max_caption_length,
        "random_caption": True,
    }
    info = get_target(target)
    if not info.captions_only:
        usable = ", ".join(name for name, other in TARGETS.items() if other.captions_only)
        raise ValueError(
            f"target {target!r} cannot train from shards (they hold captions only): use "
            f"{usable}, or data.train_lmdb"
        )
    # The factories read only ``masking`` from the config (the LMDB paths come in ``common``).
    inner = info.make(DataConfig(train_shards="<shards>", masking=masking), "train", common)
    progress = ShardProgress(paths, seed=seed, rank=rank, world_size=world_size)
    return ShardCaptionDataset(paths, inner, progress, shuffle_buffer)


def missing_shards(paths: Sequence[str]) -> list[str]:
    """The paths of ``paths`` that are not regular files."""
    return [p for p in paths if not os.path.isfile(p)]
