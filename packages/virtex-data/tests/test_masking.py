"""Masked-LM masking and the datasets' construction, beyond test_datasets.py: BERT's fallback
choice, the exact random-replacement pool, caption-length bounds and missing instances.

Expected values are worked out by hand or counted from what the test builds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from virtex_data import IGNORE_INDEX
from virtex_data.datasets import (
    CaptioningDataset,
    MaskedLMDataset,
    MaskingConfig,
    MultilabelDataset,
    TokenClassificationDataset,
    mask_tokens,
)
from virtex_data.lmdb_reader import LmdbReader
from virtex_data.tokenizer import CaptionTokenizer
from virtex_data.transforms import EvalTransform, TransformConfig

MASK_ID = 4


@pytest.fixture(scope="module")
def tokenizer(synth_data: dict[str, Path]) -> CaptionTokenizer:
    return CaptionTokenizer.from_file(synth_data["tokenizer"])


def _parts(synth_data: dict[str, Path], tokenizer: CaptionTokenizer) -> dict[str, object]:
    return {
        "reader": LmdbReader(synth_data["train"]),
        "tokenizer": tokenizer,
        "transform": EvalTransform(TransformConfig(image_size=16, eval_resize=18)),
    }


def test_bernoulli_fallback_chooses_exactly_one_uniform_position() -> None:
    # With proportion 1e-9 the Bernoulli draws choose nothing (P ~ 5e-9 over the whole test):
    # the fallback then picks exactly one of the 5 word positions, each about 1/5 of the time.
    config = MaskingConfig(procedure="bernoulli", proportion=1e-9, mask=1.0, random=0.0, keep=0.0)
    tokens = torch.tensor([2, 10, 11, 12, 13, 14, 3])
    generator = torch.Generator().manual_seed(0)
    hits = [0] * 7
    draws = 500
    for _ in range(draws):
        inputs, labels = mask_tokens(tokens, config, MASK_ID, torch.arange(5, 20), generator)
        labelled = (labels != IGNORE_INDEX).nonzero().flatten().tolist()
        assert len(labelled) == 1
        assert inputs.tolist() == [
            MASK_ID if i == labelled[0] else t for i, t in enumerate(tokens.tolist())
        ]
        hits[labelled[0]] += 1
    assert hits[0] == hits[6] == 0
    # Binomial(500, 1/5): mean 100, sd ~8.9; 5 sd either side.
    assert all(55 < count < 145 for count in hits[1:6]), hits


def test_original_masking_of_a_one_word_caption_masks_that_word() -> None:
    inputs, labels = mask_tokens(
        torch.tensor([2, 10, 3]), MaskingConfig(), MASK_ID, torch.arange(5, 9)
    )
    assert inputs.tolist() == [2, MASK_ID, 3]
    assert labels.tolist() == [IGNORE_INDEX, 10, IGNORE_INDEX]


@pytest.mark.parametrize("pool", ["words", "any"])
def test_random_replacements_draw_the_whole_pool(
    synth_data: dict[str, Path], tokenizer: CaptionTokenizer, pool: str
) -> None:
    """``words``: every id but the specials; ``any``: every id (the original's)."""
    masking = MaskingConfig(procedure="bernoulli", proportion=1.0, mask=0.0, random=1.0, keep=0.0)
    # A name read from a config file at run time: equal to the literal, not the same object.
    masking.random_pool = "".join(list(pool))  # type: ignore[assignment]
    dataset = MaskedLMDataset(**_parts(synth_data, tokenizer), masking=masking)  # type: ignore[arg-type]
    special = set(tokenizer.special.as_dict().values())
    expected = set(range(tokenizer.vocab_size))
    if pool == "words":
        expected -= special
    torch.manual_seed(0)
    drawn: set[int] = set()
    draws = 0
    while draws < 6000:  # ~60 draws per id of a 100-token vocabulary: P(an id never drawn) < 1e-20
        for index in range(len(dataset)):
            sample = dataset[index]
            drawn.update(int(t) for t in sample.tokens[1:-1])
            draws += len(sample.tokens) - 2
    assert drawn == expected


def test_caption_length_must_leave_room_for_one_word(
    synth_data: dict[str, Path], tokenizer: CaptionTokenizer
) -> None:
    with pytest.raises(ValueError, match="max_caption_length must be at least 3, got 2"):
        CaptioningDataset(**_parts(synth_data, tokenizer), max_caption_length=2)  # type: ignore[arg-type]
    dataset = CaptioningDataset(**_parts(synth_data, tokenizer), max_caption_length=3)  # type: ignore[arg-type]
    tokens = dataset.tokenize("a large red circle")
    special = tokenizer.special
    assert tokens.tolist() == [special.sos, tokenizer.encode("a large red circle")[0], special.eos]


def _instances_without_the_first(
    count: int, synth_data: dict[str, Path], tmp_path: Path
) -> tuple[Path, list[int]]:
    """The train instances file without the LMDB's first ``count`` images; and the LMDB's ids."""
    instances = json.loads(synth_data["train_instances"].read_text())
    image_ids = list(LmdbReader(synth_data["train"]).image_ids)
    gone = set(image_ids[:count])
    instances["images"] = [image for image in instances["images"] if image["id"] not in gone]
    instances["annotations"] = [a for a in instances["annotations"] if a["image_id"] not in gone]
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(instances))
    return path, image_ids


