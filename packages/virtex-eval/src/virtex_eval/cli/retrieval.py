"""``virtex-eval retrieval``: the command line of :mod:`virtex_eval.retrieval`."""

from __future__ import annotations

import json
from pathlib import Path

import click
import torch

from virtex_eval.captioner import load_captioner
from virtex_eval.cli.options import (
    checkpoint_option,
    device_or_cuda_option,
    direction_option,
    image_size_override_option,
    metrics_output_option,
    workers_option,
)
from virtex_eval.retrieval import (
    DEFAULT_MAX_PAIRS,
    RECALL_AT,
    LikelihoodScorer,
    Normalize,
    check_pairs,
    read_caption_set,
    retrieval_metrics,
)
from virtex_eval.zeroshot import (
    Direction,
)


@click.command("retrieval", context_settings={"help_option_names": ["-h", "--help"]})
@checkpoint_option
@click.option(
    "--captions",
    "caption_file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Caption file: COCO captions JSON, JSONL or CSV (as build-lmdb reads).",
)
@click.option(
    "--images",
    "image_folder",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder the caption file's image paths are relative to.",
)
@direction_option
@click.option(
    "--normalize",
    type=click.Choice(["sum", "mean"]),
    default="sum",
    show_default=True,
    help="Per direction: sum of token log-probabilities, or their mean per token.",
)
@click.option(
    "--max-pairs",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_PAIRS,
    show_default=True,
    help="Refuse caption sets with more images x captions pairs.",
)
@metrics_output_option
@image_size_override_option
@click.option("--batch-size", type=int, default=16, show_default=True, help="Images per batch.")
@click.option(
    "--pair-batch", type=int, default=256, show_default=True, help="Pairs per decoder pass."
)
@workers_option
@device_or_cuda_option
def retrieval_command(
    checkpoint: Path,
    caption_file: Path,
    image_folder: Path,
    direction: Direction | None,
    normalize: Normalize,
    max_pairs: int,
    output: Path | None,
    image_size: int | None,
    batch_size: int,
    pair_batch: int,
    workers: int,
    device: str | None,
) -> None:
    """Image-text retrieval by caption likelihood: recall@1/5/10 and mean rank.

    Every image x caption pair is scored by log p(caption | image) (forward, plus backward for
    bicaptioning models); images rank captions and captions rank images by that score.

    \b
      virtex-eval retrieval --checkpoint final.pt --captions captions_val2017.json \\
          --images val2017 --normalize mean --output retrieval.json
    """
    try:
        caption_set = read_caption_set(caption_file, image_folder)
        check_pairs(caption_set.pairs, len(caption_set.paths), len(caption_set.captions), max_pairs)
        captioner = load_captioner(
            checkpoint,
            device=device or ("cuda" if torch.cuda.is_available() else "cpu"),
            image_size=image_size,
        )
        scorer = LikelihoodScorer(
            captioner, direction=direction, normalize=normalize, pair_batch=pair_batch
        )
        scores = scorer.score_files(
            caption_set.paths,
            caption_set.captions,
            batch_size=batch_size,
            num_workers=workers,
            progress=True,
        )
    except (ValueError, FileNotFoundError) as error:  # ImageFileError, TooManyPairs included
        raise click.ClickException(str(error)) from error
    record = retrieval_metrics(scores, caption_set.image_of)
    click.echo(f"images {record['num_images']}  captions {record['num_captions']}")
    for name in ("image_to_text", "text_to_image"):
        values = record[name]
        recalls = "  ".join(f"R@{k} {values[f'R@{k}']:.4f}" for k in RECALL_AT)
        click.echo(f"{name:14s} {recalls}  mean rank {values['mean_rank']:.2f}")
    if output is not None:
        record["direction"] = scorer.direction
        record["normalize"] = normalize
        record["captions"] = str(caption_file)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
