"""Pretraining on SLURM through submitit: one task per GPU, checkpoint and requeue on interruption.

``virtex-train submit CONFIG [key=value ...] --output-dir OUT --nodes N --gpus-per-node G ...``
pickles a :class:`TrainJob` and submits it with ``sbatch`` (through submitit; no batch script to
write). Every task runs ``run_pretraining(config, OUT, resume=True)``, so a requeued job
continues from ``OUT/checkpoints/latest``.

Interruption, step by step:

1. Slurm sends ``SIGUSR2`` (submitit's ``--signal=USR2@<delay>``) ``signal_delay_s`` seconds
   before the time limit; submitit's ``job._interrupt()`` sends the same signal (after a SIGTERM
   for a preemption).
2. :class:`TrainJob` turns it into the trainer's graceful stop (its SIGTERM handler): every rank
   finishes the current step, rank 0 writes a checkpoint, ``run_pretraining`` returns.
3. Rank 0 then hands over to submitit's handler, which calls :meth:`TrainJob.checkpoint`, dumps
   the returned submission and runs ``scontrol requeue``. Submitit counts time-outs
   (``max_timeouts``, then the job ends with an error); preemptions requeue without limit.
4. The requeued job starts again from the sbatch script, and ``resume=True`` loads the newest
   checkpoint.

A SIGTERM without SIGUSR2 (``scancel``, or a preemption the cluster itself requeues) also stops
the trainer after a checkpoint; the task then raises :class:`RunInterrupted` instead of returning
a result, so an unfinished run never looks finished.

A peer that stops answering (a stalled process, a frozen node) makes the collectives of the
other ranks fail after ``collective_timeout_s`` (``virtex_train.distributed``); the first rank
that sees such a failure runs ``scontrol requeue`` (at most ``max_peer_failures`` times per job),
which ends every task, the stalled one included, and the job resumes from its latest checkpoint.
A node that dies is noticed by Slurm itself, which requeues the job.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import zlib
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from virtex_train.config import ExperimentConfig

from virtex_train.slurm_resources import (  # re-exported: scripts import them from here
    Cluster,
    SlurmResources,
    make_executor,
    sbatch_script,
    slurm_parameters,
)
from virtex_train.slurm_signals import UsrSignalBridge

__all__ = [
    "RunInterrupted",
    "SlurmResources",
    "TaskEnvironment",
    "TrainFunction",
    "TrainJob",
    "checkpoint_step",
    "make_executor",
    "rendezvous_port",
    "sbatch_script",
    "slurm_parameters",
    "submit",
]

#: How long a rank other than 0 waits to be killed by the requeue rank 0 asked for.
_REQUEUE_GRACE_S = 300.0
#: How long rank 0 waits for a SIGUSR2 that may follow a SIGTERM (submitit's preemption pair).
_USR_AFTER_TERM_S = 2.0


class TrainFunction(Protocol):
    """``virtex_train.pretrain.run_pretraining``'s signature (tests pass stand-ins)."""

    def __call__(
        self, config: ExperimentConfig, output_dir: Path, *, resume: bool = ...
    ) -> Path: ...


class RunInterrupted(RuntimeError):
    """Training stopped before ``train.num_steps`` (a signal) and no requeue was asked for."""


def _default_train_function() -> TrainFunction:
    from virtex_train.pretrain import run_pretraining

    return run_pretraining


# ------------------------------------------------------------------------------ in the job


def rendezvous_port(job_id: str) -> int:
    """A port in [20000, 60000) that every task of a job derives from its id alone."""
    return 20000 + zlib.crc32(job_id.encode()) % 40000


