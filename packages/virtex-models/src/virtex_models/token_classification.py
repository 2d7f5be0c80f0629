"""Token classification objective: predict the bag of caption tokens from pooled features."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from virtex_models.protocols import ObjectiveOutput, TokenClassificationInputs
from virtex_models.textual import LinearHead
from virtex_models.vocab import VocabSpec

__all__ = ["TokenClassification", "multilabel_loss"]


def multilabel_loss(logits: Tensor, targets: Tensor, counted: Tensor | None = None) -> Tensor:
    """Binary cross-entropy summed over classes and averaged over the batch.

    Args:
        logits: ``(B, K)``.
        targets: ``(B, K)`` multi-hot in ``{0, 1}``.
        counted: ``(K,)`` bool, the classes that count (``None``: all).

    Returns:
        Scalar float32.
    """
    losses = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    if counted is not None:
        losses = losses * counted.to(losses.dtype)
    return losses.sum(dim=1).mean()


class TokenClassification(nn.Module):
    """Multi-hot prediction over the vocabulary (which tokens the caption contains) from the
    globally pooled grid through one linear layer.

    The loss is :func:`multilabel_loss` over every vocabulary id except ``pad`` (never a caption
    token; with the original ``pad == unk`` layout unknown tokens are excluded with it).

    Args:
        visual: the backbone.
        vocab: vocabulary layout.
        visual_channels: ``C`` of the backbone grid.
    """

    def __init__(self, visual: nn.Module, vocab: VocabSpec, visual_channels: int) -> None:
        super().__init__()
        self.visual = visual
        self.vocab = vocab
        self.textual = LinearHead(visual_channels, vocab.size)
        counted = torch.ones(vocab.size, dtype=torch.bool)
        counted[vocab.pad] = False
        self.register_buffer("counted", counted, persistent=False)

    def forward(self, batch: TokenClassificationInputs) -> ObjectiveOutput:
        """Loss against ``batch.token_labels (B, V)``; logits ``(B, V)``."""
        logits = self.textual(self.visual(batch.images))
        targets = batch.token_labels
        if targets.shape != logits.shape:
            raise ValueError(f"token_labels {tuple(targets.shape)} != logits {tuple(logits.shape)}")
        counted = self.get_buffer("counted")
        loss = multilabel_loss(logits, targets, counted)
        return ObjectiveOutput(
            loss=loss, components={"token_classification": loss.detach()}, logits=logits
        )
