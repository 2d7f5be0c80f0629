"""The data batches satisfy the input Protocols that virtex-models declares (structurally)."""

from __future__ import annotations

import torch

from virtex_data import (
    IGNORE_INDEX,
    CaptionBatch,
    MaskedLMBatch,
    MultilabelBatch,
    TokenClassificationBatch,
)
from virtex_models import (
    IGNORE_INDEX as MODELS_IGNORE_INDEX,
)
from virtex_models import (
    CaptionInputs,
    MaskedLMInputs,
    MultilabelInputs,
    TokenClassificationInputs,
)


def _fields() -> dict[str, torch.Tensor]:
    return {
        "image_ids": torch.arange(2),
        "images": torch.zeros(2, 3, 8, 8),
        "tokens": torch.ones(2, 4, dtype=torch.long),
        "lengths": torch.full((2,), 4),
    }


def test_both_packages_agree_on_the_ignored_label() -> None:
    assert IGNORE_INDEX == MODELS_IGNORE_INDEX


def test_batches_satisfy_model_input_protocols() -> None:
    caption = CaptionBatch(**_fields())
    masked = MaskedLMBatch(**_fields(), mlm_labels=torch.zeros(2, 4, dtype=torch.long))
    bag = TokenClassificationBatch(**_fields(), token_labels=torch.zeros(2, 10))
    multi = MultilabelBatch(**_fields(), multilabels=torch.zeros(2, 80))
    assert isinstance(caption, CaptionInputs)
    assert isinstance(masked, MaskedLMInputs)
    assert isinstance(bag, TokenClassificationInputs)
    assert isinstance(multi, MultilabelInputs)
    assert not isinstance(caption, MaskedLMInputs)
    # mypy checks the same wiring statically:
    inputs: CaptionInputs = caption
    masked_inputs: MaskedLMInputs = masked
    assert inputs is caption and masked_inputs is masked
