"""The ``virtex-data`` command line."""

from __future__ import annotations

import click

from virtex_data import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="virtex-data")
def main() -> None:
    """Prepare data for VirTex: vocabularies, LMDB files, the built-in captioned dataset."""
