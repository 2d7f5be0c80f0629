"""What the repository's ``hubconf.py`` exposes to ``torch.hub.load`` (torch + torchvision only).

Weights come from a local path or a URL (downloaded once into the torch hub cache, verified by
SHA-256 when a digest is given). Accepted files:

- a self-contained checkpoint (``model_spec`` + ``model``, :mod:`.pretrained`);
- an original VirTex checkpoint (``model`` with ``visual.cnn.*`` keys) for the backbone;
- a plain torchvision state dict (``conv1.weight``, ..., ``fc.*`` ignored) for the backbone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from virtex_models.download import fetch
from virtex_models.pretrained import load_objective, load_state_dict_checked
from virtex_models.visual import TorchvisionBackbone

__all__ = ["backbone", "captioning"]


def _load(weights: str | os.PathLike[str], sha256: str | None, cache_dir: str | None) -> Any:
    path = fetch(weights, sha256=sha256, cache_dir=cache_dir)
    return path, torch.load(path, map_location="cpu", weights_only=True)


def _backbone_state(checkpoint: Mapping[str, Any], source: str) -> dict[str, Tensor]:
    if "model_spec" in checkpoint:
        objective, _ = load_objective(checkpoint)
        visual = objective.visual
        assert isinstance(visual, nn.Module)
        return dict(visual.state_dict())
    state = checkpoint.get("model", checkpoint)
    if not isinstance(state, Mapping):
        raise ValueError(f"{source}: no state dict found")
    prefixes = ("visual.cnn.", "visual.")
    for prefix in prefixes:
        if any(str(key).startswith(prefix) for key in state):
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            break
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def backbone(
    name: str = "resnet50",
    weights: str | os.PathLike[str] | None = None,
    sha256: str | None = None,
    cache_dir: str | None = None,
) -> TorchvisionBackbone:
    """A torchvision ResNet backbone ``(B, 3, H, W) -> (B, C, H/32, W/32)``, in eval mode.

    Args:
        name: torchvision model name (``resnet50``, ``resnet101``, ``wide_resnet50_2``, ...).
        weights: path or URL of a checkpoint (see module docstring); ``None``: random init.
        sha256: expected digest of the weights file.
        cache_dir: download cache (default: the torch hub cache).
    """
    model = TorchvisionBackbone(name)
    if weights is not None:
        path, checkpoint = _load(weights, sha256, cache_dir)
        load_state_dict_checked(model, _backbone_state(checkpoint, str(path)), str(path))
    return model.eval()


def captioning(
    weights: str | os.PathLike[str],
    sha256: str | None = None,
    cache_dir: str | None = None,
) -> nn.Module:
    """The full captioning objective of a self-contained checkpoint, in eval mode.

    ``model.generate(images)`` returns token ids; decode them with the tokenizer stored in the
    checkpoint (``"tokenizer"`` entry, JSON for the ``tokenizers`` library).
    """
    path, checkpoint = _load(weights, sha256, cache_dir)
    model, _ = load_objective(checkpoint)
    if not hasattr(model, "generate"):
        raise ValueError(f"{path}: {type(model).__name__} is not a captioning model")
    return model
