"""Datasets of every target, collate, ``build_dataset``, ``DataConfig`` and the sampler."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from virtex_data import (
    IGNORE_INDEX,
    CaptionBatch,
    DataConfig,
    MaskedLMBatch,
    MultilabelBatch,
    TokenClassificationBatch,
    build_dataset,
)
from virtex_data.datasets import MaskingConfig, mask_tokens
from virtex_data.lmdb_reader import LmdbReader
from virtex_data.sampler import ResumableSampler
from virtex_data.tokenizer import CaptionTokenizer
from virtex_data.transforms import TransformConfig


def _config(data: dict[str, Path], **changes: object) -> DataConfig:
    return DataConfig(
        train_lmdb=str(data["train"]),
        val_lmdb=str(data["val"]),
        tokenizer=str(data["tokenizer"]),
        train_instances=str(data["train_instances"]),
        val_instances=str(data["val_instances"]),
        transform=TransformConfig(image_size=16, eval_resize=18),
        **changes,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def tokenizer(synth_data: dict[str, Path]) -> CaptionTokenizer:
    return CaptionTokenizer.from_file(synth_data["tokenizer"])


def test_captioning_batch_is_sos_caption_eos_padded(
    synth_data: dict[str, Path], tokenizer: CaptionTokenizer
) -> None:
    dataset = build_dataset(_config(synth_data), "val", "captioning", tokenizer)
    assert dataset.num_classes is None
    reader = LmdbReader(synth_data["val"])
    samples = [dataset[i] for i in range(4)]
    batch = dataset.collate(samples)
    assert type(batch) is CaptionBatch
    assert batch.images.shape == (4, 3, 16, 16)
    special = tokenizer.special
    for row in range(4):
        n = int(batch.lengths[row])
        tokens = batch.tokens[row]
        assert tokens[0] == special.sos and tokens[n - 1] == special.eos
        assert (tokens[n:] == special.pad).all()
        # val uses the first caption, no flip: decoding gives it back (up to truncation)
        expected = tokenizer.decode(tokenizer.encode(reader[row].captions[0])[:28])
        assert tokenizer.decode(tokens[:n].tolist()) == expected
    assert batch.tokens.shape[1] == int(batch.lengths.max())
    assert batch.image_ids.tolist() == reader.image_ids[:4]


def test_long_captions_are_truncated_keeping_eos(
    synth_data: dict[str, Path], tokenizer: CaptionTokenizer
) -> None:
    dataset = build_dataset(
        _config(synth_data, max_caption_length=5), "train", "captioning", tokenizer
    )
    tokens = dataset.tokenize("a large red circle to the left of a small blue square")
    assert len(tokens) == 5 and tokens[-1] == tokenizer.special.eos
    assert tokens[0] == tokenizer.special.sos


def test_train_samples_pick_random_captions(
    synth_data: dict[str, Path], tokenizer: CaptionTokenizer
) -> None:
    dataset = build_dataset(_config(synth_data), "train", "captioning", tokenizer)
    torch.manual_seed(0)
    seen = {tuple(dataset[0].tokens.tolist()) for _ in range(30)}
    assert len(seen) >= 3


MASK_ID = 4
WORDS = torch.arange(10, 300)  # replacement pool, disjoint from the specials 0..4


def caption(words: int) -> torch.Tensor:
    """``[SOS] w1 .. w_words [EOS]`` with words 100, 101, ... (never in 0..9)."""
    return torch.tensor([2, *range(100, 100 + words), 3])


def binomial_tolerance(p: float, n: int) -> float:
    """Five binomial standard deviations of a rate estimated from ``n`` draws."""
    return 5 * (p * (1 - p) / n) ** 0.5


def test_original_masking_chooses_exactly_ceil_15_percent() -> None:
    # Reference count by integer arithmetic: ceil(15 * m / 100) (equal to the original's float
    # ceil(0.15 * m) for every caption length up to 30 tokens).
    config = MaskingConfig(mask=1.0, random=0.0, keep=0.0)
    assert config.procedure == "original"
    generator = torch.Generator().manual_seed(0)
    for words in range(1, 29):
        expected = -(-15 * words // 100)
        for _ in range(5):
            tokens = caption(words)
            inputs, labels = mask_tokens(tokens, config, MASK_ID, WORDS, generator)
            assert int((inputs == MASK_ID).sum()) == expected, words
            assert inputs[0] == 2 and inputs[-1] == 3
    # No word: nothing to choose.
    inputs, labels = mask_tokens(caption(0), config, MASK_ID, WORDS, generator)
    assert inputs.tolist() == [2, 3] and (labels == IGNORE_INDEX).all()


def test_original_masking_labels_only_mask_positions_and_rates() -> None:
    config = MaskingConfig()  # the default is the original's procedure with 0.85 / 0.10 / 0.05
    generator = torch.Generator().manual_seed(1)
    tokens = caption(20)  # ceil(0.15 * 20) = 3 chosen positions per draw
    draws = 4000
    masked = randomised = 0
    for _ in range(draws):
        inputs, labels = mask_tokens(tokens, config, MASK_ID, WORDS, generator)
        labelled = labels != IGNORE_INDEX
        assert torch.equal(labelled, inputs == MASK_ID)  # labels exactly where [MASK] went
        assert torch.equal(labels[labelled], tokens[labelled])
        changed = inputs != tokens
        masked += int(labelled.sum())
        randomised += int((changed & ~labelled).sum())
        # A random replacement comes from the pool (the pool holds no caption word here).
        assert all(10 <= int(t) < 300 for t in inputs[changed & ~labelled])
        assert int(changed.sum()) <= 3
    chosen = 3 * draws
    kept = chosen - masked - randomised
    for count, p in ((masked, 0.85), (randomised, 0.10), (kept, 0.05)):
        assert abs(count / chosen - p) < binomial_tolerance(p, chosen), (count, p)


def test_original_masking_single_choice_is_always_mask() -> None:
    config = MaskingConfig(mask=0.0, random=1.0, keep=0.0)  # [MASK] only by the single rule
    generator = torch.Generator().manual_seed(2)
    for words in range(1, 7):  # ceil(0.15 * m) == 1 for m <= 6
        for _ in range(50):
            inputs, labels = mask_tokens(caption(words), config, MASK_ID, WORDS, generator)
            assert int((inputs == MASK_ID).sum()) == 1
            assert int((labels != IGNORE_INDEX).sum()) == 1
    # Two chosen positions: the rule no longer applies, both are replaced and unlabelled.
    inputs, labels = mask_tokens(caption(7), config, MASK_ID, WORDS, generator)
    assert (labels == IGNORE_INDEX).all() and int((inputs == MASK_ID).sum()) == 0


def test_bernoulli_masking_follows_the_proportions() -> None:
    generator = torch.Generator().manual_seed(0)
    config = MaskingConfig(procedure="bernoulli", proportion=0.15, mask=0.85, random=0.10)
    tokens = torch.tensor([2] + list(range(10, 210)) + [3])
    replacements = torch.arange(5, 300)
    chosen = masked = randomised = kept = 0
    for _ in range(200):
        inputs, labels = mask_tokens(tokens, config, 4, replacements, generator)
        assert labels[0] == IGNORE_INDEX and labels[-1] == IGNORE_INDEX
        assert inputs[0] == 2 and inputs[-1] == 3
        picked = labels != IGNORE_INDEX
        assert torch.equal(labels[picked], tokens[picked])
        assert torch.equal(inputs[~picked], tokens[~picked])
        chosen += int(picked.sum())
        masked += int((inputs[picked] == 4).sum())
        same = inputs[picked] == tokens[picked]
        kept += int(same.sum())
        randomised += int((~same & (inputs[picked] != 4)).sum())
    total = 200 * 200
    assert abs(chosen / total - 0.15) < 0.01
    assert abs(masked / chosen - 0.85) < 0.02
    # random replacements equal to the original token count as kept (1 in 295)
    assert abs(randomised / chosen - 0.10) < 0.02
    assert abs(kept / chosen - 0.05) < 0.015


def test_bernoulli_masking_chooses_at_least_one_token() -> None:
    config = MaskingConfig(procedure="bernoulli", proportion=0.01, mask=1.0, random=0.0, keep=0.0)
    for seed in range(20):
        inputs, labels = mask_tokens(
            torch.tensor([2, 10, 11, 3]),
            config,
            4,
            torch.arange(5, 20),
            torch.Generator().manual_seed(seed),
        )
        assert (labels != IGNORE_INDEX).sum() >= 1
        assert (inputs == 4).sum() == (labels != IGNORE_INDEX).sum()


def test_masking_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="must be 1"):
        MaskingConfig(mask=0.5, random=0.1, keep=0.1)
    with pytest.raises(ValueError, match="masking.procedure"):
        DataConfig.from_dict({"masking": {"procedure": "span"}})
    with pytest.raises(ValueError, match="masking.random_pool"):
        DataConfig.from_dict({"masking": {"random_pool": "vocab"}})


@pytest.mark.parametrize("pool", ["words", "any"])
def test_masked_lm_random_replacements_pool(
    synth_data: dict[str, Path], tokenizer: CaptionTokenizer, pool: str
) -> None:
    """Our pool never draws a special token; the original's (``any``) draws every id."""
    masking = MaskingConfig(procedure="bernoulli", proportion=1.0, mask=0.0, random=1.0, keep=0.0)
    masking.random_pool = pool  # type: ignore[assignment]
    dataset = build_dataset(_config(synth_data, masking=masking), "train", "masked_lm", tokenizer)
    special = set(tokenizer.special.as_dict().values())
    drawn: set[int] = set()
    for _ in range(12):
        for index in range(len(dataset)):
            sample = dataset[index]
            drawn.update(int(t) for t in sample.tokens[1:-1])
    if pool == "words":
        assert not drawn & special
        assert len(drawn) > tokenizer.vocab_size // 2  # the pool is the whole word vocabulary
    else:
        assert special <= drawn


