"""A distributed sampler that resumes mid-epoch.

Index order is exactly ``torch.utils.data.DistributedSampler``'s (same permutation for a given
``seed + epoch``, same padding and striding over ranks), so swapping one for the other changes
nothing; in addition :meth:`ResumableSampler.state_dict` records the position within the epoch
and :meth:`ResumableSampler.load_state_dict` makes the next iteration continue from there.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

__all__ = ["ResumableSampler"]


class ResumableSampler(Sampler[int]):
    """Shuffled (or ordered) indices for one rank, resumable within an epoch.

    Args:
        length: dataset size.
        num_replicas: world size (default: from ``torch.distributed`` if initialised, else 1).
        rank: this rank (default: from ``torch.distributed`` if initialised, else 0).
        shuffle: permute indices each epoch with ``seed + epoch``.
        seed: base seed; must be the same on every rank.
        drop_last: drop the tail so every rank gets the same number of distinct indices (else
            the first indices are repeated to pad, as ``DistributedSampler`` does).

    Position: the trainer should report what it has consumed with :meth:`advance` (samples of
    this rank) after each step; ``state_dict()`` then records exactly that. Without
    ``advance``, the position is the number of indices yielded, which runs ahead of training by
    what DataLoader workers have prefetched.
    """

    def __init__(
        self,
        length: int,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if num_replicas is None:
            num_replicas = (
                dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
            )
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} must be in [0, {num_replicas})")
        self.length = length
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        if drop_last and length % num_replicas:
            self.num_samples = math.ceil((length - num_replicas) / num_replicas)
        else:
            self.num_samples = math.ceil(length / num_replicas)
        self.total_size = self.num_samples * num_replicas
        self._start = 0  # where the next iteration begins (set by load_state_dict)
        self._yielded = 0
        self._iteration_start = 0
        self._consumed: int | None = None

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch`` (call before every epoch, on every rank)."""
        if epoch != self.epoch:
            self._start = 0
        self.epoch = epoch

    def indices(self) -> list[int]:
        """This rank's full index list of the current epoch."""
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.length, generator=generator).tolist()
        else:
            order = list(range(self.length))
        if not self.drop_last:
            padding = self.total_size - len(order)
            if padding <= len(order):
                order += order[:padding]
            else:
                order += (order * math.ceil(padding / len(order)))[:padding]
        else:
            order = order[: self.total_size]
        return order[self.rank : self.total_size : self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        start, self._start = self._start, 0
        self._iteration_start = self._yielded = start
        self._consumed = None
        for index in self.indices()[start:]:
            self._yielded += 1
            yield index

    def __len__(self) -> int:
        return self.num_samples - self._start

    def advance(self, samples: int) -> None:
        """Record that training consumed ``samples`` more samples of this rank in this epoch."""
        base = self._consumed if self._consumed is not None else self._iteration_start
        self._consumed = base + samples

    def state_dict(self) -> dict[str, Any]:
        """``{"epoch", "position", "seed", "num_replicas", "length", "shuffle", "drop_last"}``."""
        position = self._consumed if self._consumed is not None else self._yielded
        return {
            "epoch": self.epoch,
            "position": int(position),
            "seed": self.seed,
            "num_replicas": self.num_replicas,
            "length": self.length,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the recorded epoch at the recorded position on the next iteration.

        Raises:
            ValueError: if the dataset size, world size, seed or ordering flags differ (the
                recorded position would then point at other samples).
        """
        for key in ("seed", "num_replicas", "length", "shuffle", "drop_last"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"sampler state has {key}={state[key]!r} but this sampler has "
                    f"{getattr(self, key)!r}"
                )
        position = int(state["position"])
        if not 0 <= position <= self.num_samples:
            raise ValueError(f"sampler position {position} outside [0, {self.num_samples}]")
        self.epoch = int(state["epoch"])
        self._start = self._iteration_start = self._yielded = position
        self._consumed = None
