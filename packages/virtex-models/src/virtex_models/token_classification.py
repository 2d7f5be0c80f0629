"""Kept for old imports: see :mod:`virtex_models.objectives.token_classification`."""

from virtex_models.objectives import token_classification as _moved
from virtex_models.objectives.token_classification import *  # noqa: F403

__all__ = _moved.__all__
