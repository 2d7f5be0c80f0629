"""Ids of the special tokens of a vocabulary."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SpecialTokens"]


@dataclass(frozen=True, slots=True)
class SpecialTokens:
    """Ids of the special tokens, as plain ints.

    ``virtex_models`` never sees a tokenizer: it receives these five ints. New vocabularies use the
    default layout, where ``pad != unk`` so that real unknown tokens still count in the loss (the
    original VirTex vocabulary had ``pad == unk == 0``, which silently dropped them).

    Attributes:
        pad: right-padding id of ``tokens``; never counted in any loss.
        unk: id of out-of-vocabulary pieces.
        sos: start of sentence, the first token of every caption.
        eos: end of sentence, the last token of every (untruncated or truncated) caption.
        mask: replaces tokens chosen for masked language modelling.
    """

    pad: int = 0
    unk: int = 1
    sos: int = 2
    eos: int = 3
    mask: int = 4

    #: The token strings, in the order their ids are assigned by ``build-vocab``.
    PAD_TOKEN = "[PAD]"
    UNK_TOKEN = "[UNK]"
    SOS_TOKEN = "[SOS]"
    EOS_TOKEN = "[EOS]"
    MASK_TOKEN = "[MASK]"

    def __post_init__(self) -> None:
        ids = self.as_dict()
        for name, value in ids.items():
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"SpecialTokens.{name} must be a non-negative int, got {value!r}")
        distinct = [self.sos, self.eos, self.mask, self.pad]
        if len(set(distinct)) != len(distinct):
            raise ValueError(f"SpecialTokens: pad, sos, eos and mask must differ, got {ids}")

    @classmethod
    def legacy(cls) -> SpecialTokens:
        """The layout of the original VirTex vocabulary: pad = unk = 0, sos 1, eos 2, mask 3."""
        return cls(pad=0, unk=0, sos=1, eos=2, mask=3)

    @property
    def is_legacy(self) -> bool:
        """Whether padding and unknown share an id (unknown tokens then never reach a loss)."""
        return self.pad == self.unk

    def as_dict(self) -> dict[str, int]:
        """``{"pad": ..., "unk": ..., "sos": ..., "eos": ..., "mask": ...}``."""
        return {
            "pad": self.pad,
            "unk": self.unk,
            "sos": self.sos,
            "eos": self.eos,
            "mask": self.mask,
        }

    def strings(self) -> dict[str, str]:
        """Token string per field name, e.g. ``{"pad": "[PAD]", ...}``."""
        return {
            "pad": self.PAD_TOKEN,
            "unk": self.UNK_TOKEN,
            "sos": self.SOS_TOKEN,
            "eos": self.EOS_TOKEN,
            "mask": self.MASK_TOKEN,
        }
