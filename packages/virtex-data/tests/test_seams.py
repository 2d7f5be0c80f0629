"""The data-side seams: special-token layouts and typed batches."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import virtex_data
from virtex_data import (
    IGNORE_INDEX,
    CaptionBatch,
    MaskedLMBatch,
    MultilabelBatch,
    SpecialTokens,
    TokenClassificationBatch,
)


def _batch(batch_size: int = 2, length: int = 5) -> dict[str, torch.Tensor]:
    return {
        "image_ids": torch.arange(batch_size),
        "images": torch.zeros(batch_size, 3, 8, 8),
        "tokens": torch.ones(batch_size, length, dtype=torch.long),
        "lengths": torch.full((batch_size,), length),
    }


def test_version_is_semver_start() -> None:
    assert virtex_data.__version__ == "0.1.0"


def test_default_special_tokens_keep_pad_and_unk_apart() -> None:
    tokens = SpecialTokens()
    assert tokens.pad != tokens.unk
    assert not tokens.is_legacy
    assert len(set(tokens.as_dict().values())) == 5


def test_legacy_special_tokens_match_original_virtex_layout() -> None:
    legacy = SpecialTokens.legacy()
    assert legacy.as_dict() == {"pad": 0, "unk": 0, "sos": 1, "eos": 2, "mask": 3}
    assert legacy.is_legacy


def test_special_tokens_reject_colliding_ids() -> None:
    with pytest.raises(ValueError, match="must differ"):
        SpecialTokens(pad=0, unk=1, sos=0, eos=2, mask=3)
    with pytest.raises(ValueError, match="non-negative"):
        SpecialTokens(pad=-1)


def test_special_tokens_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        SpecialTokens().pad = 5  # type: ignore[misc]


def test_caption_batch_to_moves_every_tensor_and_keeps_subclass() -> None:
    fields = _batch()
    labels = torch.full_like(fields["tokens"], IGNORE_INDEX)
    batch = MaskedLMBatch(**fields, mlm_labels=labels)
    moved = batch.to("cpu", memory_format=torch.channels_last)
    assert type(moved) is MaskedLMBatch
    assert moved.images.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(moved.mlm_labels, labels)
    assert len(moved) == 2


def test_caption_batch_rejects_mismatched_rows() -> None:
    fields = _batch()
    fields["lengths"] = torch.tensor([5])
    with pytest.raises(ValueError, match="lengths has 1 rows"):
        CaptionBatch(**fields)


def test_subclass_targets_are_validated() -> None:
    with pytest.raises(ValueError, match="mlm_labels"):
        MaskedLMBatch(**_batch(), mlm_labels=torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="token_labels"):
        TokenClassificationBatch(**_batch(), token_labels=torch.zeros(3))
    with pytest.raises(ValueError, match="multilabels"):
        MultilabelBatch(**_batch(), multilabels=torch.zeros(3, 80))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs an accelerator")
def test_pin_memory_pins_every_tensor() -> None:
    batch = MultilabelBatch(**_batch(), multilabels=torch.zeros(2, 80)).pin_memory()
    assert all(getattr(batch, f.name).is_pinned() for f in dataclasses.fields(batch))
