"""Where this process sits in a (possibly distributed) run: :class:`DistEnv` and :func:`detect_env`.

One description of the distributed environment for virtex-train (pre-training under ``torchrun``
or SLURM) and virtex-eval (probes under ``torchrun``). It lives here because both import
virtex-models and neither may import the other. Environment detection (first match wins):

- ``torchrun``: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and ``MASTER_ADDR``/``MASTER_PORT``).
- SLURM (``srun``, e.g. through submitit): ``SLURM_PROCID``, ``SLURM_NTASKS``,
  ``SLURM_LOCALID``; ``MASTER_ADDR`` must be set (submitit and most launch scripts export it),
  else the first host of ``SLURM_JOB_NODELIST`` is used when it is a plain host name.
- otherwise a single process.

A SLURM batch script that runs ``python`` directly (no ``srun``) sees ``SLURM_NTASKS`` but only
one process exists; such a run is treated as single-process when ``SLURM_STEP_ID`` is absent.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.distributed as dist

__all__ = ["DEFAULT_PORT", "DistEnv", "detect_env"]

DEFAULT_PORT = 29500


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in a (possibly distributed) run.

    Attributes:
        rank: global rank.
        world_size: number of processes.
        local_rank: rank on this node (selects the GPU).
        master_addr: rendezvous host (``None`` for a single process).
        master_port: rendezvous port.
        launcher: ``single``, ``torchrun`` or ``slurm``.
        device: the device this process computes on (set by whoever joins the group;
            virtex-train's ``setup`` returns it instead).
        owns_group: whether the caller created the process group (and :meth:`close` destroys
            it); virtex-eval's ``init_distributed`` sets it.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str | None = None
    master_port: int = DEFAULT_PORT
    launcher: Literal["single", "torchrun", "slurm"] = "single"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"), compare=False)
    owns_group: bool = field(default=False, compare=False)

    @property
    def is_main(self) -> bool:
        """Rank 0 writes logs and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        """Wait for every rank (nothing to do in a single process)."""
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        """Destroy the process group if :attr:`owns_group` (once)."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            object.__setattr__(self, "owns_group", False)  # frozen: close happens once


def _int(environ: Mapping[str, str], key: str) -> int:
    try:
        return int(environ[key])
    except ValueError:
        raise ValueError(f"environment variable {key}={environ[key]!r} is not an integer") from None


def detect_env(environ: Mapping[str, str] | None = None) -> DistEnv:
    """Read the launcher's environment variables (see the module docstring).

    Raises:
        ValueError: a malformed variable, or a multi-task SLURM step without a master address.
    """
    env = os.environ if environ is None else environ
    port = _int(env, "MASTER_PORT") if "MASTER_PORT" in env else DEFAULT_PORT
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(
            rank=_int(env, "RANK"),
            world_size=_int(env, "WORLD_SIZE"),
            local_rank=_int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0,
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=port,
            launcher="torchrun",
        )
    if (
        "SLURM_PROCID" in env
        and "SLURM_NTASKS" in env
        and ("SLURM_STEP_ID" in env or "SLURM_STEPID" in env)
    ):
        world = _int(env, "SLURM_NTASKS")
        if world > 1:
            address = env.get("MASTER_ADDR")
            if address is None:
                nodes = env.get("SLURM_JOB_NODELIST", env.get("SLURM_NODELIST", ""))
                first = nodes.split(",")[0]
                if not first or "[" in first:
                    raise ValueError(
                        "SLURM run with several tasks but no MASTER_ADDR: export MASTER_ADDR "
                        "(e.g. $(scontrol show hostnames $SLURM_JOB_NODELIST | head -n1))"
                    )
                address = first
            return DistEnv(
                rank=_int(env, "SLURM_PROCID"),
                world_size=world,
                local_rank=_int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0,
                master_addr=address,
                master_port=port,
                launcher="slurm",
            )
    return DistEnv()
