"""``virtex-eval zeroshot``: the command line of :mod:`virtex_eval.zeroshot`."""

from __future__ import annotations

import json
from pathlib import Path

import click
import torch

from virtex_eval.captioner import load_captioner
from virtex_eval.cli.options import (
    caption_batch_size_option,
    checkpoint_option,
    device_or_cuda_option,
    direction_option,
    image_size_override_option,
    metrics_output_option,
    workers_option,
)
from virtex_eval.zeroshot import (
    DEFAULT_PROMPT,
    Direction,
    ZeroShotClassifier,
    evaluate,
    read_image_folders,
)


@click.command("zero-shot", context_settings={"help_option_names": ["-h", "--help"]})
@checkpoint_option
@click.option(
    "--images",
    "root",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder with one sub-folder of images per class.",
)
@click.option(
    "--prompt", default=DEFAULT_PROMPT, show_default=True, help="Template; {} = class name."
)
@direction_option
@click.option("--normalize", is_flag=True, help="Mean log-probability per token, not the sum.")
@metrics_output_option
@click.option(
    "--predictions",
    "predictions_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Per-image predictions JSON.",
)
@image_size_override_option
@caption_batch_size_option
@workers_option
@device_or_cuda_option
def zeroshot_command(
    checkpoint: Path,
    root: Path,
    prompt: str,
    direction: Direction | None,
    normalize: bool,
    output: Path | None,
    predictions_path: Path | None,
    image_size: int | None,
    batch_size: int,
    workers: int,
    device: str | None,
) -> None:
    """Zero-shot classification by caption likelihood.

    Each class prompt ("a photo of a {name}") is scored as the image's caption (forward, plus
    backward for bicaptioning models); the most likely class wins.

    \b
      virtex-eval zero-shot --checkpoint final.pt --images imagenette/val \\
          --prompt "a photo of a {}" --output zeroshot.json
    """
    try:
        split = read_image_folders(root)
        captioner = load_captioner(
            checkpoint,
            device=device or ("cuda" if torch.cuda.is_available() else "cpu"),
            image_size=image_size,
        )
        classifier = ZeroShotClassifier(
            captioner, split.class_names, prompt, direction=direction, normalize=normalize
        )
        result = evaluate(
            classifier, split, batch_size=batch_size, num_workers=workers, progress=True
        )
    except ValueError as error:  # ImageFileError included
        raise click.ClickException(str(error)) from error
    click.echo(f"classes {len(split.class_names)}  images {result.num_images}")
    click.echo(f"top1  {result.top1:.4f}")
    if result.top5 is not None:
        click.echo(f"top5  {result.top5:.4f}")
    if output is not None:
        record = result.metrics()
        record["prompt"] = prompt
        record["direction"] = classifier.direction
        record["normalize"] = normalize
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    if predictions_path is not None:
        rows = [
            {
                "file": str(path),
                "label": split.class_names[label],
                "predicted": split.class_names[p],
            }
            for path, label, p in zip(split.paths, split.labels, result.predictions, strict=True)
        ]
        predictions_path.parent.mkdir(parents=True, exist_ok=True)
        predictions_path.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
