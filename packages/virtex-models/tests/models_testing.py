"""Helpers shared by the virtex-models tests (imported through conftest's sys.path entry)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Batch:
    """A stand-in for virtex_data's batches (virtex_models must not import virtex_data)."""

    image_ids: Tensor
    images: Tensor
    tokens: Tensor
    lengths: Tensor


@dataclass
class MaskedBatch(Batch):
    mlm_labels: Tensor


@dataclass
class TokenBatch(Batch):
    token_labels: Tensor


@dataclass
class MultilabelBatch(Batch):
    multilabels: Tensor


def random_captions(
    lengths: list[int], vocab_size: int, sos: int, eos: int, pad: int, first_word: int, seed: int
) -> tuple[Tensor, Tensor]:
    """``[SOS] w.. [EOS]`` rows right-padded with ``pad``; words drawn from
    ``[first_word, vocab_size)``."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    tokens = torch.full((len(lengths), width), pad, dtype=torch.long)
    for row, length in enumerate(lengths):
        words = torch.randint(first_word, vocab_size, (length - 2,), generator=generator)
        tokens[row, 0] = sos
        tokens[row, 1 : length - 1] = words
        tokens[row, length - 1] = eos
    return tokens, torch.tensor(lengths)
