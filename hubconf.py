"""torch.hub entry points of virtex (needs only torch and torchvision).

    import torch
    cnn = torch.hub.load("<repo or path>", "resnet50", pretrained=True)  # the original's
    grid = cnn.eval()(images)  # (B, 2048, 7, 7) for 224 px images
    cnn = torch.hub.load("<repo or path>", "virtex_backbone", name="resnet50",
                         weights="https://.../step_500000.pt", sha256="...")
    model = torch.hub.load("<repo or path>", "virtex_captioning", weights="model.pt")

The entry points are thin: they call :mod:`virtex_models.hub`, found in this repository's
``packages/virtex-models/src`` when the package is not installed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

dependencies = ["torch", "torchvision"]

_SOURCE = Path(__file__).resolve().parent / "packages" / "virtex-models" / "src"
if _SOURCE.is_dir() and str(_SOURCE) not in sys.path:
    sys.path.insert(0, str(_SOURCE))

from virtex_models import hub as _hub  # noqa: E402


def resnet50(pretrained: bool = False, **kwargs: Any) -> Any:
    """The original VirTex hub model: a torchvision ResNet-50 (``avgpool`` and ``fc`` are
    identities) returning the ``(B, 2048, H/32, W/32)`` grid.

    Args:
        pretrained: load the original's published backbone of its best model (bicaptioning,
            R-50, L1 H2048), ``backbone_bicaptioning_R_50_L1_H2048.pth``.
        **kwargs: ``url``, ``sha256``, ``cache_dir``; the rest go to torchvision's ``ResNet``.
    """
    return _hub.resnet50(pretrained, **kwargs)


def virtex_backbone(name: str = "resnet50", weights: str | None = None, **kwargs: Any) -> Any:
    """A VirTex visual backbone (torchvision ResNet up to its last grid), in eval mode.

    Args:
        name: torchvision model name.
        weights: path or URL of a virtex checkpoint, an original VirTex checkpoint or a
            torchvision state dict; ``None`` for random weights.
        **kwargs: ``sha256`` (expected digest), ``cache_dir``.
    """
    return _hub.backbone(name, weights, **kwargs)


def virtex_captioning(weights: str, **kwargs: Any) -> Any:
    """A full VirTex captioning model (backbone + decoder) from a self-contained checkpoint.

    Args:
        weights: path or URL of the checkpoint.
        **kwargs: ``sha256`` (expected digest), ``cache_dir``.
    """
    return _hub.captioning(weights, **kwargs)
