"""Old import path of :mod:`virtex_models.objectives.masked_lm` (kept for compatibility)."""

from virtex_models.objectives.masked_lm import (
    MaskedLM,
)

__all__ = [
    "MaskedLM",
]
