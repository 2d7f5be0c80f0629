"""Kept for old imports: see :mod:`virtex_models.objectives.captioning`."""

from virtex_models.objectives import captioning as _moved
from virtex_models.objectives.captioning import *  # noqa: F403

__all__ = _moved.__all__