def test_masked_lm_batch(synth_data: dict[str, Path], tokenizer: CaptionTokenizer) -> None:
    dataset = build_dataset(_config(synth_data), "train", "masked_lm", tokenizer)
    batch = dataset.collate([dataset[i] for i in range(6)])
    assert type(batch) is MaskedLMBatch
    assert batch.mlm_labels.shape == batch.tokens.shape
    for row in range(6):
        n = int(batch.lengths[row])
        assert (batch.mlm_labels[row, n:] == IGNORE_INDEX).all()
        labelled = batch.mlm_labels[row, :n] != IGNORE_INDEX
        # The original procedure labels exactly the [MASK] positions.
        assert torch.equal(labelled, batch.tokens[row, :n] == tokenizer.special.mask)


def test_token_classification_multi_hot_is_the_bag_of_tokens(
    synth_data: dict[str, Path], tokenizer: CaptionTokenizer
) -> None:
    dataset = build_dataset(_config(synth_data), "val", "token_classification", tokenizer)
    batch = dataset.collate([dataset[i] for i in range(3)])
    assert type(batch) is TokenClassificationBatch
    assert batch.token_labels.shape == (3, tokenizer.vocab_size)
    special = set(tokenizer.special.as_dict().values())
    for row in range(3):
        n = int(batch.lengths[row])
        expected = {int(t) for t in batch.tokens[row, :n]} - special
        assert set(torch.nonzero(batch.token_labels[row]).flatten().tolist()) == expected


