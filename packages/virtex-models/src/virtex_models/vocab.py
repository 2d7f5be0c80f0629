"""The vocabulary as the models see it: a size and the ids of the special tokens, as ints."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["VocabSpec"]


@dataclass(frozen=True, slots=True)
class VocabSpec:
    """Vocabulary size and special-token ids (plain ints; ``virtex_models`` has no tokenizer).

    ``virtex_train`` maps ``virtex_data.SpecialTokens`` plus the tokenizer's size to this class.
    New vocabularies keep ``pad != unk`` so that unknown tokens count in the losses; the original
    VirTex layout (:meth:`legacy`) has ``pad == unk == 0``.

    Attributes:
        size: number of token ids ``V``.
        pad: right-padding id; never counted in any loss.
        unk: out-of-vocabulary id.
        sos: start of sentence (first token of every caption, first input when decoding).
        eos: end of sentence.
        mask: the masked-LM replacement token.
    """

    size: int
    pad: int
    unk: int
    sos: int
    eos: int
    mask: int

    def __post_init__(self) -> None:
        for name in ("size", "pad", "unk", "sos", "eos", "mask"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"VocabSpec.{name} must be an int, got {value!r}")
        if self.size < 1:
            raise ValueError(f"VocabSpec.size must be positive, got {self.size}")
        for name in ("pad", "unk", "sos", "eos", "mask"):
            value = getattr(self, name)
            if not 0 <= value < self.size:
                raise ValueError(f"VocabSpec.{name}={value} is outside [0, {self.size})")
        distinct = (self.pad, self.sos, self.eos, self.mask)
        if len(set(distinct)) != len(distinct):
            raise ValueError(f"VocabSpec: pad, sos, eos and mask must differ, got {self}")

    @classmethod
    def legacy(cls, size: int = 10000) -> VocabSpec:
        """The original VirTex layout: pad = unk = 0, sos 1, eos 2, mask 3."""
        return cls(size=size, pad=0, unk=0, sos=1, eos=2, mask=3)

    @property
    def pad_is_unk(self) -> bool:
        """Whether padding and unknown share an id (then unknown tokens cannot count in a loss)."""
        return self.pad == self.unk
