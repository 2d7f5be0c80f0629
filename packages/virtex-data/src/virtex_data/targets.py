"""The registry of pretraining targets: what batches a target's dataset yields.

``virtex_models.registry`` names, for every objective, the target whose batches it consumes;
this module is the data side of that link (the two packages never import each other: the link
is the target's name, checked by ``tests/test_seam_wiring.py``). :func:`virtex_data.build_dataset`
reads it. A new target is a dataset class (with its batch) and one :func:`register_target` call.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from virtex_data.batch import (
    CaptionBatch,
    MaskedLMBatch,
    MultilabelBatch,
    TokenClassificationBatch,
)
from virtex_data.datasets import (
    CaptioningDataset,
    MaskedLMDataset,
    MultilabelDataset,
    TokenClassificationDataset,
)

if TYPE_CHECKING:
    from virtex_data.config import DataConfig

__all__ = ["TARGETS", "TargetInfo", "get_target", "register_target"]

#: ``make(config, split, common)``: the target's dataset; ``common`` holds the keyword arguments
#: every dataset takes (``reader``, ``tokenizer``, ``transform``, ``max_caption_length``,
#: ``random_caption``).
DatasetFactory = Callable[["DataConfig", str, dict[str, Any]], CaptioningDataset]


@dataclass(frozen=True, kw_only=True)
class TargetInfo:
    """One pretraining target.

    Attributes:
        name: the name objectives refer to (``ObjectiveInfo.target`` in ``virtex_models``).
        make: builds the split's dataset.
        batch: the batch class its ``collate`` returns.
        captions_only: the dataset needs nothing but images and captions (it can train from
            caption shards, :mod:`virtex_data.shards`).
    """

    name: str
    make: DatasetFactory
    batch: type[CaptionBatch]
    captions_only: bool = True


TARGETS: dict[str, TargetInfo] = {}
#: Old target names, accepted with a DeprecationWarning.
_ALIASES = {"multilabel": "multilabel_classification"}


def register_target(info: TargetInfo) -> TargetInfo:
    """Add ``info`` to :data:`TARGETS`; a second target of the same name is a ``ValueError``."""
    if info.name in TARGETS and TARGETS[info.name] is not info:
        raise ValueError(f"target {info.name!r} is registered twice")
    TARGETS[info.name] = info
    return info


def get_target(name: str) -> TargetInfo:
    """The target called ``name`` (an old alias warns and resolves).

    Raises:
        ValueError: an unknown name, listing the known ones.
    """
    if name in _ALIASES:
        warnings.warn(
            f"target {name!r} is deprecated: it is called {_ALIASES[name]!r}, as the objective",
            DeprecationWarning,
            stacklevel=3,
        )
        name = _ALIASES[name]
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r}: use one of {', '.join(TARGETS)}")
    return TARGETS[name]


def _multilabel(config: DataConfig, split: str, common: dict[str, Any]) -> CaptioningDataset:
    instances = config.train_instances if split == "train" else config.val_instances
    if instances is None:
        raise ValueError(
            f"target 'multilabel_classification' needs data.{split}_instances (COCO instances)"
        )
    return MultilabelDataset(**common, instances=instances)


register_target(
    TargetInfo(
        name="captioning", make=lambda c, s, common: CaptioningDataset(**common), batch=CaptionBatch
    )
)
register_target(
    TargetInfo(
        name="masked_lm",
        make=lambda c, s, common: MaskedLMDataset(**common, masking=c.masking),
        batch=MaskedLMBatch,
    )
)
register_target(
    TargetInfo(
        name="token_classification",
        make=lambda c, s, common: TokenClassificationDataset(**common),
        batch=TokenClassificationBatch,
    )
)
register_target(
    TargetInfo(
        name="multilabel_classification",
        make=_multilabel,
        batch=MultilabelBatch,
        captions_only=False,  # COCO instances per image
    )
)