def test_multilabel_targets_come_from_coco_instances(
    synth_data: dict[str, Path], tokenizer: CaptionTokenizer
) -> None:
    dataset = build_dataset(_config(synth_data), "val", "multilabel_classification", tokenizer)
    assert dataset.num_classes == 6
    batch = dataset.collate([dataset[i] for i in range(len(dataset))])
    assert type(batch) is MultilabelBatch
    instances = json.loads(synth_data["val_instances"].read_text())
    expected: dict[int, set[int]] = {}
    for annotation in instances["annotations"]:
        expected.setdefault(annotation["image_id"], set()).add(annotation["category_id"] - 1)
    for row, image_id in enumerate(batch.image_ids.tolist()):
        got = set(torch.nonzero(batch.multilabels[row]).flatten().tolist())
        assert got == expected[image_id]


def test_multilabel_needs_instances(
    synth_data: dict[str, Path], tokenizer: CaptionTokenizer
) -> None:
    config = _config(synth_data)
    config.val_instances = None
    with pytest.raises(ValueError, match="val_instances"):
        build_dataset(config, "val", "multilabel_classification", tokenizer)


def test_old_multilabel_target_name_warns_and_works(
    synth_data: dict[str, Path], tokenizer: CaptionTokenizer
) -> None:
    # The target was called "multilabel" while the objective was "multilabel_classification".
    with pytest.warns(DeprecationWarning, match="'multilabel_classification'"):
        dataset = build_dataset(_config(synth_data), "val", "multilabel", tokenizer)
    assert type(dataset.collate([dataset[0]])) is MultilabelBatch


