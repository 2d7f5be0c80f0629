"""Kept for old imports: see :mod:`virtex_models.objectives.multilabel`."""

from virtex_models.objectives import multilabel as _moved
from virtex_models.objectives.multilabel import *  # noqa: F403

__all__ = _moved.__all__
