"""``ModelConfig``: the dataclass that describes and builds an objective.

Plain JSON-able dicts go in and out (:meth:`ModelConfig.to_dict` / :meth:`ModelConfig.from_dict`);
an unknown key or a value of the wrong type is a ``ValueError`` naming its dotted path.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

from virtex_models.captioning import Captioning
from virtex_models.decoding import DecoderConfig
from virtex_models.masked_lm import MaskedLM
from virtex_models.multilabel import MultilabelClassification
from virtex_models.strict_config import from_dict
from virtex_models.textual import TextualConfig, TransformerTextualHead
from virtex_models.token_classification import ClassificationLoss, TokenClassification
from virtex_models.visual import VisualConfig
from virtex_models.vocab import VocabSpec

__all__ = ["ModelConfig", "ObjectiveKind"]

ObjectiveKind = Literal[
    "bicaptioning", "captioning", "masked_lm", "token_classification", "multilabel_classification"
]


@dataclass(kw_only=True, slots=True)
class ModelConfig:
    """An objective: its kind, visual backbone, textual head and default decoding.

    Attributes:
        kind: which objective :meth:`build` returns (``bicaptioning`` is VirTex's main model).
        visual: the backbone.
        textual: the Transformer head (ignored by the two classification kinds).
        decoder: default decoding of captioning objectives.
        classification_loss: loss of the two classification kinds: ``softmax`` (the original
            VirTex's, minus the mean log-softmax probability of each image's distinct labels)
            or ``bce`` (per-class sigmoid binary cross-entropy, summed over classes).
    """

    kind: ObjectiveKind = "bicaptioning"
    visual: VisualConfig = field(default_factory=VisualConfig)
    textual: TextualConfig = field(default_factory=TextualConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    classification_loss: ClassificationLoss = "softmax"

    def to_dict(self) -> dict[str, Any]:
        """A plain JSON-able dict that :meth:`from_dict` turns back into an equal config."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "model") -> ModelConfig:
        """Strictly parse ``data``; missing keys take defaults.

        Raises:
            ValueError: an unknown key or a wrongly typed value, naming its path (e.g.
                ``model.textual.widht``).
        """
        return from_dict(cls, data, where)

    def build(self, vocab: VocabSpec, num_classes: int | None = None) -> nn.Module:
        """The objective (an ``nn.Module`` satisfying the ``Objective`` Protocol).

        Args:
            vocab: vocabulary layout (``size`` sets the head's vocabulary).
            num_classes: categories, required for ``multilabel_classification``.
        """
        visual = self.visual.build()
        channels = visual.out_channels
        if self.kind == "multilabel_classification":
            if num_classes is None:
                raise ValueError("ModelConfig.build: multilabel_classification needs num_classes")
            return MultilabelClassification(
                visual, num_classes, channels, loss=self.classification_loss
            )
        if self.kind == "token_classification":
            return TokenClassification(visual, vocab, channels, loss=self.classification_loss)
        head = TransformerTextualHead(self.textual, vocab.size, channels, vocab.pad)
        if self.kind == "masked_lm":
            return MaskedLM(visual, head, vocab)
        return Captioning(
            visual,
            head,
            vocab,
            bidirectional=self.kind == "bicaptioning",
            decoder=dataclasses.replace(self.decoder),
        )
