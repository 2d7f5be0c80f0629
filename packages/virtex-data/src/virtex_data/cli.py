"""The ``virtex-data`` command line: ``build-vocab``, ``build-lmdb``, ``build-shards``, ``synth``,
``inspect``."""

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
    "--caption-order",
    type=click.Choice(["random", "salience"]),
    default="random",
    show_default=True,
    help="Which objects captions name first: in random order (the task ablation's data) or the "
    "largest first (salience; the data `virtex-train pretrain` builds for the quickstart).",
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
    caption_order: str,
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
            caption_order=caption_order,
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


@main.command("build-shards")
@click.option(
    "--captions",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="COCO captions JSON, or JSONL/CSV with image and caption fields (as build-lmdb).",
)
@click.option(
    "--images",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Folder the image paths of the caption file are relative to.",
)
@click.option(
    "--output",
    "output_folder",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder to write 00000.tar, 00001.tar ... and manifest.json into.",
)
@click.option("--shard-size", default=1000, show_default=True, help="Samples per shard.")
@click.option("--workers", default=1, show_default=True, help="Image reading processes.")
@click.option(
    "--max-side", default=None, type=int, help="Downscale images whose longer side exceeds it."
)
@click.option("--strict", is_flag=True, help="Fail on the first bad input instead of skipping.")
@click.option("--overwrite", is_flag=True, help="Replace the shards of a previous build.")
@click.option(
    "--max-pixels",
    default=None,
    type=click.IntRange(min=1),
    help="Skip images with more pixels (default: $VIRTEX_MAX_IMAGE_PIXELS, else 89478485).",
)
def build_shards_command(
    captions: str,
    images: str,
    output_folder: str,
    shard_size: int,
    workers: int,
    max_side: int | None,
    strict: bool,
    overwrite: bool,
    max_pixels: int | None,
) -> None:
    """Write WebDataset tar shards (img2dataset's layout) from a caption file and its images.

    Images are checked, converted and skipped exactly as build-lmdb does; every caption of an
    image is kept (in <key>.json; the first also in <key>.txt). Train from them with
    data.train_shards: "OUT/{00000..NNNNN}.tar" (the pattern is printed).

    \b
    Example:
      virtex-data build-shards --captions annotations/captions_train2017.json \\
          --images train2017 --output shards/coco_train2017 --shard-size 1000 --workers 8
    """
    from virtex_data.lmdb_writer import BuildError
    from virtex_data.shard_writer import build_shards

    check_writable(output_folder, f"--output {output_folder}")
    start = time.perf_counter()
    try:
        manifest = build_shards(
            captions,
            images,
            output_folder,
            shard_size=shard_size,
            workers=workers,
            max_side=max_side,
            strict=strict,
            overwrite=overwrite,
            max_pixels=max_pixels,
        )
    except UnicodeDecodeError as error:
        raise click.ClickException(_not_utf8(captions, error)) from None
    except (BuildError, FileExistsError, ValueError) as error:
        raise click.ClickException(str(error)) from error
    seconds = time.perf_counter() - start
    click.echo(
        f"wrote {manifest.count} samples in {len(manifest.shards)} shard(s) to {output_folder} "
        f"in {seconds:.1f} s; skipped {len(manifest.skipped)}, converted "
        f"{manifest.converted or 0}, resized {manifest.resized}"
    )
    for entry in manifest.skipped[:20]:
        click.echo(f"  skipped image {entry['image_id']} ({entry['file']}): {entry['reason']}")
    if len(manifest.skipped) > 20:
        click.echo(f"  ... and {len(manifest.skipped) - 20} more (all in manifest.json)")
    if manifest.shards:
        click.echo(f'  config: data.train_shards: "{Path(output_folder) / manifest.pattern}"')


def _is_shard_set(path: str) -> bool:
    return Path(path).is_dir() or path.endswith(".tar") or "{" in path or "::" in path


def _inspect_shards(spec: str, records: int) -> None:
    from virtex_data.shard_writer import read_shard_manifest
    from virtex_data.shards import (
        decode_sample,
        describe,
        expand_shards,
        missing_shards,
        read_shard,
    )

    try:
        paths = expand_shards(spec)
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    missing = missing_shards(paths)
    if missing:
        raise click.ClickException(
            f"{len(missing)} of {len(paths)} shards do not exist, e.g. {missing[0]}"
        )
    if Path(spec).is_dir():
        manifest = read_shard_manifest(spec)
        if manifest is not None:
            for key in ("count", "normalization_version", "converted", "resized", "created"):
                click.echo(f"  manifest {key}: {manifest.get(key)}")
            click.echo(f"  manifest skipped: {len(manifest.get('skipped', []))}")
    total = 0
    bad: list[str] = []
    shown = 0
    for path in paths:
        count = 0
        try:
            for raw in read_shard(path):
                decoded = decode_sample(raw)
                if decoded.record is None:
                    bad.append(f"{path}: {raw.key}: {decoded.reason}")
                    continue
                count += 1
                if shown < records:
                    record = decoded.record
                    click.echo(
                        f"[{shown}] {Path(path).name} key {raw.key} id {record.image_id} "
                        f"{record.format} {len(record.image)} bytes"
                    )
                    for caption in record.captions:
                        click.echo(f"      {caption}")
                    shown += 1
        except Exception as error:  # a damaged shard: say where, keep counting the others
            bad.append(f"{path}: unreadable after {count} sample(s): {describe(error)}")
        total += count
    click.echo(f"{spec}: {total} samples in {len(paths)} shard(s)")
    if bad:
        click.echo(f"  {len(bad)} bad sample(s) or shard(s) (skipped when training):")
        for note in bad[:20]:
            click.echo(f"    {note}")


@main.command("inspect")
@click.argument("path", type=click.Path())
@click.option("--records", default=3, show_default=True, help="How many records to print.")
def inspect_command(path: str, records: int) -> None:
    """Print an LMDB file's manifest and first records, or count a shard set's samples.

    PATH is an LMDB file, or shards: a folder of *.tar, one .tar file or a brace pattern
    ("shards/{00000..00099}.tar"). For shards every sample is read and counted (bad ones are
    listed) and the first --records are printed.

    \b
    Examples:
      virtex-data inspect coco_train2017.lmdb --records 3
      virtex-data inspect "shards/{00000..00099}.tar"
    """
    from virtex_data.lmdb_reader import LmdbFormatError, LmdbReader

    if _is_shard_set(path):
        _inspect_shards(path, records)
        return

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
