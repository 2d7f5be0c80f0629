"""Process-group set-up under ``torchrun`` or SLURM, and the few collectives the trainer needs.

Where this process sits (``torchrun``, SLURM ``srun`` or a single process) is read by
:func:`virtex_models.dist_env.detect_env` into a :class:`~virtex_models.dist_env.DistEnv` (both
re-exported here; the detection rules are in that module's docstring).

Collective timeout: a collective (the gradient all-reduce, a barrier) that waits longer than
``VIRTEX_COLLECTIVE_TIMEOUT_S`` seconds (default 300) for another rank fails with an error instead
of waiting until the job's time limit: a peer that stopped answering (a stalled process, a node
that froze) then ends the run, and ``virtex-train submit`` requeues it (``virtex_train.slurm``).
The timeout must exceed the longest gap between two collectives of a healthy run (rank 0 writing
a checkpoint, a first ``torch.compile``). gloo honours it in every collective; with NCCL the
process group watchdog enforces it and ends the process.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist

from virtex_models.dist_env import DistEnv, detect_env

__all__ = [
    "COLLECTIVE_TIMEOUT_ENV",
    "DEFAULT_COLLECTIVE_TIMEOUT_S",
    "DistEnv",
    "all_reduce_max",
    "all_reduce_sum",
    "barrier",
    "collective_timeout",
    "detect_env",
    "is_peer_failure",
    "setup",
    "teardown",
]

#: Seconds a collective waits for the other ranks before it fails.
DEFAULT_COLLECTIVE_TIMEOUT_S = 300.0
COLLECTIVE_TIMEOUT_ENV = "VIRTEX_COLLECTIVE_TIMEOUT_S"
#: The longest timeout accepted: about 31 years, far below ``datetime.timedelta``'s limit.
_MAX_TIMEOUT_S = 1e9
#: Messages of gloo/NCCL errors that mean another rank stopped answering or went away.
_PEER_FAILURE_MESSAGES = (
    "Timed out",
    "timed out",
    "Connection reset by peer",
    "Connection closed by peer",
    "Connection refused",
    "Broken pipe",
    # gloo, when a pair's timeout fires inside a broadcast (DDP's buffer sync) rather than a recv:
    # seen in the two-node stall test on a loaded machine.
    "Application timeout caused pair closure",
    "NCCL communicator was aborted",
)


def collective_timeout(environ: Mapping[str, str] | None = None) -> datetime.timedelta:
    """``VIRTEX_COLLECTIVE_TIMEOUT_S`` (seconds, > 0), else ``DEFAULT_COLLECTIVE_TIMEOUT_S``.

    Raises:
        ValueError: the variable is not a positive number.
    """
    env = os.environ if environ is None else environ
    text = env.get(COLLECTIVE_TIMEOUT_ENV)
    if text is None:
        return datetime.timedelta(seconds=DEFAULT_COLLECTIVE_TIMEOUT_S)
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    # ``inf`` or 1e20 would pass ``> 0`` and fail in timedelta with an OverflowError traceback.
    if not 0 < seconds <= _MAX_TIMEOUT_S:
        raise ValueError(
            f"environment variable {COLLECTIVE_TIMEOUT_ENV}={text!r} is not a positive number "
            f"of seconds (at most {_MAX_TIMEOUT_S:.0f})"
        )
    return datetime.timedelta(seconds=seconds)


def is_peer_failure(error: BaseException) -> bool:
    """Whether ``error`` says another rank stopped answering or went away (a collective timed
    out, a connection was reset), as opposed to a failure of this rank's own work."""
    if not isinstance(error, RuntimeError):
        return False
    if isinstance(error, dist.DistError):
        return True
    return any(text in str(error) for text in _PEER_FAILURE_MESSAGES)


def setup(env: DistEnv, device_type: str | None = None) -> torch.device:
    """Initialise the process group (if distributed) and return this process's device.

    gloo on CPU, NCCL on CUDA. ``device_type`` defaults to CUDA when available. Collectives fail
    after :func:`collective_timeout` (see the module docstring).
    """
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if device_type == "cuda":
        torch.cuda.set_device(env.local_rank)
        device = torch.device("cuda", env.local_rank)
    else:
        device = torch.device(device_type)
    if env.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend,
            init_method=f"tcp://{env.master_addr}:{env.master_port}",
            rank=env.rank,
            world_size=env.world_size,
            timeout=collective_timeout(),
        )
    return device


def teardown() -> None:
    """Destroy the process group if one was initialised."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if _active():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (in place; identity for one process)."""
    if _active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(value: Any) -> list[Any]:
    """``[value of rank 0, value of rank 1, ...]`` (``[value]`` for one process)."""
    if not _active():
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Maximum over ranks (in place; identity for one process)."""
    if _active():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor
