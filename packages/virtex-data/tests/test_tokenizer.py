"""Caption normalisation, the BPE tokenizer and ``build-vocab``."""

from __future__ import annotations

import csv
import json
import pickle
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from virtex_data import SpecialTokens
from virtex_data.cli import main
from virtex_data.normalize import NORMALIZATION_VERSION, normalize_caption, tokenizer_normalizer
from virtex_data.tokenizer import CaptionTokenizer

WORDS = (
    "a",
    "man",
    "dog",
    "cat",
    "sitting",
    "on",
    "the",
    "left",
    "right",
    "of",
    "two",
    "red",
    "blue",
    "table",
    "with",
    "bright",
    "hat",
    "near",
    "running",
    "street",
    "car",
    "woman",
    "holding",
    "umbrella",
    "kitchen",
    "pizza",
    "plate",
)


def _captions(count: int = 3000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 12))]
        if rng.random() < 0.3:
            words[rng.randrange(len(words))] += rng.choice([",", ".", "'s", "!"])
        out.append(" ".join(words))
    return out


@pytest.fixture(scope="module")
def tokenizer() -> CaptionTokenizer:
    return CaptionTokenizer.train(_captions(), vocab_size=120)


STRANGE = [
    "  A Café\tOn the   LEFT ",
    "ﬁne Ⅻ naïve résumé\n",
    "Ångström x\u00a0y",
    "\u2003\t ",
    "İstanbul ß DŽ",
    "A  DOG's hat,  near  the Table!",
]


@pytest.mark.parametrize("text", STRANGE)
def test_python_and_tokenizer_normalisation_agree(text: str) -> None:
    assert tokenizer_normalizer().normalize_str(text) == normalize_caption(text)


def test_normalisation_strips_accents_lowercases_and_collapses_whitespace() -> None:
    assert normalize_caption("  A Café\tOn the   LEFT ") == "a cafe on the left"
    assert normalize_caption("ﬁne") == "fine"  # NFKC ligature
    assert normalize_caption(" \t\n") == ""
    assert NORMALIZATION_VERSION == 1


def test_special_tokens_sit_at_their_pinned_ids(tokenizer: CaptionTokenizer) -> None:
    special = tokenizer.special
    assert special == SpecialTokens()
    for name, token in special.strings().items():
        assert tokenizer.id_to_token(getattr(special, name)) == token


def test_vocabulary_reaches_requested_size(tokenizer: CaptionTokenizer) -> None:
    assert tokenizer.vocab_size == 120


def test_encode_decode_round_trips_normalised_captions(tokenizer: CaptionTokenizer) -> None:
    for caption in _captions(200, seed=1) + ["The MAN's  Dog, near the car."]:
        ids = tokenizer.encode(caption)
        assert all(i not in tokenizer.special.as_dict().values() for i in ids)
        assert tokenizer.decode(ids) == normalize_caption(caption)


def test_unknown_characters_map_to_unk_and_decode_drops_specials(
    tokenizer: CaptionTokenizer,
) -> None:
    ids = tokenizer.encode("dog ☃")
    assert tokenizer.special.unk in ids
    special = tokenizer.special
    assert tokenizer.decode([special.sos, *tokenizer.encode("red dog"), special.eos]) == "red dog"


def test_frequent_words_are_single_tokens(tokenizer: CaptionTokenizer) -> None:
    assert len(tokenizer.encode("a man sitting on the table")) == 6


def test_encode_batch_equals_encode(tokenizer: CaptionTokenizer) -> None:
    texts = _captions(50, seed=2)
    assert tokenizer.encode_batch(texts) == [tokenizer.encode(t) for t in texts]


def test_json_file_and_pickle_round_trip(tokenizer: CaptionTokenizer, tmp_path: Path) -> None:
    path = tmp_path / "sub" / "tok.json"
    tokenizer.save(path)
    loaded = CaptionTokenizer.from_file(path)
    assert loaded.sha256 == tokenizer.sha256
    assert json.loads(path.read_text())["normalization_version"] == NORMALIZATION_VERSION
    clone = pickle.loads(pickle.dumps(tokenizer))
    text = "two red dogs near the car"
    assert clone.encode(text) == loaded.encode(text) == tokenizer.encode(text)
    assert clone.special == tokenizer.special


def test_plain_tokenizers_json_is_accepted(tokenizer: CaptionTokenizer) -> None:
    loaded = CaptionTokenizer.from_json(tokenizer.backend.to_str())
    assert loaded.special == SpecialTokens()
    assert loaded.encode("a red dog") == tokenizer.encode("a red dog")


def test_legacy_layout_trains_and_wraps() -> None:
    legacy = CaptionTokenizer.train(_captions(500), vocab_size=80, special=SpecialTokens.legacy())
    assert legacy.special.as_dict() == {"pad": 0, "unk": 0, "sos": 1, "eos": 2, "mask": 3}
    assert [legacy.id_to_token(i) for i in range(4)] == ["[UNK]", "[SOS]", "[EOS]", "[MASK]"]
    assert CaptionTokenizer.from_json(legacy.to_json()).special.is_legacy
    wrapped = CaptionTokenizer.wrap_legacy(legacy.backend)
    assert wrapped.encode("red dog") == legacy.encode("red dog")


def test_wrapping_checks_special_strings(tokenizer: CaptionTokenizer) -> None:
    with pytest.raises(ValueError, match=r"special token sos should be '\[SOS\]' at id 7"):
        CaptionTokenizer(tokenizer.backend, SpecialTokens(pad=0, unk=1, sos=7, eos=3, mask=4))


def test_unreadable_tokenizer_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        CaptionTokenizer.from_file(bad)


def _write_sources(tmp_path: Path) -> list[Path]:
    captions = _captions(300)
    coco = tmp_path / "captions.json"
    coco.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a.jpg"}],
                "annotations": [{"image_id": 1, "caption": c} for c in captions[:100]],
            }
        )
    )
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text(
        "".join(json.dumps({"image": "b.jpg", "caption": c}) + "\n" for c in captions[100:200])
    )
    table = tmp_path / "pairs.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption"])
        writer.writerows([["c.jpg", c] for c in captions[200:]])
    return [coco, jsonl, table]


def test_build_vocab_cli_reads_coco_jsonl_and_csv(tmp_path: Path) -> None:
    files = _write_sources(tmp_path)
    output = tmp_path / "tok.json"
    args = ["build-vocab", "--vocab-size", "90", "--output", str(output)]
    args += ["--captions", str(files[0]), "--captions", str(files[1]), str(files[2])]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "300 captions" in result.output
    tokenizer = CaptionTokenizer.from_file(output)
    assert tokenizer.vocab_size == 90


def test_build_vocab_cli_rejects_unknown_file_type(tmp_path: Path) -> None:
    bad = tmp_path / "captions.txt"
    bad.write_text("a dog")
    result = CliRunner().invoke(main, ["build-vocab", "--captions", str(bad), "--output", "x"])
    assert result.exit_code != 0
    assert "captions.txt" in str(result.exception) + result.output
