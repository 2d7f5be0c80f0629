"""virtex-models: visual backbones, textual heads, objectives and decoders for VirTex.

This package needs only torch and torchvision and never imports ``virtex_data``: token ids and
special-token ids arrive as plain ints (:class:`VocabSpec`), batches as objects satisfying
:mod:`.protocols`.
"""

from virtex_models.config import ModelConfig
from virtex_models.decoding import DecoderConfig
from virtex_models.objectives.captioning import Captioning
from virtex_models.objectives.masked_lm import MaskedLM
from virtex_models.objectives.multilabel import MultilabelClassification
from virtex_models.objectives.token_classification import TokenClassification
from virtex_models.pretrained import ModelSpec, load_objective
from virtex_models.protocols import (
    IGNORE_INDEX,
    CaptionInputs,
    DecodeState,
    MaskedLMInputs,
    MultilabelInputs,
    Objective,
    ObjectiveModule,
    ObjectiveOutput,
    TextualHead,
    TokenClassificationInputs,
    VisualBackbone,
)
from virtex_models.registry import ObjectiveInfo, get_objective, objectives
from virtex_models.textual import LinearHead, TextualConfig, TransformerTextualHead
from virtex_models.visual import TimmBackbone, TorchvisionBackbone, VisualConfig
from virtex_models.vocab import VocabSpec

__version__ = "0.1.0"

__all__ = [
    "IGNORE_INDEX",
    "CaptionInputs",
    "Captioning",
    "DecodeState",
    "DecoderConfig",
    "LinearHead",
    "MaskedLM",
    "MaskedLMInputs",
    "ModelConfig",
    "ModelSpec",
    "MultilabelClassification",
    "MultilabelInputs",
    "Objective",
    "ObjectiveInfo",
    "ObjectiveModule",
    "ObjectiveOutput",
    "TextualConfig",
    "TextualHead",
    "TimmBackbone",
    "TokenClassification",
    "TokenClassificationInputs",
    "TorchvisionBackbone",
    "TransformerTextualHead",
    "VisualBackbone",
    "VisualConfig",
    "VocabSpec",
    "__version__",
    "get_objective",
    "load_objective",
    "objectives",
]
