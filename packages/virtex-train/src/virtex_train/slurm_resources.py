"""What a SLURM pretraining job asks for: :class:`SlurmResources` and its submitit/sbatch form.

Used by :mod:`virtex_train.slurm` (the job) and ``virtex-train submit``
(:mod:`virtex_train.cli_submit`).
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "Cluster",
    "SlurmResources",
    "make_executor",
    "sbatch_script",
    "slurm_parameters",
]

Cluster = Literal["slurm", "local"]
_MEM = re.compile(r"^\d+[KMGT]?$")
_SBATCH_KEY = re.compile(r"^[a-z][a-z0-9_-]*$")


@dataclass(frozen=True, kw_only=True)
class SlurmResources:
    """What to ask Slurm for, and how the job reacts to interruptions. One task per GPU;
    ``gpus_per_node=0`` runs CPU tasks.

    Attributes:
        nodes: number of nodes.
        gpus_per_node: GPUs per node; each gets one task (``--ntasks-per-node``).
        time_min: time limit in minutes (``--time``).
        tasks_per_node: CPU jobs only (``gpus_per_node=0``): processes per node (default 1).
        partition, account, qos: ``--partition``, ``--account``, ``--qos`` (None: the site's
            default).
        cpus_per_task: ``--cpus-per-task`` (None: the site's default).
        mem: ``--mem`` per node in Slurm's notation (``64G``, ``500M``; ``0`` = all of it).
        job_name: ``--job-name``.
        signal_delay_s: SIGUSR2 this many seconds before the time limit (checkpoint + requeue).
        max_timeouts: requeues after a time-out before the job gives up (preemptions are not
            counted).
        collective_timeout_s: seconds a collective waits for the other ranks before it fails
            (``VIRTEX_COLLECTIVE_TIMEOUT_S`` in the tasks; None: that variable as the job
            inherits it, else ``distributed.DEFAULT_COLLECTIVE_TIMEOUT_S``, 300 s).
        max_peer_failures: requeues after a collective failed (a peer stalled or went away)
            before the job gives up.
        setup: shell lines run in the batch script before ``srun`` (``module load cuda``).
        extra: further ``#SBATCH`` options, e.g. ``{"constraint": "a100"}``.
    """

    nodes: int = 1
    gpus_per_node: int = 8
    time_min: int = 24 * 60
    tasks_per_node: int | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    job_name: str = "virtex"
    signal_delay_s: int = 120
    max_timeouts: int = 3
    collective_timeout_s: float | None = None
    max_peer_failures: int = 3
    setup: tuple[str, ...] = ()
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("nodes", "time_min"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("gpus_per_node", "signal_delay_s", "max_timeouts", "max_peer_failures"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.tasks_per_node is not None:
            if self.tasks_per_node < 1:
                raise ValueError(f"tasks_per_node must be >= 1, got {self.tasks_per_node}")
            if self.gpus_per_node and self.tasks_per_node != self.gpus_per_node:
                raise ValueError(
                    f"tasks_per_node={self.tasks_per_node} with gpus_per_node="
                    f"{self.gpus_per_node}: GPU jobs run exactly one task per GPU"
                )
        if self.collective_timeout_s is not None and not self.collective_timeout_s > 0:
            raise ValueError(f"collective_timeout_s must be > 0, got {self.collective_timeout_s}")
        if self.cpus_per_task is not None and self.cpus_per_task < 1:
            raise ValueError(f"cpus_per_task must be >= 1, got {self.cpus_per_task}")
        if self.mem is not None and not _MEM.match(self.mem):
            raise ValueError(
                f"mem={self.mem!r} is not a Slurm size (a number with an optional K/M/G/T "
                "suffix, e.g. 64G)"
            )
        if self.signal_delay_s >= self.time_min * 60:
            raise ValueError(
                f"signal_delay_s={self.signal_delay_s} is not shorter than the time limit "
                f"({self.time_min} min): the job would be signalled at its start"
            )
        for key in self.extra:
            if not _SBATCH_KEY.match(key):
                raise ValueError(f"extra sbatch option {key!r} is not an option name")

    @property
    def ntasks_per_node(self) -> int:
        if self.gpus_per_node:
            return self.gpus_per_node
        return self.tasks_per_node or 1

    @property
    def world_size(self) -> int:
        return self.nodes * self.ntasks_per_node


def slurm_parameters(resources: SlurmResources) -> dict[str, Any]:
    """The submitit ``SlurmExecutor`` parameters (sbatch option names) for ``resources``."""
    params: dict[str, Any] = {
        "job_name": resources.job_name,
        "nodes": resources.nodes,
        "ntasks_per_node": resources.ntasks_per_node,
        "time": resources.time_min,
        "signal_delay_s": resources.signal_delay_s,
    }
    if resources.gpus_per_node:
        params["gpus_per_node"] = resources.gpus_per_node
    optional = {
        "partition": resources.partition,
        "account": resources.account,
        "qos": resources.qos,
        "cpus_per_task": resources.cpus_per_task,
    }
    params.update({key: value for key, value in optional.items() if value is not None})
    if resources.setup:
        params["setup"] = list(resources.setup)
    # --requeue: sites with JobRequeue=0 would otherwise refuse the job's own `scontrol requeue`.
    additional: dict[str, Any] = {"requeue": True, **resources.extra}
    if resources.mem is not None:
        # Passed verbatim: submitit's own `mem` parameter converts numbers of GB only.
        additional["mem"] = resources.mem
    params["additional_parameters"] = additional
    return params


def _local_parameters(resources: SlurmResources) -> dict[str, Any]:
    if resources.nodes != 1:
        raise ValueError(f"the local executor runs one node, got nodes={resources.nodes}")
    params: dict[str, Any] = {
        "timeout_min": resources.time_min,
        "tasks_per_node": resources.ntasks_per_node,
        "gpus_per_node": resources.gpus_per_node,
    }
    if resources.cpus_per_task is not None:
        params["cpus_per_task"] = resources.cpus_per_task
    return params


def make_executor(
    output_dir: Path, resources: SlurmResources, *, cluster: Cluster = "slurm"
) -> Any:
    """A submitit executor writing its pickles and logs to ``output_dir/slurm``.

    ``cluster="local"`` runs the tasks as local processes (submitit's ``LocalExecutor``, same
    signal and requeue handling): what the fast tests use.
    """
    import submitit

    folder = Path(output_dir) / "slurm"
    executor: Any
    if cluster == "slurm":
        executor = submitit.SlurmExecutor(folder, max_num_timeout=resources.max_timeouts)
        executor.update_parameters(**slurm_parameters(resources))
    elif cluster == "local":
        executor = submitit.LocalExecutor(folder, max_num_timeout=resources.max_timeouts)
        executor.update_parameters(**_local_parameters(resources))
    else:
        raise ValueError(f"cluster must be 'slurm' or 'local', got {cluster!r}")
    return executor


def sbatch_script(output_dir: Path, resources: SlurmResources) -> str:
    """The batch script ``submit`` would hand to ``sbatch`` (needs no Slurm installation)."""
    from submitit.slurm.slurm import _make_sbatch_string

    folder = Path(output_dir) / "slurm"
    command = " ".join(
        [shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))]
    )
    text: str = _make_sbatch_string(command=command, folder=folder, **slurm_parameters(resources))
    return text
