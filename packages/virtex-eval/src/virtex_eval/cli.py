"""The ``virtex-eval`` command line: one click group, each command defined next to what it runs.

Importing this module imports no optional dependency: ``detectron2`` is imported only when its
command runs.
"""

from __future__ import annotations

import click

from virtex_eval import __version__
from virtex_eval.captioner import caption_command
from virtex_eval.detectron2.cli import detectron2_command
from virtex_eval.features import features_command
from virtex_eval.linear import linear_command
from virtex_eval.report import report_command
from virtex_eval.voc07 import voc07_command
from virtex_eval.zeroshot import zeroshot_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="virtex-eval")
def main() -> None:
    """Evaluate VirTex backbones and captioning models.

    \b
    Backbone weights (--weights) are one of: a virtex checkpoint (CKPT.pt), an original VirTex
    checkpoint (original:CKPT,CONFIG.yaml), a torchvision ResNet state dict
    (torchvision:PATH[,ARCH]) or a random init (random[:ARCH]).
    """


for _command in (
    caption_command,
    zeroshot_command,
    features_command,
    voc07_command,
    linear_command,
    detectron2_command,
    report_command,
):
    main.add_command(_command)