def test_multilabel_names_images_missing_from_the_instances(
    synth_data: dict[str, Path], tokenizer: CaptionTokenizer, tmp_path: Path
) -> None:
    path, image_ids = _instances_without_the_first(2, synth_data, tmp_path)
    gone = set(image_ids[:2])
    with pytest.raises(ValueError, match=r"has no entry for 2 image\(s\)") as error:
        MultilabelDataset(**_parts(synth_data, tokenizer), instances=path)  # type: ignore[arg-type]
    assert str(path) in str(error.value) and str(sorted(gone)[0]) in str(error.value)
    # Complete instances: every image has its category multi-hot.
    dataset = MultilabelDataset(
        **_parts(synth_data, tokenizer), instances=synth_data["train_instances"]
    )  # type: ignore[arg-type]
    assert dataset.num_classes == len(
        json.loads(synth_data["train_instances"].read_text())["categories"]
    )


def test_every_dataset_keeps_30_tokens_and_random_captions_by_default(
    synth_data: dict[str, Path], tokenizer: CaptionTokenizer
) -> None:
    long_caption = " ".join(["circle"] * 40)
    datasets = [
        CaptioningDataset(**_parts(synth_data, tokenizer)),  # type: ignore[arg-type]
        MaskedLMDataset(**_parts(synth_data, tokenizer)),  # type: ignore[arg-type]
        TokenClassificationDataset(**_parts(synth_data, tokenizer)),  # type: ignore[arg-type]
        MultilabelDataset(**_parts(synth_data, tokenizer), instances=synth_data["train_instances"]),  # type: ignore[arg-type]
    ]
    for dataset in datasets:
        assert len(dataset.tokenize(long_caption)) == 30, type(dataset).__name__
        assert dataset.random_caption is True


def test_multi_hot_targets_are_zero_or_one(
    synth_data: dict[str, Path], tokenizer: CaptionTokenizer
) -> None:
    special = set(tokenizer.special.as_dict().values())
    tokens_dataset = TokenClassificationDataset(**_parts(synth_data, tokenizer))  # type: ignore[arg-type]
    for index in range(3):
        sample = tokens_dataset[index]
        expected = torch.zeros(tokenizer.vocab_size)
        for token in set(sample.tokens.tolist()) - special:
            expected[token] = 1.0
        assert sample.target is not None and torch.equal(sample.target, expected)
    instances = json.loads(synth_data["train_instances"].read_text())
    categories = sorted(c["id"] for c in instances["categories"])
    labels_dataset = MultilabelDataset(
        **_parts(synth_data, tokenizer), instances=synth_data["train_instances"]
    )  # type: ignore[arg-type]
    for index in range(3):
        sample = labels_dataset[index]
        expected = torch.zeros(len(categories))
        for annotation in instances["annotations"]:
            if annotation["image_id"] == sample.image_id:
                expected[categories.index(annotation["category_id"])] = 1.0
        assert sample.target is not None and torch.equal(sample.target, expected)


def test_procedure_read_at_run_time_is_honoured() -> None:
    # "original" built at run time (as when read from a config file): equal to, not identical
    # with, the literal. With mask=0 and 3 chosen positions of 20 words, the original procedure
    # replaces them and labels none; BERT's would label all 3.
    name = "".join(["orig", "inal"])
    config = MaskingConfig(procedure=name, mask=0.0, random=1.0, keep=0.0)  # type: ignore[arg-type]
    tokens = torch.tensor([2, *range(100, 120), 3])
    generator = torch.Generator().manual_seed(3)
    for _ in range(20):
        inputs, labels = mask_tokens(tokens, config, MASK_ID, torch.arange(5, 9), generator)
        assert (labels == IGNORE_INDEX).all()
        assert int((inputs != tokens).sum()) == 3


@pytest.mark.parametrize("procedure", ["original", "bernoulli"])
@pytest.mark.parametrize("length", [0, 1, 2])
def test_captions_without_words_are_left_alone(procedure: str, length: int) -> None:
    # Only positions 1..n-2 can be chosen: with n <= 2 there is none, whatever the procedure.
    tokens = torch.tensor([2, 3][:length], dtype=torch.long)
    config = MaskingConfig(procedure=procedure)  # type: ignore[arg-type]
    inputs, labels = mask_tokens(tokens, config, MASK_ID, torch.arange(5, 9))
    assert torch.equal(inputs, tokens)
    assert (labels == IGNORE_INDEX).all() and len(labels) == length


def test_original_masks_a_single_chosen_word_whatever_the_draw() -> None:
    # 5 words: ceil(0.15 * 5) = 1 chosen, which the original always masks (its rule for one
    # chosen token), even with a 50% chance of [MASK] per token. "original" built at run time.
    name = "".join(["orig", "inal"])
    config = MaskingConfig(procedure=name, mask=0.5, random=0.3, keep=0.2)  # type: ignore[arg-type]
    tokens = torch.tensor([2, 100, 101, 102, 103, 104, 3])
    generator = torch.Generator().manual_seed(0)
    for _ in range(100):
        inputs, labels = mask_tokens(tokens, config, MASK_ID, torch.arange(5, 9), generator)
        masked = (inputs == MASK_ID).nonzero().flatten().tolist()
        assert len(masked) == 1 and (inputs != tokens).sum() == 1
        assert (labels != IGNORE_INDEX).nonzero().flatten().tolist() == masked


def test_bernoulli_single_chosen_word_follows_the_proportions() -> None:
    # One word: BERT's procedure chooses it every time (fallback) and labels it, but masks it
    # only with probability 0.5 (400 draws: standard deviation 0.025; bounds at 6 of them).
    config = MaskingConfig(procedure="bernoulli", mask=0.5, random=0.3, keep=0.2)
    tokens = torch.tensor([2, 100, 3])
    generator = torch.Generator().manual_seed(0)
    masked = 0
    for _ in range(400):
        inputs, labels = mask_tokens(tokens, config, MASK_ID, torch.arange(5, 9), generator)
        assert labels.tolist() == [IGNORE_INDEX, 100, IGNORE_INDEX]
        masked += int(inputs[1] == MASK_ID)
    assert 0.35 < masked / 400 < 0.65


def test_bernoulli_chooses_a_varying_number_of_words() -> None:
    # 20 words, each chosen with probability 0.15 (one at least): the number labelled has mean
    # 3 + 0.85**20 = 3.04 and standard deviation ~1.6 per caption, ~0.07 over 500 captions;
    # the original procedure would label 3 or fewer every time.
    config = MaskingConfig(procedure="bernoulli")
    tokens = torch.tensor([2, *range(100, 120), 3])
    generator = torch.Generator().manual_seed(1)
    counts = []
    for _ in range(500):
        _, labels = mask_tokens(tokens, config, MASK_ID, torch.arange(5, 9), generator)
        counts.append(int((labels != IGNORE_INDEX).sum()))
    assert abs(sum(counts) / 500 - 3.04) < 0.45
    assert len(set(counts)) >= 5 and max(counts) >= 6


def test_missing_instances_message_lists_the_first_five(
    synth_data: dict[str, Path], tokenizer: CaptionTokenizer, tmp_path: Path
) -> None:
    path, image_ids = _instances_without_the_first(7, synth_data, tmp_path)
    with pytest.raises(ValueError, match=r"has no entry for 7 image\(s\)") as error:
        MultilabelDataset(**_parts(synth_data, tokenizer), instances=path)  # type: ignore[arg-type]
    assert str(error.value).endswith(f"e.g. {image_ids[:5]}")
