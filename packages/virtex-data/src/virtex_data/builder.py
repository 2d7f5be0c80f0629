"""``build_dataset(config, split, target, tokenizer)``: the one entry point for training code."""

from __future__ import annotations

import warnings

from virtex_data.config import DataConfig, Split, Target
from virtex_data.datasets import (
    CaptioningDataset,
    MaskedLMDataset,
    MultilabelDataset,
    TokenClassificationDataset,
)
from virtex_data.lmdb_reader import LmdbReader
from virtex_data.tokenizer import CaptionTokenizer
from virtex_data.transforms import EvalTransform, TrainTransform

__all__ = ["build_dataset"]


def build_dataset(
    config: DataConfig, split: Split, target: Target, tokenizer: CaptionTokenizer
) -> CaptioningDataset:
    """The dataset of one split for one pretraining target.

    Args:
        config: data configuration.
        split: ``"train"`` (random caption, random augmentation) or ``"val"`` (first caption,
            resize + centre crop).
        target: ``"captioning"``, ``"masked_lm"``, ``"token_classification"`` or
            ``"multilabel"``.
        tokenizer: the caption tokenizer.

    Returns:
        A dataset with ``collate(samples)`` returning the target's batch class
        (``MultilabelDataset`` also has ``num_classes``).
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    train = split == "train"
    if config.gpu_decode and target != "captioning":
        raise ValueError(
            f"data.gpu_decode: supported for the captioning targets only, not {target!r} "
            "(set data.gpu_decode=false)"
        )
    if config.gpu_decode and train:
        from virtex_data.gpu_decode import GpuDecodeCaptioningDataset, gpu_decode_available

        reason = gpu_decode_available()
        if reason is None:
            return GpuDecodeCaptioningDataset(
                reader=LmdbReader(config.train_lmdb, config.readahead),
                tokenizer=tokenizer,
                transform_config=config.transform,
                max_caption_length=config.max_caption_length,
                random_caption=True,
            )
        warnings.warn(
            f"data.gpu_decode: {reason}; decoding training images on the CPU", stacklevel=2
        )
    reader = LmdbReader(config.train_lmdb if train else config.val_lmdb, config.readahead)
    transform = TrainTransform(config.transform) if train else EvalTransform(config.transform)
    common = {
        "reader": reader,
        "tokenizer": tokenizer,
        "transform": transform,
        "max_caption_length": config.max_caption_length,
        "random_caption": train,
    }
    if target == "captioning":
        return CaptioningDataset(**common)  # type: ignore[arg-type]
    if target == "masked_lm":
        return MaskedLMDataset(**common, masking=config.masking)  # type: ignore[arg-type]
    if target == "token_classification":
        return TokenClassificationDataset(**common)  # type: ignore[arg-type]
    if target == "multilabel":
        instances = config.train_instances if train else config.val_instances
        if instances is None:
            raise ValueError(f"target 'multilabel' needs data.{split}_instances (COCO instances)")
        return MultilabelDataset(**common, instances=instances)  # type: ignore[arg-type]
    raise ValueError(
        f"unknown target {target!r}: use captioning, masked_lm, token_classification or multilabel"
    )
