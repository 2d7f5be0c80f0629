"""The original VirTex vocabulary: a SentencePiece BPE ``.vocab`` file as a ``CaptionTokenizer``.

VirTex trained its vocabulary with SentencePiece (``model_type=bpe``, ``<unk>`` at id 0 and
control symbols ``[SOS]``, ``[EOS]``, ``[MASK]`` at ids 1-3; padding reused id 0). Its
``coco_10k.vocab`` lists one ``piece<TAB>score`` per line in id order. SentencePiece's BPE
encoder repeatedly merges the adjacent pair of symbols whose concatenation is the best-scored
piece of the vocabulary; the same encoder is a ``tokenizers`` BPE model whose merge list holds
every split ``(a, b)`` of every piece, ranked by the piece's position. Words are split on
whitespace with ``▁`` prepended to every word (SentencePiece's "dummy prefix"), and a run of
unknown characters is one ``<unk>`` (``fuse_unk``), as in SentencePiece.

This reads the text ``.vocab`` file only (the binary ``.model`` needs protobuf); a test checks
the ids against the ``sentencepiece`` library when it is installed.
"""

from __future__ import annotations

import os
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from virtex_data.normalize import tokenizer_normalizer
from virtex_data.special_tokens import SpecialTokens
from virtex_data.tokenizer import CaptionTokenizer

__all__ = ["from_sentencepiece_vocab"]

_LEGACY_STRINGS = {"unk": "<unk>", "sos": "[SOS]", "eos": "[EOS]", "mask": "[MASK]"}


def from_sentencepiece_vocab(path: str | os.PathLike[str]) -> CaptionTokenizer:
    """Load a SentencePiece BPE ``.vocab`` file in the original VirTex layout.

    Args:
        path: the ``.vocab`` file (``piece<TAB>score`` per line, ids in line order).

    Returns:
        A tokenizer with ``SpecialTokens.legacy()`` ids (pad = unk = 0, sos 1, eos 2, mask 3).

    Raises:
        ValueError: naming the file and line when it is malformed or lacks the special pieces.
    """
    source = Path(path)
    pieces: list[str] = []
    for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), start=1):
        if not line:
            continue
        piece, _, score = line.rpartition("\t")
        if not piece:
            raise ValueError(f"{source}:{number}: expected 'piece<TAB>score', got {line!r}")
        try:
            float(score)
        except ValueError:
            raise ValueError(f"{source}:{number}: score {score!r} is not a number") from None
        pieces.append(piece)
    vocab = {piece: index for index, piece in enumerate(pieces)}
    if len(vocab) != len(pieces):
        raise ValueError(f"{source}: duplicate pieces")
    for name, piece in _LEGACY_STRINGS.items():
        expected = getattr(SpecialTokens.legacy(), name)
        if vocab.get(piece) != expected:
            raise ValueError(
                f"{source}: {piece} must be at id {expected}, found {vocab.get(piece)}"
            )
    controls = set(_LEGACY_STRINGS.values())
    ranked: list[tuple[int, int, int, str, str]] = []
    for piece, index in vocab.items():
        if piece in controls or len(piece) < 2:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                ranked.append((index, vocab[left], vocab[right], left, right))
    ranked.sort()
    merges = [(left, right) for _, _, _, left, right in ranked]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True))
    tokenizer.normalizer = tokenizer_normalizer()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(prepend_scheme="always")
    return CaptionTokenizer.wrap_legacy(tokenizer, dict(_LEGACY_STRINGS))
