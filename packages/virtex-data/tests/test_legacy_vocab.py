"""The original VirTex (SentencePiece BPE) vocabulary file as a CaptionTokenizer."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from virtex_data import SpecialTokens
from virtex_data.legacy_vocab import from_sentencepiece_vocab
from virtex_data.normalize import normalize_caption
from virtex_data.synth import describe, sample_scene

TOY = [
    ("<unk>", 0), ("[SOS]", 0), ("[EOS]", 0), ("[MASK]", 0), ("▁a", 0), ("▁c", -1), ("at", -2),
    ("▁cat", -3), ("▁", -4), ("a", -5), ("c", -6), ("t", -7),
]  # fmt: skip


def _write(path: Path, rows: list[tuple[str, float]]) -> Path:
    path.write_text("".join(f"{piece}\t{score}\n" for piece, score in rows), encoding="utf-8")
    return path


def test_hand_computed_merges(tmp_path: Path) -> None:
    tokenizer = from_sentencepiece_vocab(_write(tmp_path / "toy.vocab", TOY))
    assert tokenizer.special == SpecialTokens.legacy()
    # "▁cat": ▁c (id 5) beats at (id 6); then ▁c+at makes ▁cat (id 7)
    assert tokenizer.encode("A Cat") == [4, 7]
    # no pair of "▁tac" is a piece: single symbols
    assert tokenizer.encode("tac") == [8, 11, 9, 10]
    # a run of unknown characters is one <unk> (id 0), as in SentencePiece
    assert tokenizer.encode("a dog") == [4, 8, 0]
    assert tokenizer.decode([1, 4, 7, 2, 0]) == "a cat"


def test_malformed_vocab_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"bad.vocab:2: score"):
        from_sentencepiece_vocab(_write(tmp_path / "bad.vocab", [("<unk>", 0), ("x", "y")]))  # type: ignore[list-item]
    swapped = [TOY[1], TOY[0], *TOY[2:]]
    with pytest.raises(ValueError, match=r"<unk> must be at id 0"):
        from_sentencepiece_vocab(_write(tmp_path / "swapped.vocab", swapped))


def test_ids_match_the_sentencepiece_library(tmp_path: Path) -> None:
    try:
        import sentencepiece as spm
    except ImportError as error:  # a declared test extra: the reference check must not skip
        pytest.fail(
            f"sentencepiece is missing ({error}): it is part of virtex-data's test extra "
            "(pip install -e 'packages/virtex-data[test]')",
            pytrace=False,
        )
    rng = random.Random(0)
    captions = [c for _ in range(1500) for c in describe(sample_scene(rng, 64), rng)]
    corpus = tmp_path / "captions.txt"
    corpus.write_text("\n".join(captions) + "\n")
    spm.SentencePieceTrainer.train(
        input=str(corpus), vocab_size=200, model_prefix=str(tmp_path / "coco"),
        model_type="bpe", character_coverage=1.0, bos_id=-1, eos_id=-1,
        control_symbols="[SOS],[EOS],[MASK]", minloglevel=2, num_threads=1,
    )  # fmt: skip
    reference = spm.SentencePieceProcessor(model_file=str(tmp_path / "coco.model"))
    ours = from_sentencepiece_vocab(tmp_path / "coco.vocab")
    held_out = [c for _ in range(200) for c in describe(sample_scene(rng, 64), rng)]
    held_out += ["A  LARGE red circle!!", "zebra ☃ quickly", "the leftmost shape, again."]
    for caption in held_out:
        text = normalize_caption(caption)
        assert ours.encode(caption) == reference.encode(text), caption
