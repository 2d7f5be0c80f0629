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
from virtex_data.datasets import MaskingConfig
from virtex_data.lmdb_reader import LmdbReader
from virtex_data.normalize import NORMALIZATION_VERSION, normalize_caption
from virtex_data.sampler import ResumableSampler
from virtex_data.special_tokens import SpecialTokens
from virtex_data.tokenizer import CaptionTokenizer
from virtex_data.transforms import TransformConfig

__version__ = "0.1.0"

__all__ = [
    "IGNORE_INDEX",
    "NORMALIZATION_VERSION",
    "CaptionBatch",
    "CaptionTokenizer",
    "DataConfig",
    "LmdbReader",
    "MaskedLMBatch",
    "MaskingConfig",
    "MultilabelBatch",
    "ResumableSampler",
    "SpecialTokens",
    "TokenClassificationBatch",
    "TransformConfig",
    "__version__",
    "build_dataset",
    "normalize_caption",
]
