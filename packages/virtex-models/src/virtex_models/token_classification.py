"""Old import path of :mod:`virtex_models.objectives.token_classification` (kept for
compatibility)."""

from virtex_models.objectives.token_classification import (
    ClassificationLoss,
    TokenClassification,
    classification_loss,
    multilabel_loss,
    softmax_multilabel_loss,
)

__all__ = [
    "ClassificationLoss",
    "TokenClassification",
    "classification_loss",
    "multilabel_loss",
    "softmax_multilabel_loss",
]
