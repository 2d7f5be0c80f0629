"""virtex-models: visual backbones, textual heads, objectives and decoders for VirTex.

This package needs only torch and torchvision and never imports ``virtex_data``: token ids and
special-token ids arrive as plain ints, batches as objects satisfying :mod:`.protocols`.
"""

from virtex_models.protocols import (
    IGNORE_INDEX,
    CaptionInputs,
    DecodeState,
    MaskedLMInputs,
    MultilabelInputs,
    Objective,
    ObjectiveOutput,
    TextualHead,
    TokenClassificationInputs,
    VisualBackbone,
)
from virtex_models.visual import TorchvisionBackbone, VisualConfig

__version__ = "0.1.0"

__all__ = [
    "IGNORE_INDEX",
    "CaptionInputs",
    "DecodeState",
    "MaskedLMInputs",
    "MultilabelInputs",
    "Objective",
    "ObjectiveOutput",
    "TextualHead",
    "TokenClassificationInputs",
    "TorchvisionBackbone",
    "VisualBackbone",
    "VisualConfig",
    "__version__",
]
