"""Masked language modelling objective: a bidirectional Transformer over masked captions."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch.nn.functional as F

from virtex_models.protocols import (
    IGNORE_INDEX,
    MaskedLMInputs,
    ObjectiveModule,
    ObjectiveOutput,
    TextualHead,
    VisualBackbone,
)
from virtex_models.registry import ObjectiveInfo, register
from virtex_models.vocab import VocabSpec

if TYPE_CHECKING:
    from virtex_models.config import ModelConfig

__all__ = ["MaskedLM"]


class MaskedLM(ObjectiveModule):
    """Predict the original tokens at masked positions, attending to the image and to the whole
    caption (no causal mask; padding keys are masked by ``lengths``).

    The loss is the cross-entropy over positions whose ``mlm_labels`` differ from
    :data:`IGNORE_INDEX`, averaged over those positions. With the original vocabulary layout
    (pad = unk) a label equal to the pad id is ignored too, as the original's cross-entropy
    (``ignore_index=padding_idx``) did for a masked ``[UNK]``. A batch without any label (the
    original masking labels only ``[MASK]`` positions, so this can happen) gives a zero loss
    that still back-propagates, where the original's would be NaN.

    Args:
        visual: the backbone.
        textual: the head (run with ``causal=False``).
        vocab: vocabulary layout.
    """

    def __init__(self, visual: VisualBackbone, textual: TextualHead, vocab: VocabSpec) -> None:
        super().__init__()
        if textual.vocab_size != vocab.size:
            raise ValueError(f"head vocabulary {textual.vocab_size} != VocabSpec.size {vocab.size}")
        self.visual = visual
        self.textual = textual
        self.vocab = vocab

    def forward(self, batch: MaskedLMInputs) -> ObjectiveOutput:
        """Loss of ``batch`` (``images``, ``tokens``, ``lengths``, ``mlm_labels``); logits
        ``(B, L, V)``."""
        grid = self.visual(batch.images)
        logits = self.textual(grid, batch.tokens, batch.lengths, causal=False)
        labels = batch.mlm_labels
        if self.vocab.pad_is_unk:
            labels = labels.masked_fill(labels == self.vocab.pad, IGNORE_INDEX)
        counted = labels != IGNORE_INDEX
        losses = F.cross_entropy(
            logits.float().flatten(0, 1),
            labels.flatten(),
            ignore_index=IGNORE_INDEX,
            reduction="none",
        )
        loss = losses.sum() / counted.sum().clamp(min=1)
        return ObjectiveOutput(loss=loss, components={MASKED_LM.name: loss.detach()}, logits=logits)


def _build(
    config: ModelConfig, vocab: VocabSpec, num_classes: int | None, options: None
) -> MaskedLM:
    visual = config.visual.build()
    return MaskedLM(visual, config.build_textual(vocab, visual.out_channels), vocab)


MASKED_LM = register(
    ObjectiveInfo(name="masked_lm", build=_build, target="masked_lm", original_names=("masked_lm",))
)
