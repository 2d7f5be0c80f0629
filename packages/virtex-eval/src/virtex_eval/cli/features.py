"""``virtex-eval features``: the command line of :mod:`virtex_eval.features`."""

from __future__ import annotations

from typing import Any

import click
from torch.utils.data import Dataset

from virtex_eval.cli.options import (
    cache_dir_option,
    crop_size_option,
    device_option,
    resize_option,
    weights_option,
)
from virtex_eval.distributed import init_distributed
from virtex_eval.features import (
    cached_features,
    default_cache_dir,
    image_folder,
    probe_transform,
    voc07_split,
)
from virtex_eval.weights import load_backbone


@click.command(
    "features",
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Example: virtex-eval features --weights run/checkpoints/final.pt "
    "--folder imagenet/val --out val.pt",
)
@weights_option
@click.option("--folder", type=click.Path(file_okay=False), help="Class-folder dataset root.")
@click.option("--voc-root", type=click.Path(file_okay=False), help="VOC2007 (or VOCdevkit) root.")
@click.option("--split", default="trainval", show_default=True, help="VOC split.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Feature file.")
@click.option("--stages", default="layer4", show_default=True, help="Comma-separated stages.")
@crop_size_option
@resize_option
@click.option("--batch-size", default=64, show_default=True, help="Images per batch (per rank).")
@click.option("--workers", default=4, show_default=True, help="DataLoader workers (per rank).")
@device_option
@click.option(
    "--precision",
    type=click.Choice(["fp32", "bf16"]),
    default="fp32",
    show_default=True,
    help="Autocast dtype of the forward pass.",
)
@cache_dir_option
@click.option("--no-cache", is_flag=True, help="Neither read nor write the cache.")
def features_command(
    weights: str,
    folder: str | None,
    voc_root: str | None,
    split: str,
    out: str,
    stages: str,
    image_size: int,
    resize: int,
    batch_size: int,
    workers: int,
    device: str,
    precision: str,
    cache_dir: str | None,
    no_cache: bool,
) -> None:
    """Extract pooled features of a frozen backbone (torchrun-aware) into a file.

    Give a class-folder dataset (--folder) or a VOC split (--voc-root, --split). The file holds
    the features of each stage, the labels and a description; `virtex-eval linear
    --on-features` reads it.
    """
    if (folder is None) == (voc_root is None):
        raise click.UsageError("give exactly one of --folder or --voc-root")
    ctx = init_distributed(device)
    try:
        transform = probe_transform(image_size, resize)
        loaded = load_backbone(weights)
        dataset: Dataset[Any]
        extra: dict[str, Any]
        if folder is not None:
            dataset = image_folder(folder, transform)
            extra = {"dataset": str(folder), "classes": list(dataset.classes)}
        else:
            assert voc_root is not None
            dataset = voc07_split(voc_root, split, transform)
            extra = {"dataset": f"{voc_root}:{split}", "image_ids": list(dataset.image_ids)}
        result = cached_features(
            loaded,
            dataset,
            transform,
            cache_dir=None if no_cache else (cache_dir or default_cache_dir()),
            stages=[s.strip() for s in stages.split(",") if s.strip()],
            extra_meta=extra,
            batch_size=batch_size,
            num_workers=workers,
            ctx=ctx,
            precision=precision,
        )
        if ctx.is_main:
            result.save(out)
            shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in result.features.items())
            source = "cache" if result.meta.get("cache_hit") else "extracted"
            click.echo(f"{out}: {shapes} ({source})")
    except (ValueError, FileNotFoundError) as error:
        raise click.ClickException(str(error)) from None
    finally:
        ctx.close()
