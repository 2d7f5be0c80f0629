"""``virtex-train submit``: the command line of :mod:`virtex_train.slurm`."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import click

from virtex_train.slurm import check_batch_split, submit
from virtex_train.slurm_resources import SlurmResources, sbatch_script

__all__ = ["submit_command"]


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