def test_unknown_target_names_the_known_ones(
    synth_data: dict[str, Path], tokenizer: CaptionTokenizer
) -> None:
    with pytest.raises(ValueError, match=r"unknown target 'caption'.*captioning, masked_lm"):
        build_dataset(_config(synth_data), "val", "caption", tokenizer)


def test_dataloader_with_workers_and_two_datasets_on_one_file(
    synth_data: dict[str, Path], tokenizer: CaptionTokenizer
) -> None:
    config = _config(synth_data)
    captioning = build_dataset(config, "train", "captioning", tokenizer)
    masked = build_dataset(config, "train", "masked_lm", tokenizer)
    assert masked[0].image.shape == captioning[0].image.shape  # both readers in one process
    pickle.loads(pickle.dumps(captioning))
    loader = DataLoader(captioning, batch_size=8, num_workers=2, collate_fn=captioning.collate)
    batches = list(loader)
    assert sum(len(b) for b in batches) == len(captioning)
    assert all(isinstance(b, CaptionBatch) for b in batches)


def test_data_config_round_trips_and_rejects_unknown_keys() -> None:
    config = DataConfig(max_caption_length=20)
    config.transform.crop_scale = (0.3, 1.0)
    again = DataConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    with pytest.raises(ValueError, match=r"unknown key data\.transform\.crop_scal"):
        DataConfig.from_dict({"transform": {"crop_scal": [0.2, 1.0]}})
    with pytest.raises(ValueError, match=r"data\.max_caption_length must be an integer"):
        DataConfig.from_dict({"max_caption_length": "30"})


# ----------------------------------------------------------------------------- sampler
@pytest.mark.parametrize(
    ("length", "replicas", "drop_last"),
    [(23, 4, False), (23, 4, True), (8, 2, False), (3, 5, False)],
)
def test_sampler_matches_distributed_sampler(length: int, replicas: int, drop_last: bool) -> None:
    data = list(range(length))
    for rank in range(replicas):
        ours = ResumableSampler(length, replicas, rank, seed=7, drop_last=drop_last)
        theirs = DistributedSampler(data, replicas, rank, seed=7, drop_last=drop_last)  # type: ignore[arg-type]
        for epoch in (0, 3):
            ours.set_epoch(epoch)
            theirs.set_epoch(epoch)
            assert list(ours) == list(theirs)
            assert len(ours) == len(theirs)


def test_sampler_shards_cover_the_dataset_once() -> None:
    shards = [list(ResumableSampler(20, 4, rank, seed=1)) for rank in range(4)]
    assert sorted(sum(shards, [])) == list(range(20))


def test_sampler_resumes_mid_epoch() -> None:
    sampler = ResumableSampler(50, 2, 1, seed=3)
    sampler.set_epoch(2)
    full = list(sampler)
    iterator = iter(sampler)
    first = [next(iterator) for _ in range(9)]
    sampler.advance(8)  # the trainer consumed 8 (one was only prefetched)
    state = sampler.state_dict()
    assert state["position"] == 8 and state["epoch"] == 2
    resumed = ResumableSampler(50, 2, 1, seed=3)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    assert len(resumed) == len(full) - 8
    assert first[:8] + list(resumed) == full
    resumed.set_epoch(3)
    assert len(list(resumed)) == len(full)  # the next epoch starts from the beginning


def test_sampler_position_without_advance_counts_yielded() -> None:
    sampler = ResumableSampler(10, shuffle=False)
    iterator = iter(sampler)
    [next(iterator) for _ in range(4)]
    assert sampler.state_dict()["position"] == 4


def test_sampler_rejects_state_of_another_setup() -> None:
    state = ResumableSampler(10, 2, 0).state_dict()
    with pytest.raises(ValueError, match="num_replicas=2"):
        ResumableSampler(10, 4, 0).load_state_dict(state)
