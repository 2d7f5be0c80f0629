"""Process groups for the probes: one process per device under ``torchrun``.

Outside ``torchrun`` (no ``WORLD_SIZE`` in the environment, or ``WORLD_SIZE=1``) everything here
degrades to a single process and no process group is created. Under ``torchrun`` the group uses
NCCL when CUDA is available and gloo otherwise. Work is sharded by strided indices
(``rank, rank + world, ...``), so shards differ in size by at most one row and
:func:`gather_rows` can put rows back in dataset order.
"""

from __future__ import annotations

import os
from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor

from virtex_models.dist_env import DistEnv

__all__ = ["DistEnv", "all_reduce_sum", "gather_rows", "init_distributed", "shard_indices"]


def _pick_device(device: str | None, local_rank: int) -> torch.device:
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    chosen = torch.device(device)
    if chosen.type == "cuda" and chosen.index is None:
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return chosen


def init_distributed(device: str | None = None) -> DistEnv:
    """Join (or create) the process group ``torchrun`` describes, if any.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``None``/``"auto"`` (CUDA when available);
            under ``torchrun`` CUDA devices are picked by ``LOCAL_RANK``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = _pick_device(device, local_rank)
    if dist.is_available() and dist.is_initialized():
        return _env(dist.get_rank(), dist.get_world_size(), local_rank, chosen, owns_group=False)
    if world <= 1:
        return _env(0, 1, local_rank, chosen, owns_group=False)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    backend = "nccl" if chosen.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return _env(dist.get_rank(), dist.get_world_size(), local_rank, chosen, owns_group=True)


def _env(
    rank: int, world_size: int, local_rank: int, device: torch.device, *, owns_group: bool
) -> DistEnv:
    launcher: Literal["single", "torchrun"] = "torchrun" if world_size > 1 else "single"
    return DistEnv(
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        launcher=launcher,
        device=device,
        owns_group=owns_group,
    )


def shard_indices(total: int, rank: int, world_size: int) -> list[int]:
    """The dataset indices of one rank: ``rank, rank + world_size, ...`` below ``total``."""
    return list(range(rank, total, world_size))


def gather_rows(local: Tensor, total: int, ctx: DistEnv) -> Tensor:
    """Gather the rows each rank computed for :func:`shard_indices` into dataset order.

    Args:
        local: ``(n_rank, ...)`` rows of this rank's shard, in shard order.
        total: number of rows over all ranks.
        ctx: the process group; with one process ``local`` is returned as is.

    Returns:
        ``(total, ...)`` on every rank, on ``local``'s device.
    """
    if not ctx.distributed:
        return local
    world = ctx.world_size
    longest = -(-total // world)
    padded = local.new_zeros((longest, *local.shape[1:]))
    padded[: local.shape[0]] = local
    # NCCL gathers only CUDA tensors, gloo only CPU tensors.
    wire = padded.to(ctx.device) if ctx.device.type == "cuda" else padded.cpu()
    parts = [torch.empty_like(wire) for _ in range(world)]
    dist.all_gather(parts, wire)
    out = local.new_empty((total, *local.shape[1:]))
    for rank, part in enumerate(parts):
        count = len(range(rank, total, world))
        out[rank::world] = part[:count].to(out.device)
    return out


def all_reduce_sum(value: Tensor, ctx: DistEnv) -> Tensor:
    """Sum of ``value`` over ranks (a copy; ``value`` itself is unchanged)."""
    if not ctx.distributed:
        return value.clone()
    wire = value.detach().clone()
    wire = wire.to(ctx.device) if ctx.device.type == "cuda" else wire.cpu()
    dist.all_reduce(wire)
    return wire.to(value.device)
