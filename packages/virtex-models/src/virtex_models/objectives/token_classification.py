"""Token classification objective: predict the bag of caption tokens from pooled features.

Two losses over a multi-hot target (:data:`ClassificationLoss`), shared with
:class:`~virtex_models.multilabel.MultilabelClassification`:

- ``softmax`` (default, the original VirTex's): one softmax over all outputs; each image's loss
  is minus the mean log-probability of its distinct labels, averaged over the images that have
  a label (:func:`softmax_multilabel_loss`);
- ``bce``: independent sigmoids, binary cross-entropy summed over classes and averaged over the
  batch (:func:`multilabel_loss`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from virtex_models.protocols import (
    ObjectiveModule,
    ObjectiveOutput,
    TokenClassificationInputs,
    VisualBackbone,
)
from virtex_models.registry import ObjectiveInfo, register
from virtex_models.textual import LinearHead
from virtex_models.vocab import VocabSpec

if TYPE_CHECKING:
    from virtex_models.config import ModelConfig

__all__ = [
    "ClassificationLoss",
    "TokenClassification",
    "classification_loss",
    "multilabel_loss",
    "softmax_multilabel_loss",
]

#: Loss of the two classification objectives.
ClassificationLoss = Literal["softmax", "bce"]


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


def softmax_multilabel_loss(
    logits: Tensor, targets: Tensor, counted: Tensor | None = None
) -> Tensor:
    """The original VirTex classification loss: cross-entropy against a uniform distribution
    over each image's distinct labels.

    ``loss = mean over images i with a label of -(1 / |S_i|) sum_{k in S_i} log softmax(z_i)_k``
    where ``S_i`` are the counted classes with ``targets[i, k] > 0``. The softmax runs over all
    ``K`` outputs, counted or not. An image without a counted label adds nothing and is not
    counted in the mean (the original dropped such images from its dataset); a batch without
    any label gives a zero loss that still back-propagates.

    Args:
        logits: ``(B, K)``.
        targets: ``(B, K)`` multi-hot (values > 0 are labels; repeats cannot occur).
        counted: ``(K,)`` bool, the classes that may be labels (``None``: all).

    Returns:
        Scalar float32.
    """
    log_probs = torch.log_softmax(logits.float(), dim=1)
    labels = (targets > 0).to(log_probs.dtype)
    if counted is not None:
        labels = labels * counted.to(log_probs.dtype)
    per_image_count = labels.sum(dim=1)
    per_image = -(log_probs * labels).sum(dim=1) / per_image_count.clamp(min=1.0)
    labelled = (per_image_count > 0).to(log_probs.dtype)
    return (per_image * labelled).sum() / labelled.sum().clamp(min=1.0)


def classification_loss(
    kind: ClassificationLoss, logits: Tensor, targets: Tensor, counted: Tensor | None = None
) -> Tensor:
    """:func:`softmax_multilabel_loss` (``softmax``) or :func:`multilabel_loss` (``bce``)."""
    if kind == "softmax":
        return softmax_multilabel_loss(logits, targets, counted)
    if kind == "bce":
        return multilabel_loss(logits, targets, counted)
    raise ValueError(f"unknown classification loss {kind!r}: use 'softmax' or 'bce'")


class TokenClassification(ObjectiveModule):
    """Prediction of the bag of caption tokens from the globally pooled grid through one linear
    layer over the vocabulary.

    Counted classes: every id but the special ones (pad, unk, sos, eos, mask) with the
    ``softmax`` loss, as the original's ignore list; every id but pad with ``bce``.

    Args:
        visual: the backbone.
        vocab: vocabulary layout.
        visual_channels: ``C`` of the backbone grid.
        loss: ``softmax`` (the original's) or ``bce``.
    """

    def __init__(
        self,
        visual: VisualBackbone,
        vocab: VocabSpec,
        visual_channels: int,
        loss: ClassificationLoss = "softmax",
    ) -> None:
        super().__init__()
        if loss not in ("softmax", "bce"):
            raise ValueError(f"unknown classification loss {loss!r}: use 'softmax' or 'bce'")
        self.visual = visual
        self.vocab = vocab
        self.loss = loss
        self.textual = LinearHead(visual_channels, vocab.size)
        counted = torch.ones(vocab.size, dtype=torch.bool)
        ignored = [vocab.pad]
        if loss == "softmax":
            ignored += [vocab.unk, vocab.sos, vocab.eos, vocab.mask]
        counted[ignored] = False
        self.register_buffer("counted", counted, persistent=False)

    def forward(self, batch: TokenClassificationInputs) -> ObjectiveOutput:
        """Loss against ``batch.token_labels (B, V)``; logits ``(B, V)``."""
        logits = self.textual(self.visual(batch.images))
        targets = batch.token_labels
        if targets.shape != logits.shape:
            raise ValueError(f"token_labels {tuple(targets.shape)} != logits {tuple(logits.shape)}")
        loss = classification_loss(self.loss, logits, targets, self.get_buffer("counted"))
        return ObjectiveOutput(
            loss=loss, components={TOKEN_CLASSIFICATION.name: loss.detach()}, logits=logits
        )


def _build(
    config: ModelConfig, vocab: VocabSpec, num_classes: int | None, options: None
) -> TokenClassification:
    visual = config.visual.build()
    return TokenClassification(visual, vocab, visual.out_channels, loss=config.classification_loss)


TOKEN_CLASSIFICATION = register(
    ObjectiveInfo(
        name="token_classification",
        build=_build,
        target="token_classification",
        textual=False,
        original_names=("token_classification",),
    )
)
