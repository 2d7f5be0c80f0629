"""Multilabel classification objective: predict the object categories of an image."""

from __future__ import annotations

from torch import nn

from virtex_models.protocols import MultilabelInputs, ObjectiveOutput
from virtex_models.textual import LinearHead
from virtex_models.token_classification import multilabel_loss

__all__ = ["MultilabelClassification"]


class MultilabelClassification(nn.Module):
    """Multi-hot prediction over ``num_classes`` categories (80 for COCO) from the globally
    pooled grid through one linear layer; loss: binary cross-entropy summed over categories,
    averaged over the batch.

    Args:
        visual: the backbone.
        num_classes: ``C``.
        visual_channels: ``C`` of the backbone grid.
    """

    def __init__(self, visual: nn.Module, num_classes: int, visual_channels: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.visual = visual
        self.num_classes = num_classes
        self.textual = LinearHead(visual_channels, num_classes)

    def forward(self, batch: MultilabelInputs) -> ObjectiveOutput:
        """Loss against ``batch.multilabels (B, C)``; logits ``(B, C)``."""
        logits = self.textual(self.visual(batch.images))
        targets = batch.multilabels
        if targets.shape != logits.shape:
            raise ValueError(f"multilabels {tuple(targets.shape)} != logits {tuple(logits.shape)}")
        loss = multilabel_loss(logits, targets)
        return ObjectiveOutput(loss=loss, components={"multilabel": loss.detach()}, logits=logits)
