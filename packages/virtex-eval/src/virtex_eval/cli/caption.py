"""``virtex-eval caption``: the command line of :mod:`virtex_eval.captioner`."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import torch

from virtex_data.sources import OutsideImageFolder, image_path
from virtex_data.tokenizer import CaptionTokenizer
from virtex_eval.captioner import (
    CaptionedFiles,
    Captioner,
    DecodeSettings,
    format_scores,
    load_captioner,
    read_coco_captions,
)
from virtex_eval.cli.options import (
    caption_batch_size_option,
    checkpoint_option,
    image_size_override_option,
)
from virtex_eval.images import (
    ImageFileError,
    find_images,
)
from virtex_eval.spice import SpiceUnavailable
from virtex_models.atomic_file import atomic_write_text


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


@click.command("caption", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inputs", nargs=-1, type=click.Path(path_type=Path))
@checkpoint_option
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="JSON to write.")
@click.option("--beam-size", type=int, help="Beam search width (1 = greedy).")
@click.option("--nucleus", type=float, help="Nucleus sampling with this top-p instead of beams.")
@click.option("--max-steps", type=int, help="Most tokens per caption (default: checkpoint's).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --nucleus.")
@click.option(
    "--visual-bf16",
    type=click.Choice(["auto", "on", "off"]),
    default="auto",
    show_default=True,
    help="Visual forward in bf16 + channels_last (auto: where the CPU/GPU has native bf16; "
    "off: fp32, captions bit-identical to the fp32 model's).",
)
@click.option(
    "--decoder-bf16",
    type=click.Choice(["auto", "on", "off"]),
    default="auto",
    show_default=True,
    is_flag=False,
    flag_value="on",
    help="Decoder matrix products in bf16 too (auto: where the CPU/GPU has native bf16; about "
    "2x faster decoding, captions change more than with --visual-bf16). A bare --decoder-bf16 "
    "means on; fp32 captions: --visual-bf16 off --decoder-bf16 off.",
)
@click.option(
    "--coco-captions",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Caption file (COCO JSON, JSONL or CSV): caption its images (from --images), score.",
)
@click.option(
    "--images",
    "image_root",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder of the --coco-captions images.",
)
@click.option("--limit", type=int, help="Only the first N images of --coco-captions.")
@click.option(
    "--metrics",
    "metrics_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the scores (default: OUTPUT's stem + _metrics.json).",
)
@click.option(
    "--per-image",
    "per_image_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write per-image scores (CIDEr, BLEU, ROUGE-L) to this JSON.",
)
@click.option("--spice", is_flag=True, help="Also compute SPICE (needs Java + the SPICE jar).")
@click.option(
    "--tokenizer",
    "tokenizer_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Tokenizer JSON for checkpoints without an embedded one.",
)
@image_size_override_option
@caption_batch_size_option
@click.option("--workers", type=int, default=0, show_default=True, help="DataLoader workers.")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if present).")
@click.option(
    "--strict",
    is_flag=True,
    help="Fail on the first unreadable image (naming it) instead of skipping and listing it.",
)
def caption_command(
    inputs: tuple[Path, ...],
    checkpoint: Path,
    output: Path | None,
    beam_size: int | None,
    nucleus: float | None,
    max_steps: int | None,
    seed: int,
    visual_bf16: str,
    decoder_bf16: str,
    coco_captions: Path | None,
    image_root: Path | None,
    limit: int | None,
    metrics_path: Path | None,
    per_image_path: Path | None,
    spice: bool,
    tokenizer_path: Path | None,
    image_size: int | None,
    batch_size: int,
    workers: int,
    device: str | None,
    strict: bool,
) -> None:
    """Caption images with a self-contained checkpoint (tokenizer inside).

    Unreadable images (missing, corrupt, truncated, not a regular file, above the pixel limit
    $VIRTEX_MAX_IMAGE_PIXELS, outside --images) are skipped: their count and list go to stderr
    (and to the --metrics JSON), and the rest is captioned. --strict fails on the first instead.

    \b
    Arbitrary images (files or folders, searched recursively):
      virtex-eval caption --checkpoint final.pt photo.jpg photos/ --output captions.json
    COCO evaluation (writes the COCO results JSON, prints and saves CIDEr/BLEU/ROUGE-L):
      virtex-eval caption --checkpoint final.pt --coco-captions captions_val2017.json \\
          --images val2017 --output val2017_results.json --beam-size 5
    """
    try:
        settings = DecodeSettings(
            beam_size, nucleus, max_steps, seed, visual_bf16=visual_bf16, decoder_bf16=decoder_bf16
        )
        if coco_captions is None and image_root is not None:
            raise click.UsageError("--images goes with --coco-captions; list image paths instead")
        if coco_captions is not None and inputs:
            raise click.UsageError("give either image paths or --coco-captions, not both")
        if coco_captions is None and not inputs:
            raise click.UsageError("give image files/folders, or --coco-captions with --images")
        if coco_captions is not None and image_root is None:
            raise click.UsageError("--coco-captions needs --images (the folder of its images)")
        if (per_image_path or metrics_path or spice) and coco_captions is None:
            raise click.UsageError("--metrics, --per-image and --spice need --coco-captions")
        tokenizer = CaptionTokenizer.from_file(tokenizer_path) if tokenizer_path else None
        captioner = load_captioner(
            checkpoint,
            tokenizer=tokenizer,
            device=device or _default_device(),
            image_size=image_size,
        )
        if coco_captions is None:
            _caption_paths(captioner, inputs, settings, output, batch_size, workers, strict)
        else:
            assert image_root is not None
            _caption_coco(
                captioner,
                settings,
                coco_captions,
                image_root,
                limit=limit,
                output=output,
                metrics_path=metrics_path,
                per_image_path=per_image_path,
                spice=spice,
                batch_size=batch_size,
                workers=workers,
                strict=strict,
            )
    except (ValueError, SpiceUnavailable) as error:  # ImageFileError is a ValueError
        raise click.ClickException(str(error)) from error


def _report_unreadable(unreadable: Sequence[tuple[Path, str]], total: int) -> None:
    if not unreadable:
        return
    click.echo(f"skipped {len(unreadable)} of {total} image(s) that could not be read:", err=True)
    for path, reason in unreadable:
        click.echo(f"  {path}: {reason}", err=True)


def _caption_some(
    captioner: Captioner,
    paths: Sequence[Path],
    settings: DecodeSettings,
    *,
    strict: bool,
    batch_size: int,
    workers: int,
    progress: bool,
) -> CaptionedFiles:
    """Strict: every file or an ImageFileError naming the first bad one; else skip and list."""
    if strict:
        captions = captioner.caption_files(
            paths, settings, batch_size=batch_size, num_workers=workers, progress=progress
        )
        return CaptionedFiles(dict(enumerate(captions)))
    result = captioner.caption_readable_files(
        paths, settings, batch_size=batch_size, num_workers=workers, progress=progress
    )
    _report_unreadable(result.unreadable, len(paths))
    if not result.captions:
        raise ValueError(f"none of the {len(paths)} image(s) could be read")
    return result


def _caption_paths(
    captioner: Captioner,
    inputs: Sequence[Path],
    settings: DecodeSettings,
    output: Path | None,
    batch_size: int,
    workers: int,
    strict: bool = False,
) -> None:
    paths = find_images(inputs)
    result = _caption_some(
        captioner,
        paths,
        settings,
        strict=strict,
        batch_size=batch_size,
        workers=workers,
        progress=output is not None,
    )
    kept = sorted(result.captions)
    if output is None:
        for index in kept:
            click.echo(f"{paths[index]}\t{result.captions[index]}")
        return
    records = [{"file": str(paths[i]), "caption": result.captions[i]} for i in kept]
    _write_json(output, records)
    skipped = f" ({len(result.unreadable)} unreadable skipped)" if result.unreadable else ""
    click.echo(f"wrote {len(records)} captions to {output}{skipped}", err=True)


def _caption_coco(
    captioner: Captioner,
    settings: DecodeSettings,
    coco_captions: Path,
    image_root: Path,
    *,
    limit: int | None,
    output: Path | None,
    metrics_path: Path | None,
    per_image_path: Path | None,
    spice: bool,
    batch_size: int,
    workers: int,
    strict: bool = False,
) -> None:
    from virtex_eval.metrics import evaluate_captions

    if not image_root.is_dir():
        raise ValueError(f"{image_root}: no such image folder (--images)")
    files, references = read_coco_captions(coco_captions)
    ids = sorted(files)
    if limit is not None:
        ids = ids[:limit]
    unreadable: list[tuple[Path, str]] = []
    readable: list[tuple[int, Path]] = []
    for key in ids:
        try:
            path = image_path(image_root, files[key])
        except OutsideImageFolder as error:  # a caption file may not point outside --images
            if strict:
                raise ValueError(f"{coco_captions}: image id {key}: {error}") from None
            unreadable.append((Path(files[key]), f"listed in {coco_captions}: {error}"))
            continue
        if strict and not path.is_file():  # fail before any work, naming the file
            raise ImageFileError(path, f"image listed in {coco_captions} is missing")
        readable.append((key, path))
    if not strict:
        _report_unreadable(unreadable, len(ids))
    captioned = _caption_some(
        captioner,
        [path for _, path in readable],
        settings,
        strict=strict,
        batch_size=batch_size,
        workers=workers,
        progress=True,
    )
    unreadable.extend(captioned.unreadable)
    predictions = {readable[i][0]: caption for i, caption in sorted(captioned.captions.items())}
    ids = [key for key in ids if key in predictions]
    if output is not None:
        _write_json(output, [{"image_id": key, "caption": predictions[key]} for key in ids])
        click.echo(f"wrote COCO results for {len(ids)} images to {output}", err=True)
    refs = {key: references[key] for key in ids}
    result = evaluate_captions(predictions, refs)
    scores: dict[str, Any] = dict(result.corpus)
    if spice:
        from virtex_eval.spice import spice_score

        scores["SPICE"], _ = spice_score(predictions, refs)
    click.echo(format_scores(scores))
    if metrics_path is None and output is not None:
        metrics_path = output.with_name(output.stem + "_metrics.json")
    if metrics_path is not None:
        record = dict(scores)
        record["num_images"] = len(ids)
        record["decoder"] = settings.describe(captioner.objective)
        if unreadable:  # scores are over the readable images only: say which were left out
            record["skipped"] = [{"file": str(p), "reason": r} for p, r in unreadable]
        _write_json(metrics_path, record)
        click.echo(f"wrote scores to {metrics_path}", err=True)
    if per_image_path is not None:
        _write_json(per_image_path, {str(k): v for k, v in result.per_image.items()})


if __name__ == "__main__":  # pragma: no cover
    sys.exit(caption_command())
