"""The ``virtex-train`` command line."""

from __future__ import annotations

import click

from virtex_train import __version__
from virtex_train.slurm import submit_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="virtex-train")
def main() -> None:
    """Pretrain VirTex models: locally, under torchrun, or on SLURM."""


main.add_command(submit_command)
