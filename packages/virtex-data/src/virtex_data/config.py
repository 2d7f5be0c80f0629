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


@dataclass(kw_only=True)
class DataConfig:
    """Data of one experiment (the ``data:`` section of an experiment YAML).

    Attributes:
        train_lmdb: LMDB file of the training split (``virtex-data build-lmdb``).
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
    """

    train_lmdb: str = "data/synth/train.lmdb"
    val_lmdb: str = "data/synth/val.lmdb"
    tokenizer: str = "data/synth/tokenizer.json"
    train_instances: str | None = None
    val_instances: str | None = None
    max_caption_length: int = 30
    transform: TransformConfig = field(default_factory=TransformConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    readahead: bool = DEFAULT_READAHEAD

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-able dict (tuples become lists)."""
        return typing.cast(dict[str, Any], to_plain(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataConfig:
        """Build from a plain dict; unknown keys raise ``ValueError`` naming the dotted key."""
        return from_dict(cls, data, "data")
