"""Export a pretrained visual backbone to torchvision or detectron2 weights.

Two renamings of the same tensors, no other library imported:

- :func:`to_torchvision`: a state dict of ``torchvision.models.<name>`` without ``fc`` (our
  :class:`~virtex_models.visual.TorchvisionBackbone` already uses torchvision's names).
- :func:`to_detectron2`: detectron2's ResNet names (``stem.conv1.weight``,
  ``stem.conv1.norm.running_mean``, ``res2.0.conv1.weight``, ``res2.0.conv1.norm.weight``,
  ``res2.0.shortcut.weight``, ...). :func:`detectron2_checkpoint` wraps it in the dict that
  detectron2's ``DetectionCheckpointer`` reads from a ``.pth`` file (``{"model": ...,
  "__author__": ..., "matching_heuristics": True}``): the heuristics match ``res2.0.conv1.weight``
  to ``backbone.bottom_up.res2.0.conv1.weight`` (FPN) or ``res5.*`` to ``roi_heads.res5.*``
  (C4). Every value is a tensor, string, bool or int, so the file loads with
  ``torch.load(weights_only=True)``.

torchvision's Bottleneck strides in its 3x3 convolution: detectron2 needs
``MODEL.RESNETS.STRIDE_IN_1X1=False`` for these weights (see :func:`detectron2_resnet_options`),
and RGB input normalised with the ImageNet mean/std the backbone was trained with. With
detectron2's default ``STRIDE_IN_1X1=True`` the weights load without a warning and the features
are wrong.

Command line: ``python -m virtex_models.export CHECKPOINT OUT.pth [--format detectron2]``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from virtex_models.atomic_file import atomic_write
from virtex_models.errors import one_line
from virtex_models.pretrained import load_objective
from virtex_models.visual import TorchvisionBackbone

__all__ = [
    "Source",
    "backbone_of",
    "detectron2_checkpoint",
    "detectron2_resnet_options",
    "main",
    "save_detectron2",
    "to_detectron2",
    "to_torchvision",
]

#: What the exporters accept: a checkpoint file, a checkpoint dict, an objective (with
#: ``.visual``) or a backbone.
Source = str | os.PathLike[str] | Mapping[str, Any] | nn.Module

#: torchvision ResNet-family name -> (depth, groups, width per group) as detectron2 spells them.
_RESNETS: dict[str, tuple[int, int, int]] = {
    "resnet18": (18, 1, 64),
    "resnet34": (34, 1, 64),
    "resnet50": (50, 1, 64),
    "resnet101": (101, 1, 64),
    "resnet152": (152, 1, 64),
    "wide_resnet50_2": (50, 1, 128),
    "wide_resnet101_2": (101, 1, 128),
    "resnext50_32x4d": (50, 32, 4),
    "resnext101_32x8d": (101, 32, 8),
    "resnext101_64x4d": (101, 64, 4),
}

_BN_PARTS = ("weight", "bias", "running_mean", "running_var")


def backbone_of(source: Source) -> TorchvisionBackbone:
    """The torchvision ResNet backbone inside ``source``.

    Raises:
        ValueError: the backbone is not a torchvision ResNet (e.g. a timm model), naming it.
    """
    if isinstance(source, nn.Module):
        module = source
    else:
        module, _ = load_objective(source)
    backbone = (
        module if isinstance(module, TorchvisionBackbone) else getattr(module, "visual", None)
    )
    if not isinstance(backbone, TorchvisionBackbone):
        found = type(backbone if backbone is not None else module).__name__
        raise ValueError(f"export needs a torchvision ResNet backbone, got {found}")
    if backbone.name not in _RESNETS:
        raise ValueError(
            f"export knows the ResNet family {sorted(_RESNETS)}, not {backbone.name!r}"
        )
    return backbone


def to_torchvision(source: Source) -> dict[str, Tensor]:
    """State dict of ``torchvision.models.<name>`` minus ``fc.*`` (load with ``strict=False``)."""
    state = backbone_of(source).state_dict()
    return {key: value.detach().clone() for key, value in state.items()}


def _detectron2_name(key: str) -> str | None:
    """torchvision ResNet key -> detectron2 ResNet key (``None``: not exported)."""
    if key.endswith("num_batches_tracked"):
        return None  # a counter, not a weight; detectron2's FrozenBatchNorm has no such buffer
    if key == "conv1.weight":
        return "stem.conv1.weight"
    match = re.fullmatch(r"bn1\.(\w+)", key)
    if match:
        return f"stem.conv1.norm.{match[1]}"
    match = re.fullmatch(r"layer(\d)\.(\d+)\.(.+)", key)
    if not match:
        raise ValueError(f"unexpected ResNet parameter {key!r}")
    stage, block, rest = int(match[1]) + 1, match[2], match[3]
    prefix = f"res{stage}.{block}"
    if re.fullmatch(r"conv\d\.weight", rest):
        return f"{prefix}.{rest}"
    conv = re.fullmatch(r"bn(\d)\.(\w+)", rest)
    if conv:
        return f"{prefix}.conv{conv[1]}.norm.{conv[2]}"
    if rest == "downsample.0.weight":
        return f"{prefix}.shortcut.weight"
    shortcut = re.fullmatch(r"downsample\.1\.(\w+)", rest)
    if shortcut:
        return f"{prefix}.shortcut.norm.{shortcut[1]}"
    raise ValueError(f"unexpected ResNet parameter {key!r}")


def to_detectron2(source: Source) -> dict[str, Tensor]:
    """The backbone's weights under detectron2's ResNet names (``stem.*``, ``res2.*`` ..)."""
    result: dict[str, Tensor] = {}
    for key, value in to_torchvision(source).items():
        name = _detectron2_name(key)
        if name is not None:
            result[name] = value
    return result


def detectron2_resnet_options(source: Source | str) -> dict[str, Any]:
    """``MODEL.RESNETS.*`` settings that build the detectron2 ResNet matching the weights.

    Args:
        source: anything :func:`backbone_of` accepts, or a torchvision model name.
    """
    name = source if isinstance(source, str) and source in _RESNETS else backbone_of(source).name
    depth, groups, width = _RESNETS[name]
    return {
        "MODEL.RESNETS.DEPTH": depth,
        "MODEL.RESNETS.NUM_GROUPS": groups,
        "MODEL.RESNETS.WIDTH_PER_GROUP": width,
        # Basic blocks (ResNet-18/34) end stage 2 with 64 channels, bottlenecks with 256.
        "MODEL.RESNETS.RES2_OUT_CHANNELS": 64 if depth < 50 else 256,
        "MODEL.RESNETS.STRIDE_IN_1X1": False,
    }


def detectron2_checkpoint(source: Source) -> dict[str, Any]:
    """What :func:`save_detectron2` writes: detectron2's checkpoint dict for a backbone.

    ``resnet`` holds :func:`detectron2_resnet_options` (detectron2's checkpointer ignores it).
    """
    backbone = backbone_of(source)
    return {
        "model": to_detectron2(backbone),
        "__author__": "virtex",
        "matching_heuristics": True,
        "resnet": detectron2_resnet_options(backbone),
    }


def save_detectron2(source: Source, path: str | os.PathLike[str]) -> Path:
    """Write :func:`detectron2_checkpoint` to ``path`` (a ``.pth`` for ``MODEL.WEIGHTS``)."""
    out = Path(path)
    if out.suffix == ".pkl":
        raise ValueError(f"{out}: detectron2 unpickles .pkl files; use a .pth name")
    out.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = detectron2_checkpoint(source)  # before the output is touched
    return atomic_write(out, lambda handle: torch.save(checkpoint, handle))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m virtex_models.export``: exit status 0, or 1 with one ``Error:`` line.

    ``--debug`` (or ``VIRTEX_DEBUG=1``) lets the traceback through instead.
    """
    parser = argparse.ArgumentParser(
        prog="python -m virtex_models.export",
        description="Export the visual backbone of a virtex checkpoint to detectron2 (a .pth "
        "for MODEL.WEIGHTS, with MODEL.RESNETS.STRIDE_IN_1X1=False) or torchvision weights.",
    )
    parser.add_argument("checkpoint", type=Path, help="a self-contained virtex checkpoint")
    parser.add_argument("out", type=Path, help="file to write")
    parser.add_argument("--format", choices=("detectron2", "torchvision"), default="detectron2")
    parser.add_argument("--debug", action="store_true", help="show tracebacks (VIRTEX_DEBUG=1)")
    args = parser.parse_args(argv)
    try:
        if args.format == "detectron2":
            save_detectron2(args.checkpoint, args.out)
        else:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            torch.save(to_torchvision(args.checkpoint), args.out)
    except Exception as error:
        if args.debug or os.environ.get("VIRTEX_DEBUG", "") not in ("", "0"):
            raise
        print(f"Error: {one_line(error)}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
