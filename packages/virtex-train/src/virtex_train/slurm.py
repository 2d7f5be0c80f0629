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
import shlex
import shutil
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Literal, Protocol

import click

if TYPE_CHECKING:
    from virtex_train.config import ExperimentConfig

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
    "submit_command",
]

Cluster = Literal["slurm", "local"]
_MEM = re.compile(r"^\d+[KMGT]?$")
_SBATCH_KEY = re.compile(r"^[a-z][a-z0-9_-]*$")
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
        self._signalled = False
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
        self._signalled = False
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
        usr_signal: int = submitit.JobEnvironment._usr_sig()
        requeue = signal.getsignal(usr_signal)  # submitit's checkpoint-and-requeue handler
        outer_term = signal.getsignal(signal.SIGTERM)

        def on_usr_signal(signum: int, frame: FrameType | None) -> None:
            self._signalled = True
            term = signal.getsignal(signal.SIGTERM)
            if term is not outer_term and callable(term):
                # The trainer's loop is running: its graceful stop checkpoints first.
                term(signal.SIGTERM, frame)
            elif self._phase == "running" and callable(requeue):
                requeue(signum, frame)  # nothing new to save yet: requeue right away

        signal.signal(usr_signal, on_usr_signal)
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
            if interrupted and not self._signalled:
                deadline = time.monotonic() + _USR_AFTER_TERM_S
                while not self._signalled and time.monotonic() < deadline:
                    time.sleep(0.05)
        else:
            # Only rank 0 reads `latest` reliably (it writes it); the others trust the signal.
            step, interrupted = None, self._signalled
        if not interrupted:
            return result
        if self._signalled and callable(requeue):
            requeue(usr_signal, None)  # rank 0: checkpoint() + scontrol requeue + exit
            if rank != 0:
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


# ------------------------------------------------------------------------------ command line


def _parse_extra(values: Sequence[str]) -> dict[str, str]:
    extra = {}
    for value in values:
        key, sep, setting = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE", param_hint="--slurm-arg")
        extra[key.strip().lstrip("-")] = setting
    return extra


