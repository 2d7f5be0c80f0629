"""The ``virtex-train`` command line."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from virtex_data.cli_errors import OneLineErrors, device_option_callback
from virtex_data.errors import check_writable, one_line
from virtex_train import __version__
from virtex_train.cli_submit import submit_command


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="virtex-train")
def main() -> None:
    """Pretrain VirTex models: locally, under torchrun, or on SLURM.

    Expected failures print one line, `Error: <what>, <file or key>`, and exit with status 1;
    `virtex-train --debug ...` or VIRTEX_DEBUG=1 prints the traceback instead.
    """


_EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


def _split_args(args: tuple[str, ...]) -> tuple[str | None, list[str]]:
    if args and "=" not in args[0]:
        return args[0], list(args[1:])
    return None, list(args)


def _wait_for(paths: list[Path], seconds: float = 1800.0) -> None:
    deadline = time.monotonic() + seconds
    while not all(path.exists() for path in paths):
        if time.monotonic() > deadline:
            raise click.ClickException("rank 0 did not finish the built-in data in time")
        time.sleep(1.0)


@main.command("pretrain")
@click.argument("args", nargs=-1, metavar="[CONFIG] [KEY=VALUE]...")
@click.option(
    "--output-dir",
    "-o",
    type=click.Path(file_okay=False),
    default=None,
    help="Run directory (default: runs/quickstart, or runs/<config name>).",
)
@click.option("--resume", is_flag=True, help="Continue from OUTPUT_DIR/checkpoints/latest.")
@click.option(
    "--device",
    type=click.Choice(["cpu", "cuda"]),
    default=None,
    callback=device_option_callback,
    help="Training device (default: cuda when available).",
)
@click.option("--no-progress", is_flag=True, help="No progress bar (logs still go to files).")
def pretrain_command(
    args: tuple[str, ...],
    output_dir: str | None,
    resume: bool,
    device: str | None,
    no_progress: bool,
) -> None:
    """Pretrain an objective from CONFIG (a YAML file) with dotted KEY=VALUE overrides.

    Without CONFIG it runs the quickstart: it generates the built-in shapes dataset in
    data/synth (once), builds its vocabulary and LMDB files, and pretrains a small
    bicaptioning model (ResNet-18, 32 px, 1-layer head) on the CPU in about 3 minutes,
    then checks its greedy val captions against the scenes (a grounding summary).

    Under torchrun or SLURM (srun) every process runs this same command; rank 0 writes the
    logs and checkpoints. SIGTERM/SIGINT save a checkpoint and exit (code 143/130); --resume
    continues from it.

    With --resume and no CONFIG, the run directory's own config.yaml is used (plus any
    overrides, e.g. a larger train.num_steps).

    \b
    Examples:
      virtex-train pretrain
      virtex-train pretrain configs/pretrain/bicaptioning_R_50_L1_H2048.yaml \\
          train.batch_size=64 optim.cnn_lr=0.1 --output-dir runs/bicap
      virtex-train pretrain --output-dir runs/bicap --resume
      torchrun --nproc-per-node 8 -m virtex_train.cli pretrain CONFIG -o runs/bicap
    """
    from virtex_train.checkpoint import CheckpointError
    from virtex_train.config import ConfigError, load_config
    from virtex_train.distributed import detect_env
    from virtex_train.pretrain import PretrainError, pretrain
    from virtex_train.quickstart import ensure_builtin_data
    from virtex_train.trainer import NonFiniteLossError

    start = time.perf_counter()
    config_path, overrides = _split_args(args)
    if config_path is None and resume and output_dir is not None:
        saved = Path(output_dir) / "config.yaml"
        if saved.is_file():  # resuming a run by its directory alone: its own resolved config
            config_path = str(saved)
    if config_path is not None and not Path(config_path).is_file():
        raise click.BadParameter(f"{config_path} does not exist", param_hint="CONFIG")
    try:
        config = load_config(config_path, overrides)
    except ConfigError as error:
        if str(error).startswith("override"):  # a KEY=VALUE of this command line
            raise click.UsageError(str(error)) from None
        raise click.ClickException(str(error)) from None  # the file: one line, exit 1
    if output_dir is None:
        output_dir = f"runs/{Path(config_path).stem if config_path else 'quickstart'}"
    try:
        env = detect_env()
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    if env.is_main:  # before the built-in data is generated or a model is built
        check_writable(output_dir, "--output-dir")
    echo = click.echo if env.is_main else (lambda message: None)
    if config_path is None:
        data = config.data
        if env.is_main:
            ensure_builtin_data(data, echo=echo)
        else:
            _wait_for([Path(p) for p in (data.tokenizer, data.train_lmdb, data.val_lmdb) if p])
    try:
        result = pretrain(
            config, output_dir, resume=resume, device=device, progress=not no_progress
        )
    except (PretrainError, CheckpointError, NonFiniteLossError) as error:
        raise click.ClickException(one_line(error)) from None
    except FileNotFoundError as error:
        raise click.ClickException(f"{error.filename}: {error.strerror}") from None
    out = result.output_dir
    minutes, seconds = divmod(time.perf_counter() - start, 60)
    if result.interrupted:
        echo(
            f"interrupted ({result.interrupted}) at step {result.step}; checkpoint "
            f"{result.checkpoint}; continue with the same command and --resume"
        )
        sys.exit(_EXIT_CODES.get(result.interrupted, 1))
    echo(f"finished {result.step} steps in {int(minutes)} min {seconds:.0f} s")
    echo(f"checkpoint:  {result.checkpoint}")
    echo(f"logs:        {out / 'metrics.jsonl'}  (TensorBoard: tensorboard --logdir {out / 'tb'})")
    echo(f"samples:     {out / 'samples.jsonl'}")
    if result.val_loss is not None:
        echo(f"val loss:    {result.val_loss:.3f}")
    for sample in result.samples:
        reference = sample["references"][0] if sample["references"] else ""
        echo(f"  image {sample['image_id']}: {sample['caption']!r}  (a reference: {reference!r})")
    if config_path is None and env.is_main:  # the quickstart: are the captions about the images?
        from virtex_train.quickstart import val_grounding

        checked = val_grounding(result.checkpoint, config.data)  # CPU: 500 small images
        if checked is not None:
            echo(checked.summary())


main.add_command(submit_command)

if __name__ == "__main__":  # torchrun -m virtex_train.cli ...
    main()