@dataclass(frozen=True)
class TaskEnvironment:
    """This task's place in the job, in ``torchrun``'s terms."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    master_addr: str
    master_port: int

    @classmethod
    def from_submitit(cls) -> TaskEnvironment:
        """Read submitit's ``JobEnvironment`` (Slurm or local); only valid inside a job."""
        import submitit

        job = submitit.JobEnvironment()
        return cls(
            rank=job.global_rank,
            local_rank=job.local_rank,
            world_size=job.num_tasks,
            local_world_size=max(1, job.num_tasks // max(1, job.num_nodes)),
            master_addr=job.hostnames[0],
            master_port=rendezvous_port(str(job.job_id)),
        )

    def export(self, environ: MutableMapping[str, str]) -> None:
        """Set ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``MASTER_*``.

        ``virtex_train.distributed.detect_env`` reads these first, as under ``torchrun``.
        """
        environ.update(
            RANK=str(self.rank),
            LOCAL_RANK=str(self.local_rank),
            WORLD_SIZE=str(self.world_size),
            LOCAL_WORLD_SIZE=str(self.local_world_size),
            MASTER_ADDR=self.master_addr,
            MASTER_PORT=str(self.master_port),
        )


def checkpoint_step(output_dir: Path) -> int | None:
    """The step of the checkpoint ``OUT/checkpoints/latest`` names (None: no checkpoint yet)."""
    pointer = Path(output_dir) / "checkpoints" / "latest"
    try:
        name = pointer.read_text().strip()
    except FileNotFoundError:
        return None
    match = re.fullmatch(r"step_(\d+)\.pt", name)
    if match is None:
        raise ValueError(f"{pointer} names {name!r}, not a step_<N>.pt checkpoint")
    return int(match.group(1))


class TrainJob:
    """The callable submitit runs in every task: ``run_pretraining(config, OUT, resume=True)``.

    Args:
        config: the resolved experiment.
        output_dir: the run directory (shared by every node).
        train_function: what to run (default ``virtex_train.pretrain.run_pretraining``).
        collective_timeout_s: exported as ``VIRTEX_COLLECTIVE_TIMEOUT_S`` (None: left as is).
        max_peer_failures: ``scontrol requeue`` after a failed collective at most this many
            times per job (:meth:`requeue_after_peer_failure`).
    """

    def __init__(
        self,
        config: ExperimentConfig,
        output_dir: Path,
        train_function: TrainFunction | None = None,
        *,
        collective_timeout_s: float | None = None,
        max_peer_failures: int = 3,
    ) -> None:
        self.config = config
        self.output_dir = Path(output_dir)
        self.train_function = train_function
        self.collective_timeout_s = collective_timeout_s
        self.max_peer_failures = max_peer_failures
        self._phase: Literal["setup", "running", "done"] = "setup"

    def __getstate__(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "output_dir": self.output_dir,
            "train_function": self.train_function,
            "collective_timeout_s": self.collective_timeout_s,
            "max_peer_failures": self.max_peer_failures,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.config = state["config"]
        self.output_dir = state["output_dir"]
        self.train_function = state["train_function"]
        # Jobs pickled before these existed (a requeue across an upgrade) get the defaults.
        self.collective_timeout_s = state.get("collective_timeout_s")
        self.max_peer_failures = state.get("max_peer_failures", 3)
        self._phase = "setup"

    def _copy(self) -> TrainJob:
        return TrainJob(
            self.config,
            self.output_dir,
            self.train_function,
            collective_timeout_s=self.collective_timeout_s,
            max_peer_failures=self.max_peer_failures,
        )

    def checkpoint(self) -> Any:
        """What submitit requeues: the same job (the run directory holds the progress)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self._copy())

    def requeue_after_peer_failure(self, error: BaseException) -> bool:
        """After a failed collective in a Slurm job: ``scontrol requeue`` the job, once per
        attempt whichever rank asks first, at most ``max_peer_failures`` times per job.

        The requeue ends every task (a stalled one included) and the job resumes from its
        latest checkpoint. Each request is a file ``OUT/slurm/peer_failures/<job>.<restart>``
        made with O_EXCL, so two ranks that fail together requeue once.

        Returns:
            True when this job is being requeued (by this rank or another): the caller waits to
            be ended. False outside Slurm or when the limit is reached.
        """
        job_id = os.environ.get("SLURM_JOB_ID")
        if os.environ.get("SUBMITIT_EXECUTOR") != "slurm" or job_id is None:
            return False
        restart = os.environ.get("SLURM_RESTART_COUNT", "0")
        folder = self.output_dir / "slurm" / "peer_failures"
        folder.mkdir(parents=True, exist_ok=True)
        earlier = [path for path in folder.glob(f"{job_id}.*") if path.suffix != f".{restart}"]
        rank = os.environ.get("RANK", "?")
        if len(earlier) >= self.max_peer_failures:
            print(
                f"rank {rank}: a collective failed ({error}); not requeueing job {job_id}: "
                f"max_peer_failures={self.max_peer_failures} reached",
                file=sys.stderr,
                flush=True,
            )
            return False
        try:
            with (folder / f"{job_id}.{restart}").open("x") as request:
                request.write(f"rank {rank}: {error}\n")
        except FileExistsError:
            return True  # another rank of this attempt asked first
        print(
            f"rank {rank}: a collective failed ({error}); requeueing job {job_id} "
            f"(peer failure {len(earlier) + 1} of at most {self.max_peer_failures})",
            file=sys.stderr,
            flush=True,
        )
        scontrol = shutil.which("scontrol") or "scontrol"
        result = subprocess.run(
            [scontrol, "requeue", job_id], capture_output=True, text=True, check=False, timeout=60
        )
        if result.returncode != 0:
            print(f"scontrol requeue {job_id} failed: {result.stderr.strip()}", file=sys.stderr)
            return False
        return True

    def __call__(self) -> Path:
        import submitit

        TaskEnvironment.from_submitit().export(os.environ)
        rank = int(os.environ["RANK"])
        bridge = UsrSignalBridge(
            submitit.JobEnvironment._usr_sig(), running=lambda: self._phase == "running"
        )
        bridge.install()
        if self.collective_timeout_s is not None:
            from virtex_train.distributed import COLLECTIVE_TIMEOUT_ENV

            os.environ[COLLECTIVE_TIMEOUT_ENV] = str(self.collective_timeout_s)
        train = self.train_function or _default_train_function()
        self._phase = "running"
        try:
            result = train(self.config, self.output_dir, resume=True)
        except Exception as error:
            from virtex_train.distributed import is_peer_failure

            distributed = int(os.environ["WORLD_SIZE"]) > 1
            if distributed and is_peer_failure(error) and self.requeue_after_peer_failure(error):
                time.sleep(_REQUEUE_GRACE_S)  # the requeue ends this task
            raise
        self._phase = "done"

        if rank == 0:
            step = checkpoint_step(self.output_dir)
            interrupted = step is None or step < self.config.train.num_steps
            if interrupted:
                bridge.wait(_USR_AFTER_TERM_S)
        else:
            # Only rank 0 reads `latest` reliably (it writes it); the others trust the signal.
            step, interrupted = None, bridge.signalled
        if not interrupted:
            return result
        if bridge.hand_over() and rank != 0:  # rank 0: checkpoint() + scontrol requeue + exit
            time.sleep(_REQUEUE_GRACE_S)  # the requeue ends this task
        if rank != 0:
            return result
        raise RunInterrupted(
            f"training in {self.output_dir} stopped at step {step} of "
            f"{self.config.train.num_steps} on a signal; it resumes from its latest checkpoint "
            "when submitted again with the same --output-dir"
        )


def submit(
    config: ExperimentConfig,
    output_dir: Path,
    resources: SlurmResources,
    *,
    cluster: Cluster = "slurm",
    train_function: TrainFunction | None = None,
) -> Any:
    """Submit a :class:`TrainJob`; returns the submitit ``Job``.

    Raises:
        ValueError: ``train.batch_size`` does not split evenly over the tasks.
    """
    check_batch_split(config, resources.world_size)
    output_dir = Path(output_dir).resolve()
    executor = make_executor(output_dir, resources, cluster=cluster)
    job = TrainJob(
        config,
        output_dir,
        train_function,
        collective_timeout_s=resources.collective_timeout_s,
        max_peer_failures=resources.max_peer_failures,
    )
    return executor.submit(job)


def check_batch_split(config: ExperimentConfig, world_size: int) -> None:
    """The global batch must split into equal per-rank micro-batches (checked before queueing)."""
    train = config.train
    if train.batch_size % (world_size * train.grad_accumulation):
        raise ValueError(
            f"train.batch_size={train.batch_size} does not split over {world_size} tasks x "
            f"train.grad_accumulation={train.grad_accumulation}"
        )
