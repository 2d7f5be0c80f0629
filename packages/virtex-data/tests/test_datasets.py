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


def test_mask_tokens_follows_the_proportions() -> None:
    generator = torch.Generator().manual_seed(0)
    config = MaskingConfig(proportion=0.15, mask=0.85, random=0.10, keep=0.05)
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


def test_mask_tokens_chooses_at_least_one_token() -> None:
    config = MaskingConfig(proportion=0.01, mask=1.0, random=0.0, keep=0.0)
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


def test_masking_config_rejects_bad_probabilities() -> None:
    with pytest.raises(ValueError, match="must be 1"):
        MaskingConfig(mask=0.5, random=0.1, keep=0.1)


def test_masked_lm_batch(synth_data: dict[str, Path], tokenizer: CaptionTokenizer) -> None:
    dataset = build_dataset(_config(synth_data), "train", "masked_lm", tokenizer)
    batch = dataset.collate([dataset[i] for i in range(6)])
    assert type(batch) is MaskedLMBatch
    assert batch.mlm_labels.shape == batch.tokens.shape
    for row in range(6):
        n = int(batch.lengths[row])
        assert (batch.mlm_labels[row, n:] == IGNORE_INDEX).all()
        assert (batch.mlm_labels[row, :n] != IGNORE_INDEX).sum() >= 1


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
    dataset = build_dataset(_config(synth_data), "val", "multilabel", tokenizer)
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
        build_dataset(config, "val", "multilabel", tokenizer)


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
    with pytest.raises(ValueError, match=r"data\.max_caption_length: expected an integer"):
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
