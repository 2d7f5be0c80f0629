"""Kept for old imports: see :mod:`virtex_models.objectives.masked_lm`."""

from virtex_models.objectives import masked_lm as _moved
from virtex_models.objectives.masked_lm import *  # noqa: F403

__all__ = _moved.__all__
