"""The ``virtex-data`` command line: ``build-vocab``, ``build-lmdb``, ``synth``, ``inspect``."""

from __future__ import annotations

import time
from pathlib import Path

import click

from virtex_data import __version__
from virtex_data.cli_errors import OneLineErrors
from virtex_data.errors import check_writable


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="virtex-data")
def main() -> None:
    """Prepare data for VirTex: vocabularies, LMDB files, the built-in captioned dataset.

    Expected failures print one line, `Error: <what>, <file or key>`, and exit with status 1;
    `virtex-data --debug ...` or VIRTEX_DEBUG=1 prints the traceback instead.
    """


def _free(folder: Path) -> str:
    import shutil

    try:
        return f"{shutil.disk_usage(folder).free / 2**20:.1f} MiB free there"
    except OSError:
        return "free space unknown"


def _not_utf8(path: str, error: UnicodeDecodeError) -> str:
    return f"{path}: not UTF-8 text (byte {error.start}); caption files must be UTF-8"


@main.command("build-vocab")
@click.option(
    "--captions",
    "caption_files",
    multiple=True,
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Caption file: COCO captions JSON, JSONL or CSV (image, caption). Repeatable; "
    "further files may follow it (--captions a.json b.jsonl).",
)
@click.argument("more_files", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@click.option("--vocab-size", default=10000, show_default=True, help="Size, specials included.")
@click.option("--min-frequency", default=2, show_default=True, help="Minimum count of a merge.")
@click.option(
    "--legacy-layout",
    is_flag=True,
    help="Original VirTex special ids (pad = unk = 0, sos 1, eos 2, mask 3).",
)
@click.option(
    "--output", required=True, type=click.Path(dir_okay=False), help="Tokenizer JSON to write."
)
def build_vocab(
    caption_files: tuple[str, ...],
    more_files: tuple[str, ...],
    vocab_size: int,
    min_frequency: int,
    legacy_layout: bool,
    output: str,
) -> None:
    """Train a BPE vocabulary on captions and save it as one JSON file.

    \b
    Example:
      virtex-data build-vocab --captions annotations/captions_train2017.json \\
          --vocab-size 10000 --output tokenizer.json
    """
    from virtex_data.sources import read_captions
    from virtex_data.special_tokens import SpecialTokens
    from virtex_data.tokenizer import CaptionTokenizer

    caption_files = caption_files + more_files
    check_writable(Path(output).absolute().parent)
    captions: list[str] = []
    for path in caption_files:
        try:
            images = read_captions(path).images
        except UnicodeDecodeError as error:
            raise click.ClickException(_not_utf8(path, error)) from None
        for image in images:
            captions.extend(image.captions)
    if not captions:
        raise click.ClickException("no captions found in " + ", ".join(caption_files))
    start = time.perf_counter()
    special = SpecialTokens.legacy() if legacy_layout else SpecialTokens()
    tokenizer = CaptionTokenizer.train(
        captions, vocab_size, special=special, min_frequency=min_frequency, show_progress=True
    )
    seconds = time.perf_counter() - start
    tokenizer.save(output)
    click.echo(
        f"trained BPE on {len(captions)} captions in {seconds:.1f} s: vocab {tokenizer.vocab_size}"
        f", special {tokenizer.special.as_dict()}, sha256 {tokenizer.sha256[:12]} -> {output}"
    )
    if tokenizer.vocab_size < vocab_size:
        click.echo(f"note: the corpus supports only {tokenizer.vocab_size} tokens", err=True)


@main.command("synth")
@click.argument("outdir", type=click.Path(file_okay=False))
@click.option("--train", default=20000, show_default=True, help="Number of training images.")
@click.option("--val", default=2000, show_default=True, help="Number of validation images.")
@click.option("--size", default=64, show_default=True, help="Image side in pixels.")
@click.option("--seed", default=0, show_default=True, help="The dataset is a function of it.")
@click.option("--workers", default=None, type=int, help="Processes (default: all cores).")
@click.option(
    "--format",
    "image_format",
    type=click.Choice(["png", "jpeg"]),
    default="png",
    show_default=True,
    help="Image file format.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace a previous synth dataset in OUTDIR (and its LMDB files and tokenizer.json).",
)
def synth(
    outdir: str,
    train: int,
    val: int,
    size: int,
    seed: int,
    workers: int | None,
    image_format: str,
    overwrite: bool,
) -> None:
    """Generate the built-in captioned dataset of shapes into OUTDIR.

    Writes train/ and val/ images and annotations/{captions,instances,attributes}_{train,val}.json
    (COCO captions, COCO instances with polygons, per-image probe labels).

    OUTDIR must be empty or new. --overwrite replaces a previous synth dataset there and removes
    what was derived from it (*.lmdb files, tokenizer.json), so nothing stale remains; folders
    that hold anything else are refused.

    \b
    Example:
      virtex-data synth data/synth --train 20000 --val 2000 --size 64
    """
    from virtex_data.synth import clear_previous, generate

    if Path(outdir).is_dir():  # a read-only folder fails here, before anything is removed
        check_writable(outdir)
    removed = clear_previous(outdir, overwrite)
    check_writable(outdir)
    if removed:
        click.echo(f"removed the previous dataset: {', '.join(p.name for p in removed)}")
    start = time.perf_counter()
    try:
        counts = generate(
            outdir,
            train=train,
            val=val,
            size=size,
            seed=seed,
            workers=workers,
            image_format=image_format,
        )
    except OSError as error:
        if error.filename is None:  # Pillow's write errors do not say which file
            error.filename = outdir
        raise
    click.echo(
        f"wrote {counts['train']} train and {counts['val']} val images of {size} px to {outdir} "
        f"in {time.perf_counter() - start:.1f} s"
    )


@main.command("build-lmdb")
@click.option(
    "--captions",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="COCO captions JSON, or JSONL/CSV with image and caption fields.",
)
@click.option(
    "--images",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Folder the image paths of the caption file are relative to.",
)
@click.option("--output", required=True, type=click.Path(), help="LMDB file to create.")
@click.option("--workers", default=1, show_default=True, help="Image reading processes.")
@click.option(
    "--max-side", default=None, type=int, help="Downscale images whose longer side exceeds it."
)
@click.option("--strict", is_flag=True, help="Fail on the first bad input instead of skipping.")
@click.option(
    "--tokenizer",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="Tokenizer JSON whose hash the manifest records.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
@click.option(
    "--max-pixels",
    default=None,
    type=click.IntRange(min=1),
    help="Skip images with more pixels (default: $VIRTEX_MAX_IMAGE_PIXELS, else 89478485).",
)
def build_lmdb_command(
    captions: str,
    images: str,
    output: str,
    workers: int,
    max_side: int | None,
    strict: bool,
    tokenizer: str | None,
    overwrite: bool,
    max_pixels: int | None,
) -> None:
    """Convert a caption file and its images into one LMDB file.

    Bad inputs (missing, corrupt or truncated images, images above the pixel limit, paths that are
    not regular files or leave --images, images without captions) are skipped and listed in the
    manifest; captions that are empty or not strings are dropped and counted; --strict stops at
    the first. Grayscale, CMYK, RGBA and 16-bit images are converted to RGB; EXIF-rotated images
    are stored upright.

    \b
    Example:
      virtex-data build-lmdb --captions annotations/captions_train2017.json \\
          --images train2017 --output coco_train2017.lmdb --workers 8
    """
    import lmdb

    from virtex_data.lmdb_writer import BuildError, build_lmdb
    from virtex_data.tokenizer import CaptionTokenizer

    check_writable(Path(output).absolute().parent)
    sha = CaptionTokenizer.from_file(tokenizer).sha256 if tokenizer else None
    start = time.perf_counter()
    try:
        manifest = build_lmdb(
            captions,
            images,
            output,
            workers=workers,
            max_side=max_side,
            strict=strict,
            tokenizer_sha256=sha,
            overwrite=overwrite,
            max_pixels=max_pixels,
        )
    except UnicodeDecodeError as error:  # the caption file (images are read as bytes)
        raise click.ClickException(_not_utf8(captions, error)) from None
    except (BuildError, FileExistsError, ValueError) as error:
        raise click.ClickException(str(error)) from error
    except lmdb.Error as error:  # a full disk reaches LMDB as EIO/ENOSPC: say what was free
        raise click.ClickException(
            f"could not write {output}: {error} ({_free(Path(output).absolute().parent)})"
        ) from None
    seconds = time.perf_counter() - start
    click.echo(
        f"wrote {manifest.count} records to {output} in {seconds:.1f} s; skipped "
        f"{len(manifest.skipped)}, converted {manifest.converted or 0}, resized {manifest.resized}"
    )
    for entry in manifest.skipped[:20]:
        click.echo(f"  skipped image {entry['image_id']} ({entry['file']}): {entry['reason']}")
    if len(manifest.skipped) > 20:
        click.echo(f"  ... and {len(manifest.skipped) - 20} more (all in the manifest)")
    not_strings = sum(d["count"] for d in manifest.dropped_captions if d["reason"] != "empty")
    if not_strings:
        click.echo(f"  dropped {not_strings} caption(s) that are not strings (e.g. null)")
    if manifest.oriented:
        click.echo(f"  turned {manifest.oriented} image(s) upright (EXIF orientation)")
    if manifest.unknown_image_ids:
        click.echo(f"  {len(manifest.unknown_image_ids)} caption(s) name unknown image ids")


@main.command("inspect")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--records", default=3, show_default=True, help="How many records to print.")
def inspect_command(path: str, records: int) -> None:
    """Print the manifest of an LMDB file and its first few records.

    \b
    Example:
      virtex-data inspect coco_train2017.lmdb --records 3
    """
    from virtex_data.lmdb_reader import LmdbFormatError, LmdbReader

    try:
        reader = LmdbReader(path)
    except (LmdbFormatError, FileNotFoundError) as error:
        raise click.ClickException(str(error)) from error
    manifest = dict(reader.manifest.__dict__)
    ids = manifest.pop("image_ids")
    click.echo(f"{path}: {reader.manifest.count} records")
    for key, value in manifest.items():
        click.echo(f"  {key}: {value}")
    click.echo(f"  image_ids: {ids[:10]}{' ...' if len(ids) > 10 else ''}")
    for index in range(min(records, len(reader))):
        try:
            record = reader[index]
        except LmdbFormatError as error:
            raise click.ClickException(str(error)) from error
        click.echo(
            f"[{index}] id {record.image_id} {record.file_name} {record.format} "
            f"{record.width}x{record.height} {len(record.image)} bytes"
        )
        for caption in record.captions:
            click.echo(f"      {caption}")
