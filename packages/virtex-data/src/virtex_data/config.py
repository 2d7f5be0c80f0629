"""``DataConfig``: everything ``build_dataset`` needs besides the tokenizer."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from virtex_data.datasets import MaskingConfig
from virtex_data.errors import brief
from virtex_data.lmdb_reader import DEFAULT_READAHEAD
from virtex_data.transforms import ColorJitterConfig, TransformConfig

__all__ = ["DataConfig", "Split", "Target"]

Split = Literal["train", "val"]
Target = Literal["captioning", "masked_lm", "token_classification", "multilabel"]


@dataclass(kw_only=True)
class DataConfig:
    """Data of one experiment (the ``data:`` section of an experiment YAML).

    Attributes:
        train_lmdb: LMDB file of the training split (``virtex-data build-lmdb``).
        val_lmdb: LMDB file of the validation split.
        tokenizer: tokenizer JSON (``virtex-data build-vocab``); vocab size and special ids are
            derived from it by whoever loads it.
        train_instances: COCO instances JSON of the training images (``multilabel`` only).
        val_instances: same for validation.
        max_caption_length: tokens per caption including ``[SOS]``/``[EOS]`` (VirTex: 30).
        transform: image transforms.
        masking: masked-LM proportions.
        readahead: LMDB readahead (see the package README's benchmark).
        gpu_decode: decode and augment training JPEGs on the GPU (captioning targets;
            :mod:`virtex_data.gpu_decode`); without CUDA: a warning and the CPU path.
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
    gpu_decode: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-able dict (tuples become lists)."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataConfig:
        """Build from a plain dict; unknown keys raise ``ValueError`` naming the dotted key."""
        return typing.cast(DataConfig, _build(cls, data, "data"))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


_NESTED: dict[str, type] = {
    "TransformConfig": TransformConfig,
    "MaskingConfig": MaskingConfig,
    "ColorJitterConfig": ColorJitterConfig,
}


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise ValueError(f"unknown key {where}.{key} (known: {sorted(fields)})")
        kwargs[key] = _convert(hints[key], value, f"{where}.{key}")
    return cls(**kwargs)


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        hint = options[0]
        origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _build(hint, value, where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where}: expected a list, got {brief(value)}")
        return tuple(float(v) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true/false, got {brief(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expected an integer, got {brief(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{where}: expected a number, got {brief(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {brief(value)}")
        return value
    return value
