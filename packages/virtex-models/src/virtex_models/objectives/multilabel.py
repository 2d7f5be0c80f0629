"""Multilabel classification objective: predict the object categories of an image."""

from __future__ import annotations

from typing import TYPE_CHECKING

from virtex_models.objectives.token_classification import (
    ClassificationLoss,
    classification_loss,
)
from virtex_models.protocols import (
    MultilabelInputs,
    ObjectiveModule,
    ObjectiveOutput,
    VisualBackbone,
)
from virtex_models.registry import ObjectiveInfo, register
from virtex_models.textual import LinearHead
from virtex_models.vocab import VocabSpec

if TYPE_CHECKING:
    from virtex_models.config import ModelConfig

__all__ = ["MultilabelClassification"]


class MultilabelClassification(ObjectiveModule):
    """Prediction of an image's categories (80 for COCO) from the globally pooled grid through
    one linear layer.

    Losses (see :mod:`.token_classification`): ``softmax`` (the original's: minus the mean
    log-softmax probability of the image's categories) or ``bce`` (sigmoid binary
    cross-entropy summed over categories). An original checkpoint has 81 outputs, output 0
    being COCO's background, never a label: its targets are ``(B, 81)`` with column 0 zero,
    and the background logit still takes part in the softmax as it did in the original.

    Args:
        visual: the backbone.
        num_classes: ``C``.
        visual_channels: ``C`` of the backbone grid.
        loss: ``softmax`` (the original's) or ``bce``.
    """

    def __init__(
        self,
        visual: VisualBackbone,
        num_classes: int,
        visual_channels: int,
        loss: ClassificationLoss = "softmax",
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if loss not in ("softmax", "bce"):
            raise ValueError(f"unknown classification loss {loss!r}: use 'softmax' or 'bce'")
        self.visual = visual
        self.num_classes = num_classes
        self.loss = loss
        self.textual = LinearHead(visual_channels, num_classes)

    def forward(self, batch: MultilabelInputs) -> ObjectiveOutput:
        """Loss against ``batch.multilabels (B, C)``; logits ``(B, C)``."""
        logits = self.textual(self.visual(batch.images))
        targets = batch.multilabels
        if targets.shape != logits.shape:
            raise ValueError(f"multilabels {tuple(targets.shape)} != logits {tuple(logits.shape)}")
        loss = classification_loss(self.loss, logits, targets)
        return ObjectiveOutput(loss=loss, components={"multilabel": loss.detach()}, logits=logits)


def _build(
    config: ModelConfig, vocab: VocabSpec, num_classes: int | None, options: None
) -> MultilabelClassification:
    if num_classes is None:
        raise ValueError(f"ModelConfig.build: {config.kind} needs num_classes")
    visual = config.visual.build()
    return MultilabelClassification(
        visual, num_classes, visual.out_channels, loss=config.classification_loss
    )


#: Model kind and data target share the name (the data target was once called ``multilabel``,
#: which ``virtex_data.targets`` still accepts with a DeprecationWarning).
MULTILABEL_CLASSIFICATION = register(
    ObjectiveInfo(
        name="multilabel_classification",
        build=_build,
        target="multilabel_classification",
        textual=False,
        needs_classes=True,
        original_names=("multilabel_classification",),
    )
)
