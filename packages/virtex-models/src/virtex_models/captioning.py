"""Old import path of :mod:`virtex_models.objectives.captioning` (kept for compatibility)."""

from virtex_models.objectives.captioning import (
    CAPTIONING_TARGET,
    Captioning,
    caption_targets,
    reverse_captions,
)

__all__ = [
    "CAPTIONING_TARGET",
    "Captioning",
    "caption_targets",
    "reverse_captions",
]
