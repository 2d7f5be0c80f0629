"""The ``virtex-eval`` command line."""

from __future__ import annotations

import click

from virtex_eval import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="virtex-eval")
def main() -> None:
    """Evaluate VirTex backbones and captioning models."""
