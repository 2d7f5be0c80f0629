"""``virtex-eval linear``: the command line of :mod:`virtex_eval.linear`."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
import torch

from virtex_eval.cli.options import device_option, quiet_option
from virtex_eval.distributed import init_distributed
from virtex_eval.features import FeatureSet
from virtex_eval.linear import RECIPES, train_linear, train_on_features


@click.command(
    "linear",
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Examples: virtex-eval linear --weights final.pt --train imagenet/train "
    "--val imagenet/val; virtex-eval linear --on-features --train train.pt --val val.pt",
)
@click.option(
    "--weights",
    default=None,
    help="CKPT.pt | original:CKPT,CONFIG.yaml | "
    "torchvision:PATH[,ARCH] | random[:ARCH] (not with --on-features).",
)
@click.option(
    "--train",
    "train_path",
    required=True,
    help="Class folder or iNaturalist JSON (feature file with --on-features).",
)
@click.option("--val", "val_path", required=True, help="Same, for validation.")
@click.option("--image-root", default=None, help="Image root of an iNaturalist train JSON.")
@click.option("--val-image-root", default=None, help="Image root of an iNaturalist val JSON.")
@click.option(
    "--recipe",
    type=click.Choice(sorted(RECIPES)),
    default="imagenet",
    show_default=True,
    help="imagenet: frozen linear probe; inaturalist: fine-tune.",
)
@click.option("--epochs", type=int, default=None, help="Override the recipe's epochs.")
@click.option("--lr", type=float, default=None, help="Override the recipe's learning rate.")
@click.option("--batch-size", type=int, default=None, help="Override the global batch size.")
@click.option("--weight-decay", type=float, default=None, help="Override the weight decay.")
@click.option("--max-steps", type=int, default=None, help="Stop after N iterations (smoke runs).")
@click.option(
    "--eval-every",
    type=int,
    default=0,
    show_default=True,
    help="Evaluate every N epochs as well as at the end.",
)
@click.option("--workers", default=4, show_default=True, help="DataLoader workers per rank.")
@device_option
@click.option(
    "--precision",
    type=click.Choice(["fp32", "bf16"]),
    default="fp32",
    show_default=True,
    help="Autocast dtype.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of init and shuffling.")
@click.option(
    "--image-size", default=224, show_default=True, help="Crop side (val: resize x256/224)."
)
@click.option(
    "--on-features",
    is_flag=True,
    help="Logistic-regression probe on feature files from `virtex-eval features`.",
)
@click.option("--stage", default="layer4", show_default=True, help="Stage (--on-features).")
@click.option(
    "--max-iter", default=500, show_default=True, help="L-BFGS iterations (--on-features)."
)
@click.option(
    "--output", type=click.Path(dir_okay=False), default=None, help="Write the results as JSON."
)
@click.option(
    "--save",
    type=click.Path(dir_okay=False),
    default=None,
    help="Save the trained classifier's state dict (linear layer).",
)
@quiet_option
def linear_command(
    weights: str | None,
    train_path: str,
    val_path: str,
    image_root: str | None,
    val_image_root: str | None,
    recipe: str,
    epochs: int | None,
    lr: float | None,
    batch_size: int | None,
    weight_decay: float | None,
    max_steps: int | None,
    eval_every: int,
    workers: int,
    device: str,
    precision: str,
    seed: int,
    image_size: int,
    on_features: bool,
    stage: str,
    max_iter: int,
    output: str | None,
    save: str | None,
    quiet: bool,
) -> None:
    """Linear classification (top-1/top-5) with a frozen backbone, end-to-end fine-tuning
    (--recipe inaturalist), or a quick probe on cached features (--on-features)."""
    try:
        if on_features:
            if weights is not None:
                raise click.UsageError("--on-features reads feature files: drop --weights")
            result = train_on_features(
                FeatureSet.load(train_path),
                FeatureSet.load(val_path),
                stage=stage,
                weight_decay=1e-4 if weight_decay is None else weight_decay,
                max_iter=max_iter,
                device="cuda"
                if device == "auto" and torch.cuda.is_available()
                else ("cpu" if device == "auto" else device),
            )
            click.echo(
                f"top-1 {result['top1']:.2f}  top-5 {result['top5']:.2f}  "
                f"({result['images']} val images, {result['classes']} classes, "
                f"{result['seconds']:.1f} s)"
            )
            if output:
                Path(output).write_text(json.dumps(result, indent=2), encoding="utf-8")
            return
        if weights is None:
            raise click.UsageError("--weights is required (unless --on-features)")
        chosen = RECIPES[recipe]
        overrides: dict[str, Any] = {
            key: value
            for key, value in (
                ("epochs", epochs),
                ("lr", lr),
                ("batch_size", batch_size),
                ("weight_decay", weight_decay),
            )
            if value is not None
        }
        chosen = replace(chosen, **overrides)
        ctx = init_distributed(device)
        try:
            result = train_linear(
                weights,
                train_path,
                val_path,
                chosen,
                image_root=image_root,
                val_image_root=val_image_root,
                ctx=ctx,
                workers=workers,
                precision=precision,
                eval_every=eval_every,
                max_steps=max_steps,
                seed=seed,
                image_size=image_size,
                progress=not quiet,
            )
        finally:
            ctx.close()
        if not ctx.is_main:
            return
        state = result.pop("state_dict")
        if save:
            torch.save(state, save)
        click.echo(
            f"top-1 {result['top1']:.2f}  top-5 {result['top5']:.2f}  ({result['images']} val "
            f"images, {result['classes']} classes, recipe {chosen.name}, "
            f"{result['seconds']:.1f} s)"
        )
        if output:
            Path(output).write_text(json.dumps(result, indent=2), encoding="utf-8")
    except (ValueError, FileNotFoundError) as error:
        raise click.ClickException(str(error)) from None
