"""``build_dataset(config, split, target, tokenizer)``: the one entry point for training code."""

from __future__ import annotations

import warnings
from typing import Any

from virtex_data.batch import CaptionBatch
from virtex_data.config import DataConfig, Split
from virtex_data.datasets import CaptioningDataset
from virtex_data.lmdb_reader import LmdbReader
from virtex_data.targets import get_target
from virtex_data.tokenizer import CaptionTokenizer
from virtex_data.transforms import EvalTransform, TrainTransform

__all__ = ["build_dataset"]


def build_dataset(
    config: DataConfig, split: Split, target: str, tokenizer: CaptionTokenizer
) -> CaptioningDataset:
    """The dataset of one split for one pretraining target.

    Args:
        config: data configuration.
        split: ``"train"`` (random caption, random augmentation) or ``"val"`` (first caption,
            resize + centre crop).
        target: a name of :data:`virtex_data.targets.TARGETS` (``captioning``, ``masked_lm``,
            ``token_classification``, ``multilabel_classification``; the old ``multilabel``
            still works, with a DeprecationWarning).
        tokenizer: the caption tokenizer.

    Returns:
        A dataset with ``collate(samples)`` returning the target's batch class
        (``MultilabelDataset`` also has ``num_classes``).
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    info = get_target(target)  # an unknown target fails before the LMDB file is opened
    train = split == "train"
    if train and config.train_lmdb is None:
        raise ValueError(
            "data.train_lmdb is not set: this config streams data.train_shards "
            "(virtex_data.shards.build_shard_dataset reads them)"
        )
    if config.gpu_decode and info.batch is not CaptionBatch:  # plain captions: no masking etc.
        raise ValueError(
            f"data.gpu_decode: supported for the captioning targets only, not {target!r} "
            "(set data.gpu_decode=false)"
        )
    if config.gpu_decode and train:
        from virtex_data.gpu_decode import GpuDecodeCaptioningDataset, gpu_decode_available

        reason = gpu_decode_available()
        if reason is None:
            return GpuDecodeCaptioningDataset(
                reader=LmdbReader(config.train_lmdb or "", config.readahead),
                tokenizer=tokenizer,
                transform_config=config.transform,
                max_caption_length=config.max_caption_length,
                random_caption=True,
            )
        warnings.warn(
            f"data.gpu_decode: {reason}; decoding training images on the CPU", stacklevel=2
        )
    reader = LmdbReader((config.train_lmdb or "") if train else config.val_lmdb, config.readahead)
    transform = TrainTransform(config.transform) if train else EvalTransform(config.transform)
    common: dict[str, Any] = {
        "reader": reader,
        "tokenizer": tokenizer,
        "transform": transform,
        "max_caption_length": config.max_caption_length,
        "random_caption": train,
    }
    return info.make(config, split, common)
