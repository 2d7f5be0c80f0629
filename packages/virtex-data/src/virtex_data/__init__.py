"""virtex-data: captions, vocabularies, LMDB datasets and typed batches for VirTex."""

from virtex_data.batch import (
    IGNORE_INDEX,
    CaptionBatch,
    MaskedLMBatch,
    MultilabelBatch,
    TokenClassificationBatch,
)
from virtex_data.builder import build_dataset
from virtex_data.config import DataConfig
from virtex_data.special_tokens import SpecialTokens

__version__ = "0.1.0"

__all__ = [
    "IGNORE_INDEX",
    "CaptionBatch",
    "DataConfig",
    "MaskedLMBatch",
    "MultilabelBatch",
    "SpecialTokens",
    "TokenClassificationBatch",
    "__version__",
    "build_dataset",
]
