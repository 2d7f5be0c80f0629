"""Options shared by several ``virtex-eval`` commands, each declared once.

Each is a click decorator (``@device_option``) carrying the option's name, default and help text,
so commands that take the same option spell it the same way.
"""

from __future__ import annotations

from pathlib import Path

import click

__all__ = [
    "cache_dir_option",
    "caption_batch_size_option",
    "checkpoint_option",
    "crop_size_option",
    "device_option",
    "device_or_cuda_option",
    "direction_option",
    "image_size_override_option",
    "metrics_output_option",
    "quiet_option",
    "resize_option",
    "weights_option",
    "workers_option",
]

cache_dir_option = click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Feature cache (default: $VIRTEX_CACHE/features or ~/.cache/virtex/features).",
)
caption_batch_size_option = click.option("--batch-size", type=int, default=16, show_default=True)
checkpoint_option = click.option(
    "--checkpoint",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Self-contained checkpoint of a (bi)captioning model.",
)
crop_size_option = click.option(
    "--image-size", default=224, show_default=True, help="Centre-crop side."
)
device_option = click.option(
    "--device", default="auto", show_default=True, help="cpu | cuda | cuda:N | auto."
)
device_or_cuda_option = click.option(
    "--device", default=None, help="cpu, cuda ... (default: cuda if present)."
)
direction_option = click.option(
    "--direction",
    type=click.Choice(["forward", "backward", "both"]),
    default=None,
    help="Decoders to score with (default: both for bicaptioning, else forward).",
)
image_size_override_option = click.option(
    "--image-size", type=int, help="Override the training image size."
)
metrics_output_option = click.option(
    "--output", type=click.Path(dir_okay=False, path_type=Path), help="Metrics JSON."
)
quiet_option = click.option("--quiet", is_flag=True, help="No progress bars.")
resize_option = click.option(
    "--resize", default=256, show_default=True, help="Shorter side before cropping."
)
weights_option = click.option(
    "--weights",
    required=True,
    help="CKPT.pt | original:CKPT,CONFIG.yaml | torchvision:PATH[,ARCH] | random[:ARCH]",
)
workers_option = click.option("--workers", type=int, default=0, show_default=True)
