"""``virtex-eval voc07``: the command line of :mod:`virtex_eval.voc07`."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Literal

import click

from virtex_data.downstream import VOC_CLASSES
from virtex_eval.cli.options import (
    cache_dir_option,
    crop_size_option,
    device_option,
    quiet_option,
    resize_option,
    weights_option,
)
from virtex_eval.features import (
    cached_features,
    default_cache_dir,
    probe_transform,
    voc07_split,
)
from virtex_eval.voc07 import SvmConfig, l2_normalize, train_test_svms
from virtex_eval.weights import load_backbone


@click.command(
    "voc07-svm",
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Example: virtex-eval voc07-svm --weights run/checkpoints/final.pt "
    "--voc-root datasets/VOC2007",
)
@weights_option
@click.option(
    "--voc-root",
    required=True,
    type=click.Path(file_okay=False),
    help="VOC2007 folder (or the VOCdevkit holding it).",
)
@click.option("--costs", default="0.01,0.1,1.0,10.0", show_default=True, help="Values of C.")
@click.option(
    "--train-difficult",
    type=click.Choice(["negative", "exclude"]),
    default="negative",
    show_default=True,
    help="Difficult trainval images: negatives (original) or left out.",
)
@click.option(
    "--solver",
    type=click.Choice(["dual", "primal"]),
    default="dual",
    show_default=True,
    help="liblinear solver (dual: the original's).",
)
@click.option("--jobs", type=int, default=None, help="SVM worker processes [default: CPUs].")
@click.option("--stage", default="layer4", show_default=True, help="Backbone stage to pool.")
@crop_size_option
@resize_option
@click.option("--batch-size", default=64, show_default=True, help="Images per forward pass.")
@click.option("--workers", default=4, show_default=True, help="DataLoader workers.")
@device_option
@cache_dir_option
@click.option("--no-cache", is_flag=True, help="Neither read nor write the feature cache.")
@click.option(
    "--output",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the per-class results as JSON.",
)
@quiet_option
def voc07_command(
    weights: str,
    voc_root: str,
    costs: str,
    train_difficult: Literal["negative", "exclude"],
    solver: str,
    jobs: int | None,
    stage: str,
    image_size: int,
    resize: int,
    batch_size: int,
    workers: int,
    device: str,
    cache_dir: str | None,
    no_cache: bool,
    output: str | None,
    quiet: bool,
) -> None:
    """VOC 2007 classification mAP of linear SVMs on frozen, pooled, L2-normalised features
    (the VirTex protocol: C picked by 3-fold CV AP on trainval, difficult test images ignored).
    """
    from virtex_eval.distributed import init_distributed

    try:
        cost_values = tuple(float(c) for c in costs.split(",") if c.strip())
    except ValueError:
        raise click.BadParameter(
            f"not a list of numbers: {costs!r}", param_hint="--costs"
        ) from None
    ctx = init_distributed(device)
    try:
        transform = probe_transform(image_size, resize)
        # Both splits are read (and their files checked) before any extraction starts.
        datasets = {
            split: voc07_split(voc_root, split, transform) for split in ("trainval", "test")
        }
        loaded = load_backbone(weights)
        splits = {}
        for split, dataset in datasets.items():
            splits[split] = cached_features(
                loaded,
                dataset,
                transform,
                cache_dir=None if no_cache else (cache_dir or default_cache_dir()),
                stages=[stage],
                batch_size=batch_size,
                num_workers=workers,
                ctx=ctx,
                progress=not quiet,
                desc=f"VOC07 {split}",
            )
        if not ctx.is_main:
            return
        train, test = splits["trainval"], splits["test"]
        config = SvmConfig(
            costs=cost_values, dual=solver == "dual", train_difficult=train_difficult
        )
        result = train_test_svms(
            l2_normalize(train.features[stage].numpy()),
            train.targets[0].numpy(),
            train.targets[1].numpy(),
            l2_normalize(test.features[stage].numpy()),
            test.targets[0].numpy(),
            test.targets[1].numpy(),
            classes=VOC_CLASSES,
            config=config,
            jobs=jobs,
            progress=not quiet,
        )
        result.extra = {
            "weights": str(loaded.source),
            "stage": stage,
            "image_size": image_size,
            "resize": resize,
            "trainval_images": len(train),
            "test_images": len(test),
            "config": asdict(config),
        }
        click.echo(result.table())
        click.echo(
            f"VOC07 mAP {100 * result.mean_ap:.2f} ({len(train)} trainval / {len(test)} test "
            f"images, SVMs {result.seconds:.1f} s, {result.not_converged} fits hit max_iter)"
        )
        if output:
            with open(output, "w", encoding="utf-8") as handle:
                json.dump(result.to_dict(), handle, indent=2)
    except (ValueError, FileNotFoundError) as error:
        raise click.ClickException(str(error)) from None
    finally:
        ctx.close()