@click.command("submit", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("config", required=False)
@click.argument("overrides", nargs=-1)
@click.option(
    "--output-dir",
    "-o",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Run directory on a file system every node sees; Slurm logs go to OUTPUT_DIR/slurm/.",
)
@click.option("--nodes", default=1, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--gpus-per-node",
    default=8,
    show_default=True,
    type=click.IntRange(min=0),
    help="One task per GPU; 0 runs CPU tasks (see --tasks-per-node).",
)
@click.option(
    "--tasks-per-node",
    type=click.IntRange(min=1),
    default=None,
    help="CPU jobs only: processes per node (default 1).",
)
@click.option("--partition", "-p", default=None, help="Slurm partition (default: the site's).")
@click.option(
    "--time",
    "time_min",
    required=True,
    type=click.IntRange(min=1),
    help="Time limit in minutes; the job checkpoints and requeues itself before it.",
)
@click.option("--account", "-A", default=None)
@click.option("--qos", "-q", default=None)
@click.option(
    "--cpus-per-task",
    type=click.IntRange(min=1),
    default=None,
    help="Default: train.num_workers + 1 (data-loader workers plus the training process).",
)
@click.option("--mem", default=None, help="Memory per node, Slurm notation: 64G, 500M, 0 = all.")
@click.option("--job-name", default=None, help="Default: virtex-<name of OUTPUT_DIR>.")
@click.option(
    "--signal-delay",
    "signal_delay_s",
    default=120,
    show_default=True,
    type=click.IntRange(min=0),
    help="Seconds before the time limit at which the job checkpoints and requeues.",
)
@click.option(
    "--max-timeouts",
    default=3,
    show_default=True,
    type=click.IntRange(min=0),
    help="Requeues after a time-out before giving up (preemptions always requeue).",
)
@click.option(
    "--collective-timeout",
    "collective_timeout_s",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds a collective waits for a stalled peer before the job requeues itself "
    "(default: $VIRTEX_COLLECTIVE_TIMEOUT_S, else 300).",
)
@click.option(
    "--max-peer-failures",
    default=3,
    show_default=True,
    type=click.IntRange(min=0),
    help="Requeues after a collective failed (a peer stalled or died) before giving up.",
)
@click.option(
    "--setup",
    multiple=True,
    help="Shell line run before the tasks start, e.g. 'module load cuda' (repeatable).",
)
@click.option(
    "--slurm-arg",
    "slurm_args",
    multiple=True,
    metavar="KEY=VALUE",
    help="Any other sbatch option, e.g. constraint=a100 or exclude=node7 (repeatable).",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the batch script that would be submitted and submit nothing.",
)
def submit_command(
    config: str | None,
    overrides: tuple[str, ...],
    output_dir: Path,
    nodes: int,
    gpus_per_node: int,
    tasks_per_node: int | None,
    partition: str | None,
    time_min: int,
    account: str | None,
    qos: str | None,
    cpus_per_task: int | None,
    mem: str | None,
    job_name: str | None,
    signal_delay_s: int,
    max_timeouts: int,
    collective_timeout_s: float | None,
    max_peer_failures: int,
    setup: tuple[str, ...],
    slurm_args: tuple[str, ...],
    dry_run: bool,
) -> None:
    """Submit pretraining to SLURM: CONFIG (YAML; omitted = the quickstart run, whose built-in
    data is generated first) and key=value overrides, one task per GPU on each of --nodes nodes.

    The job checkpoints and requeues itself before its time limit and when preempted, and
    always resumes from OUTPUT_DIR/checkpoints/latest. Example, 2 nodes of 8 GPUs:

        virtex-train submit configs/pretrain/bicaptioning_R_50_L1_H2048.yaml -o runs/r50 \\
            --nodes 2 --gpus-per-node 8 --partition gpu --time 1440 --mem 0
    """
    from virtex_train.config import ConfigError, load_config

    if config is not None and "=" in config and not Path(config).exists():
        overrides, config = (config, *overrides), None  # no CONFIG, only overrides
    try:
        experiment = load_config(config, overrides)
    except (ConfigError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    output_dir = output_dir.resolve()
    if gpus_per_node and tasks_per_node is not None and tasks_per_node != gpus_per_node:
        raise click.BadParameter(
            "GPU jobs run one task per GPU; --tasks-per-node is for --gpus-per-node 0",
            param_hint="--tasks-per-node",
        )
    try:
        resources = SlurmResources(
            nodes=nodes,
            gpus_per_node=gpus_per_node,
            tasks_per_node=None if gpus_per_node else tasks_per_node,
            time_min=time_min,
            partition=partition,
            account=account,
            qos=qos,
            cpus_per_task=cpus_per_task or experiment.train.num_workers + 1,
            mem=mem,
            job_name=job_name or f"virtex-{output_dir.name}",
            signal_delay_s=signal_delay_s,
            max_timeouts=max_timeouts,
            collective_timeout_s=collective_timeout_s,
            max_peer_failures=max_peer_failures,
            setup=setup,
            extra=_parse_extra(slurm_args),
        )
        check_batch_split(experiment, resources.world_size)
    except ValueError as error:
        raise click.ClickException(str(error)) from None

    per_task = "1 GPU" if resources.gpus_per_node else "no GPU"
    summary = (
        f"{resources.world_size} task(s): {resources.nodes} node(s) x "
        f"{resources.ntasks_per_node} ({per_task}, {resources.cpus_per_task} CPU(s) each); "
        f"{experiment.train.batch_size // resources.world_size} images per task and step"
    )
    if dry_run:
        click.echo(f"# dry run, nothing submitted. {summary}")
        click.echo(f"# run directory {output_dir}; logs in {output_dir / 'slurm'}/")
        click.echo(sbatch_script(output_dir, resources), nl=False)
        return
    if shutil.which("srun") is None:
        raise click.ClickException(
            "srun not found: submit from a Slurm login node (--dry-run prints the batch script "
            "anywhere)"
        )
    if config is None:
        # The quickstart's built-in data is made here, once, not by every task of the job.
        from virtex_train.quickstart import ensure_builtin_data

        ensure_builtin_data(experiment.data, echo=click.echo)
    try:
        job = submit(experiment, output_dir, resources)
    except RuntimeError as error:  # submitit: no srun on PATH, or sbatch refused the job
        raise click.ClickException(str(error)) from None
    click.echo(f"submitted job {job.job_id}: {summary}")
    click.echo(f"run directory: {output_dir}")
    click.echo(f"logs: {output_dir / 'slurm'}/{job.job_id}_<task>_log.out / .err")
    click.echo(f"status: squeue -j {job.job_id}    cancel: scancel {job.job_id}")
