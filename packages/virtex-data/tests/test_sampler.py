"""ResumableSampler: per-rank shards, epoch seeding, defaults from the process group, resume.

The reference is ``torch.utils.data.DistributedSampler`` (a second implementation of the same
order) and counts worked out by hand; see also the sampler tests in test_datasets.py.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from virtex_data import sampler as sampler_module
from virtex_data.sampler import ResumableSampler


@pytest.mark.parametrize(
    ("length", "replicas", "drop_last", "shuffle"),
    [
        (8, 2, True, True),  # divisible: drop_last drops nothing
        (9, 3, True, False),
        (10, 4, True, True),  # 2 dropped
        (2, 7, False, True),  # more padding than samples: the order is repeated
        (1, 3, False, False),
        (10, 4, False, False),
        (5, 1, False, True),
    ],
)
def test_every_layout_matches_distributed_sampler(
    length: int, replicas: int, drop_last: bool, shuffle: bool
) -> None:
    data = list(range(length))
    for rank in range(replicas):
        ours = ResumableSampler(
            length, replicas, rank, shuffle=shuffle, seed=5, drop_last=drop_last
        )
        theirs = DistributedSampler(
            data,  # type: ignore[arg-type]
            replicas,
            rank,
            shuffle=shuffle,
            seed=5,
            drop_last=drop_last,
        )
        for epoch in (0, 1, 4):
            ours.set_epoch(epoch)
            theirs.set_epoch(epoch)
            assert list(ours) == list(theirs), (rank, epoch)
            assert len(ours) == len(theirs) == ours.num_samples


def test_each_sample_once_per_epoch_and_padding_by_hand() -> None:
    # 10 samples over 4 ranks: 3 each, 12 slots, so 2 samples (the first two of the epoch's
    # order) appear twice and the others once; with drop_last 2 per rank, 8 distinct samples.
    for epoch in (0, 1):
        shards = []
        for rank in range(4):
            sampler = ResumableSampler(10, 4, rank, seed=11)
            sampler.set_epoch(epoch)
            shards.append(list(sampler))
        counts = Counter(index for shard in shards for index in shard)
        assert set(counts) == set(range(10))
        assert sorted(counts.values()) == [1] * 8 + [2] * 2
        dropped = []
        for rank in range(4):
            sampler = ResumableSampler(10, 4, rank, seed=11, drop_last=True)
            sampler.set_epoch(epoch)
            dropped.extend(sampler)
        assert len(dropped) == len(set(dropped)) == 8


def test_epochs_are_seeded_by_seed_plus_epoch() -> None:
    def order(seed: int, epoch: int) -> list[int]:
        sampler = ResumableSampler(30, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(3, 2) == order(3, 2) == order(4, 1) == order(5, 0)
    assert order(3, 2) != order(3, 3)
    assert sorted(order(3, 2)) == list(range(30))
    assert list(ResumableSampler(6, shuffle=False)) == [0, 1, 2, 3, 4, 5]


def test_world_and_rank_come_from_the_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sampler_module.dist, "is_available", lambda: True)
    monkeypatch.setattr(sampler_module.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(sampler_module.dist, "get_world_size", lambda: 3)
    monkeypatch.setattr(sampler_module.dist, "get_rank", lambda: 2)
    sampler = ResumableSampler(7, seed=1)
    assert (sampler.num_replicas, sampler.rank) == (3, 2)
    theirs = DistributedSampler(list(range(7)), 3, 2, seed=1)  # type: ignore[arg-type]
    assert list(sampler) == list(theirs)
    # Explicit arguments win over the group.
    assert (ResumableSampler(7, 2, 1).num_replicas, ResumableSampler(7, 2, 1).rank) == (2, 1)


@pytest.mark.parametrize("available", [True, False])
def test_without_a_process_group_one_replica_rank_zero(
    monkeypatch: pytest.MonkeyPatch, available: bool
) -> None:
    def no_group() -> int:
        raise RuntimeError("Default process group has not been initialized")

    monkeypatch.setattr(sampler_module.dist, "is_available", lambda: available)
    monkeypatch.setattr(sampler_module.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(sampler_module.dist, "get_world_size", no_group)
    monkeypatch.setattr(sampler_module.dist, "get_rank", no_group)
    sampler = ResumableSampler(5, shuffle=False)
    assert (sampler.num_replicas, sampler.rank) == (1, 0)
    assert list(sampler) == [0, 1, 2, 3, 4]
    assert not dist.is_initialized()


def test_rank_must_be_in_range() -> None:
    with pytest.raises(ValueError, match=r"rank 3 must be in \[0, 3\)"):
        ResumableSampler(10, 3, 3)
    with pytest.raises(ValueError, match=r"rank -1 must be in \[0, 3\)"):
        ResumableSampler(10, 3, -1)
    assert ResumableSampler(10, 3, 2).rank == 2
    assert ResumableSampler(10, 3, 0).rank == 0


def _resumed(position: int, epoch: int = 2) -> tuple[ResumableSampler, list[int]]:
    """A fresh sampler (20 samples, 2 ranks, rank 1) loaded at ``position`` of ``epoch``."""
    original = ResumableSampler(20, 2, 1, seed=9)
    original.set_epoch(epoch)
    full = list(original)
    state = original.state_dict()
    state["position"] = position
    resumed = ResumableSampler(20, 2, 1, seed=9)
    resumed.load_state_dict(state)
    return resumed, full


def test_set_epoch_keeps_the_position_of_the_same_epoch_only() -> None:
    # The trainer calls set_epoch(epoch) before every epoch, the resumed one included.
    resumed, full = _resumed(4)
    resumed.set_epoch(2)
    assert len(resumed) == 6
    assert list(resumed) == full[4:]
    # The iteration consumed the position: the same epoch again starts from 0.
    assert len(resumed) == 10
    assert list(resumed) == full
    resumed, full = _resumed(4)
    resumed.set_epoch(3)
    assert len(resumed) == 10
    assert len(list(resumed)) == 10 and list(resumed) != full


@pytest.mark.parametrize("position", [0, 10])
def test_load_accepts_the_ends_of_the_epoch(position: int) -> None:
    resumed, full = _resumed(position)
    assert len(resumed) == 10 - position
    assert list(resumed) == full[position:]
    assert resumed.epoch == 2


@pytest.mark.parametrize("position", [-1, 11])
def test_load_rejects_a_position_outside_the_epoch(position: int) -> None:
    with pytest.raises(ValueError, match=rf"sampler position {position} outside \[0, 10\]"):
        _resumed(position)


@pytest.mark.parametrize(
    ("key", "value"),
    [("seed", 8), ("length", 21), ("shuffle", False), ("drop_last", True), ("num_replicas", 4)],
)
def test_load_rejects_each_setting_that_differs(key: str, value: object) -> None:
    state = ResumableSampler(20, 2, 1, seed=9).state_dict()
    state[key] = value
    with pytest.raises(ValueError, match=rf"sampler state has {key}={value!r} but"):
        ResumableSampler(20, 2, 1, seed=9).load_state_dict(state)


def test_state_dict_by_hand() -> None:
    sampler = ResumableSampler(20, 2, 1, shuffle=False, seed=9, drop_last=True)
    sampler.set_epoch(4)
    assert sampler.state_dict() == {
        "epoch": 4,
        "position": 0,
        "seed": 9,
        "num_replicas": 2,
        "length": 20,
        "shuffle": False,
        "drop_last": True,
    }


def test_advance_accumulates_from_where_the_iteration_started() -> None:
    resumed, full = _resumed(4)
    iterator = iter(resumed)
    assert [next(iterator) for _ in range(5)] == full[4:9]  # prefetched ahead of training
    assert resumed.state_dict()["position"] == 9  # without advance: what was yielded
    resumed.advance(2)
    resumed.advance(1)
    assert resumed.state_dict()["position"] == 7  # 4 + 2 + 1 consumed
    # A fresh iteration starts counting again from its own start.
    iterator = iter(resumed)
    next(iterator)
    assert resumed.state_dict()["position"] == 1
    resumed.advance(1)
    assert resumed.state_dict()["position"] == 1


def test_advance_before_the_first_iteration_counts_from_the_epoch_start() -> None:
    sampler = ResumableSampler(10, 2, 0, seed=1)
    sampler.advance(3)
    assert sampler.state_dict()["position"] == 3


def test_default_seed_is_distributed_samplers() -> None:
    theirs = DistributedSampler(list(range(12)), 3, 1)  # type: ignore[arg-type]
    assert list(ResumableSampler(12, 3, 1)) == list(theirs)


def test_rank_far_above_the_world_is_refused() -> None:
    # Not only the first rank past the end (a `!=` check would pass 5 of 3).
    with pytest.raises(ValueError, match=r"rank 5 must be in \[0, 3\)"):
        ResumableSampler(10, 3, 5)


def test_an_earlier_epoch_starts_from_its_beginning() -> None:
    # A loaded position belongs to its epoch: moving back to epoch 1 (not only forward) drops it.
    resumed, _ = _resumed(4)
    resumed.set_epoch(1)
    assert len(resumed) == 10
    reference = ResumableSampler(20, 2, 1, seed=9)
    reference.set_epoch(1)
    assert list(resumed) == list(reference)


def test_settings_compare_by_value_not_identity() -> None:
    # Values past CPython's small-int cache, built at run time (as read from a checkpoint):
    # equal but not the same objects, so an identity check would refuse the state or drop the
    # position.
    length, seed, epoch = int("100000"), int("123456"), int("1000")
    original = ResumableSampler(length, 2, 0, seed=seed)
    original.set_epoch(epoch)
    full = original.indices()
    state = original.state_dict()
    state.update(length=int("100000"), seed=int("123456"), epoch=int("1000"), position=7)
    resumed = ResumableSampler(int("100000"), 2, 0, seed=int("123456"))
    resumed.load_state_dict(state)
    resumed.set_epoch(int("1000"))
    assert len(resumed) == len(full) - 7
    assert next(iter(resumed)) == full[7]
