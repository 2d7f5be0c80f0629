"""``DataConfig``: everything ``build_dataset`` needs besides the tokenizer."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from virtex_data.datasets import MaskingConfig
from virtex_data.lmdb_reader import DEFAULT_READAHEAD
from virtex_data.strict_config import from_dict, to_plain
from virtex_data.transforms import TransformConfig

__all__ = ["DataConfig", "Split", "Target"]

Split = Literal["train", "val"]
#: A target's name: a key of ``virtex_data.targets.TARGETS``.
Target = str

_DEFAULT_TRAIN_LMDB = "data/synth/train.lmdb"


@dataclass(kw_only=True)
class DataConfig:
    """Data of one experiment (the ``data:`` section of an experiment YAML).

    Attributes:
        train_lmdb: LMDB file of the training split (``virtex-data build-lmdb``); ``None`` when
            ``train_shards`` is given.
        train_shards: WebDataset tar shards to stream instead (``"data/{00000..00099}.tar"``,
            ``virtex-data build-shards`` or img2dataset; see :mod:`virtex_data.shards`). Exactly
            one of ``train_lmdb`` and ``train_shards`` is used: naming ``train_shards`` replaces
            the default ``train_lmdb``; naming both is an error.
        shuffle_buffer: samples per DataLoader worker held for shuffling streamed shards.
        val_lmdb: LMDB file of the validation split.
        tokenizer: tokenizer JSON (``virtex-data build-vocab``); vocab size and special ids are
            derived from it by whoever loads it.
        train_instances: COCO instances JSON of the training images (``multilabel_classification``
            only).
        val_instances: same for validation.
        max_caption_length: tokens per caption including ``[SOS]``/``[EOS]`` (VirTex: 30).
        transform: image transforms.
        masking: masked-LM proportions.
        readahead: LMDB readahead (see the package README's benchmark).
        gpu_decode: decode and augment training JPEGs on the GPU (captioning targets;
            :mod:`virtex_data.gpu_decode`); without CUDA: a warning and the CPU path.
    """

    train_lmdb: str | None = _DEFAULT_TRAIN_LMDB
    train_shards: str | None = None
    shuffle_buffer: int = 1000
    val_lmdb: str = "data/synth/val.lmdb"
    tokenizer: str = "data/synth/tokenizer.json"
    train_instances: str | None = None
    val_instances: str | None = None
    max_caption_length: int = 30
    transform: TransformConfig = field(default_factory=TransformConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    readahead: bool = DEFAULT_READAHEAD
    gpu_decode: bool = False

    def __post_init__(self) -> None:
        if self.train_shards is not None:
            if not self.train_shards.strip():
                raise ValueError("data.train_shards is empty: give e.g. data/{00000..00099}.tar")
            if self.train_lmdb == _DEFAULT_TRAIN_LMDB:
                self.train_lmdb = None  # the default, not a choice: the shards replace it
        if self.train_lmdb is not None and self.train_shards is not None:
            raise ValueError(
                f"data.train_lmdb ({self.train_lmdb}) and data.train_shards "
                f"({self.train_shards}) are both set: train from one of them (a config based on "
                "an LMDB config streams shards with data.train_lmdb: null)"
            )
        if self.train_lmdb is None and self.train_shards is None:
            raise ValueError(
                "data.train_lmdb and data.train_shards are both unset: name the training data"
            )
        if self.shuffle_buffer < 0:
            raise ValueError(f"data.shuffle_buffer must be >= 0, got {self.shuffle_buffer}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-able dict (tuples become lists)."""
        return typing.cast(dict[str, Any], to_plain(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataConfig:
        """Build from a plain dict; unknown keys raise ``ValueError`` naming the dotted key."""
        return from_dict(cls, data, "data")
