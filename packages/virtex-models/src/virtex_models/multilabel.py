"""Old import path of :mod:`virtex_models.objectives.multilabel` (kept for compatibility)."""

from virtex_models.objectives.multilabel import (
    MultilabelClassification,
)

__all__ = [
    "MultilabelClassification",
]
