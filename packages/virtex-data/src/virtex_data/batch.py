"""Typed batches: what a DataLoader yields and what objectives consume.

Every tensor field is documented with its shape and dtype. The batches satisfy the input
Protocols that ``virtex_models`` declares (``CaptionInputs`` and friends) structurally: neither
package imports the other, and ``virtex_train`` wires them together.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Self

import torch
from torch import Tensor

__all__ = [
    "IGNORE_INDEX",
    "CaptionBatch",
    "MaskedLMBatch",
    "MultilabelBatch",
    "TokenClassificationBatch",
]

#: Label value of positions that no loss may count (PyTorch's cross-entropy default).
IGNORE_INDEX = -100


@dataclass
class CaptionBatch:
    """A batch of images with one caption each.

    Attributes:
        image_ids: ``(B,)`` int64, the dataset's image ids.
        images: ``(B, 3, H, W)`` float32, normalised images.
        tokens: ``(B, L)`` int64, ``[SOS] w1 ... wn [EOS]`` right-padded with the pad id to the
            longest caption of the batch. ``L <= max_caption_length``.
        lengths: ``(B,)`` int64, number of non-pad tokens per row (``[SOS]`` and ``[EOS]``
            included). The backward ("noitpac") caption is derived from ``tokens`` and
            ``lengths`` on the device; it is not stored.
    """

    image_ids: Tensor
    images: Tensor
    tokens: Tensor
    lengths: Tensor

    def __post_init__(self) -> None:
        batch = self.images.shape[0]
        if self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(self.images.shape)}")
        if self.tokens.dim() != 2:
            raise ValueError(f"tokens must be (B, L), got {tuple(self.tokens.shape)}")
        for name in ("image_ids", "tokens", "lengths"):
            value = getattr(self, name)
            if value.shape[0] != batch:
                raise ValueError(f"{name} has {value.shape[0]} rows but images has {batch}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def _tensor_fields(self) -> dict[str, Tensor]:
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }

    def to(
        self,
        device: torch.device | str,
        non_blocking: bool = False,
        memory_format: torch.memory_format | None = None,
    ) -> Self:
        """A copy with every tensor on ``device``; ``memory_format`` applies to ``images`` only."""
        moved = {
            name: value.to(device, non_blocking=non_blocking)
            for name, value in self._tensor_fields().items()
        }
        if memory_format is not None:
            moved["images"] = moved["images"].contiguous(memory_format=memory_format)
        return dataclasses.replace(self, **moved)

    def pin_memory(self) -> Self:
        """A copy with every tensor in pinned memory (called by ``DataLoader(pin_memory=True)``)."""
        pinned = {name: value.pin_memory() for name, value in self._tensor_fields().items()}
        return dataclasses.replace(self, **pinned)


@dataclass
class MaskedLMBatch(CaptionBatch):
    """Captions with some tokens replaced for masked language modelling.

    Attributes:
        tokens: as in :class:`CaptionBatch`, with the chosen positions replaced by the mask id,
            a random token or kept.
        mlm_labels: ``(B, L)`` int64, the original token at chosen positions and
            :data:`IGNORE_INDEX` everywhere else (padding included).
    """

    mlm_labels: Tensor = dataclasses.field(default_factory=lambda: torch.empty(0))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mlm_labels.shape != self.tokens.shape:
            raise ValueError(
                f"mlm_labels {tuple(self.mlm_labels.shape)} must match tokens "
                f"{tuple(self.tokens.shape)}"
            )


@dataclass
class TokenClassificationBatch(CaptionBatch):
    """Captions with their bag of tokens as a target.

    Attributes:
        token_labels: ``(B, V)`` float32 multi-hot over the vocabulary: 1 for every token that
            occurs in the caption, special tokens excluded.
    """

    token_labels: Tensor = dataclasses.field(default_factory=lambda: torch.empty(0))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.token_labels.dim() != 2 or self.token_labels.shape[0] != len(self):
            raise ValueError(f"token_labels must be (B, V), got {tuple(self.token_labels.shape)}")


@dataclass
class MultilabelBatch(CaptionBatch):
    """Images with the categories of the objects they contain.

    Attributes:
        multilabels: ``(B, C)`` float32 multi-hot over ``C`` categories (80 for COCO).
    """

    multilabels: Tensor = dataclasses.field(default_factory=lambda: torch.empty(0))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.multilabels.dim() != 2 or self.multilabels.shape[0] != len(self):
            raise ValueError(f"multilabels must be (B, C), got {tuple(self.multilabels.shape)}")
