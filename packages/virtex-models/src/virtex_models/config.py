"""``ModelConfig``: the dataclass that describes and builds an objective.

Plain JSON-able dicts go in and out (:meth:`ModelConfig.to_dict` / :meth:`ModelConfig.from_dict`);
an unknown key or a value of the wrong type is a ``ValueError`` naming its dotted path.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from virtex_models.decoding import DecoderConfig
from virtex_models.objectives.token_classification import ClassificationLoss
from virtex_models.protocols import ObjectiveModule
from virtex_models.registry import get_objective, objectives
from virtex_models.strict_config import brief, from_dict
from virtex_models.textual import TextualConfig, TransformerTextualHead
from virtex_models.visual import VisualConfig
from virtex_models.vocab import VocabSpec

__all__ = ["ClassificationLoss", "ModelConfig", "ObjectiveKind"]

#: A registered objective's name (:func:`virtex_models.registry.objectives` lists them).
ObjectiveKind = str
#: The paper's main model; the default ``kind``.
DEFAULT_KIND = "bicaptioning"


@dataclass(kw_only=True, slots=True)
class ModelConfig:
    """An objective: its kind, visual backbone, textual head and default decoding.

    Attributes:
        kind: which objective :meth:`build` returns, a name of :mod:`virtex_models.registry`
            (``bicaptioning`` is VirTex's main model).
        visual: the backbone.
        textual: the Transformer head (ignored by the two classification kinds).
        decoder: default decoding of captioning objectives.
        classification_loss: loss of the two classification kinds: ``softmax`` (the original
            VirTex's, minus the mean log-softmax probability of each image's distinct labels)
            or ``bce`` (per-class sigmoid binary cross-entropy, summed over classes).
        options: settings of this ``kind`` only, checked against its registered options
            dataclass (e.g. ``{parallel_fraction: 0.75}`` for ``cappa``); empty for kinds
            without options.
    """

    kind: ObjectiveKind = DEFAULT_KIND
    visual: VisualConfig = field(default_factory=VisualConfig)
    textual: TextualConfig = field(default_factory=TextualConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    classification_loss: ClassificationLoss = "softmax"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str):
            raise ValueError(f"kind must be a string, got {brief(self.kind)}")
        self.parsed_options()  # an unknown kind or a bad option fails here, not at build time

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
        kind = data.get("kind", DEFAULT_KIND) if isinstance(data, dict) else DEFAULT_KIND
        if isinstance(kind, str) and kind not in objectives():
            raise ValueError(f"{where}.kind={brief(kind)} is not one of {tuple(objectives())}")
        return from_dict(cls, data, where)

    def parsed_options(self, where: str = "model.options") -> Any:
        """``options`` as the registered objective's options dataclass (``None`` if it has
        none).

        Raises:
            ValueError: an unknown ``kind``, or an unknown or wrongly typed option, naming
                ``<where>.<key>``.
        """
        info = get_objective(self.kind)
        if info.options is None:
            if self.options:
                raise ValueError(
                    f"{where}: objective {self.kind!r} takes no options, got {sorted(self.options)}"
                )
            return None
        return from_dict(info.options, self.options, where)

    def build(self, vocab: VocabSpec, num_classes: int | None = None) -> ObjectiveModule:
        """The objective of ``kind``: an ``nn.Module`` satisfying the ``Objective`` Protocol.

        Args:
            vocab: vocabulary layout (``size`` sets the head's vocabulary).
            num_classes: categories, required for kinds whose ``needs_classes`` is set
                (``multilabel_classification``).
        """
        info = get_objective(self.kind)
        return info.build(self, vocab, num_classes, self.parsed_options())

    def build_textual(self, vocab: VocabSpec, visual_channels: int) -> TransformerTextualHead:
        """The Transformer head of ``textual`` over a ``visual_channels``-channel grid."""
        return TransformerTextualHead(self.textual, vocab.size, visual_channels, vocab.pad)
