"""The ``virtex-eval`` command line: one click group, each command in a module of this package.

Library modules (``virtex_eval.captioner``, ``virtex_eval.linear`` ...) hold no click code: the
commands here parse options (shared ones from :mod:`virtex_eval.cli.options`) and call them.

Importing this module imports no optional dependency: ``detectron2`` is imported only when its
command runs.
"""

from __future__ import annotations

import click

from virtex_data.cli_errors import OneLineErrors, add_checks
from virtex_eval import __version__
from virtex_eval.cli.caption import caption_command
from virtex_eval.cli.features import features_command
from virtex_eval.cli.linear import linear_command
from virtex_eval.cli.report import report_command
from virtex_eval.cli.retrieval import retrieval_command
from virtex_eval.cli.voc07 import voc07_command
from virtex_eval.cli.zeroshot import zeroshot_command
from virtex_eval.detectron2.cli import detectron2_command


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="virtex-eval")
def main() -> None:
    """Evaluate VirTex backbones and captioning models.

    Expected failures print one line, `Error: <what>, <file or key>`, and exit with status 1;
    `virtex-eval --debug ...` or VIRTEX_DEBUG=1 prints the traceback instead. --device is
    checked against the devices present, and output folders for writability, before any work.

    \b
    Backbone weights (--weights) are one of: a virtex checkpoint (CKPT.pt), an original VirTex
    checkpoint (original:CKPT,CONFIG.yaml), a torchvision ResNet state dict
    (torchvision:PATH[,ARCH]) or a random init (random[:ARCH]).
    """


for _command in (
    caption_command,
    zeroshot_command,
    retrieval_command,
    features_command,
    voc07_command,
    linear_command,
    detectron2_command,
    report_command,
):
    # --device and output options checked at parse time (before a model loads or images are read).
    main.add_command(add_checks(_command))
