"""What the repository's ``hubconf.py`` exposes to ``torch.hub.load`` (torch + torchvision only).

:func:`resnet50` is the original VirTex's one-liner (``torch.hub.load("kdexd/virtex",
"resnet50", pretrained=True)``): a torchvision ResNet-50 with the original's published
bicaptioning backbone, returning the ``(B, 2048, H/32, W/32)`` grid.

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

import torchvision
from torch import Tensor, nn

from virtex_models.download import fetch
from virtex_models.pretrained import load_objective, load_state_dict_checked
from virtex_models.torchfile import load_weights_only
from virtex_models.visual import TorchvisionBackbone

__all__ = ["ORIGINAL_R50_URL", "ResNetGrid", "backbone", "captioning", "resnet50"]

#: The backbone of the original's best model (bicaptioning, R-50, L1 H2048), as its
#: ``hubconf.py`` published it.
ORIGINAL_R50_URL = (
    "https://www.dropbox.com/s/pxgjxcva7oypf12/backbone_bicaptioning_R_50_L1_H2048.pth?dl=1"
)


class ResNetGrid(torchvision.models.ResNet):
    """A torchvision ResNet whose ``forward`` returns the last feature grid.

    ``avgpool`` and ``fc`` are ``nn.Identity`` (as in the original's hub model, so its state
    dicts load with ``strict=True``). Unlike the original, whose torchvision ``forward`` still
    flattened after the identity pooling and so returned ``(B, 2048 * 7 * 7)`` = ``(B,
    100352)`` for 224 px inputs, this returns the grid ``(B, 2048, H / 32, W / 32)``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.avgpool = nn.Identity()
        self.fc = nn.Identity()

    def _forward_impl(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def resnet50(
    pretrained: bool = False,
    *,
    url: str = ORIGINAL_R50_URL,
    sha256: str | None = None,
    cache_dir: str | None = None,
    **kwargs: Any,
) -> ResNetGrid:
    """ResNet-50 of the original VirTex hub entry: ``(B, 3, 224, 224) -> (B, 2048, 7, 7)``.

    Args:
        pretrained: load the original's published backbone (bicaptioning R-50 L1 H2048;
            downloaded once into the torch hub cache). The original publishes no digest.
        url: where the weights are (default: the original's Dropbox file).
        sha256: expected digest of the weights file (``None``: not checked).
        cache_dir: download cache (default: the torch hub cache).
        **kwargs: passed to ``torchvision.models.ResNet`` (e.g. ``norm_layer``), as the
            original passed them to ``torchvision.models.resnet50``.

    Returns:
        The model in training mode, like the original's (call ``eval()`` for features).
    """
    block = torchvision.models.resnet.Bottleneck
    model = ResNetGrid(block, [3, 4, 6, 3], **kwargs)
    if pretrained:
        path = fetch(url, sha256=sha256, cache_dir=cache_dir)
        state = load_weights_only(path)
        if not isinstance(state, Mapping):
            raise ValueError(f"{path}: not a state dict")
        load_state_dict_checked(model, dict(state), str(path))
    return model


def _load(weights: str | os.PathLike[str], sha256: str | None, cache_dir: str | None) -> Any:
    path = fetch(weights, sha256=sha256, cache_dir=cache_dir)
    return path, load_weights_only(path)


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
