"""Visual backbones: a torchvision ResNet-family CNN up to its last feature grid."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torchvision
from torch import Tensor, nn

__all__ = ["TorchvisionBackbone", "VisualConfig"]


@dataclass(kw_only=True, slots=True)
class VisualConfig:
    """How to build a :class:`TorchvisionBackbone`.

    Attributes:
        kind: the model family; ``torchvision`` reads ``name`` from ``torchvision.models``.
        name: a ResNet-family model of torchvision (``resnet50``, ``resnet101``,
            ``wide_resnet50_2``, ``resnet18``, ...).
        frozen: stop gradients and keep BatchNorm in eval mode (feature extraction).
    """

    kind: Literal["torchvision"] = "torchvision"
    name: str = "resnet50"
    frozen: bool = False

    def build(self) -> TorchvisionBackbone:
        return TorchvisionBackbone(self.name, frozen=self.frozen)


class TorchvisionBackbone(nn.Module):
    """A torchvision ResNet without its pooling and classifier.

    The parameter names are torchvision's own (``conv1``, ``bn1``, ``layer1``..``layer4``) so a
    torchvision state dict without ``fc`` loads with ``strict=True`` and exporters map names 1:1.

    Args:
        name: model name in ``torchvision.models`` (ResNet family: it must have ``layer4``).
        frozen: no gradients, BatchNorm statistics fixed (``train()`` keeps it in eval mode).
    """

    stride = 32

    def __init__(self, name: str = "resnet50", frozen: bool = False) -> None:
        super().__init__()
        try:
            builder = getattr(torchvision.models, name)
        except AttributeError:
            raise ValueError(f"torchvision.models has no model named {name!r}") from None
        cnn = builder(weights=None)
        if not hasattr(cnn, "layer4") or not hasattr(cnn, "fc"):
            raise ValueError(f"{name!r} is not a ResNet-family model (it has no layer4/fc)")
        self.name = name
        self.frozen = frozen
        self.conv1 = cnn.conv1
        self.bn1 = cnn.bn1
        self.relu = cnn.relu
        self.maxpool = cnn.maxpool
        self.layer1 = cnn.layer1
        self.layer2 = cnn.layer2
        self.layer3 = cnn.layer3
        self.layer4 = cnn.layer4
        self.out_channels: int = int(cnn.fc.in_features)
        if frozen:
            self.requires_grad_(False)
            self.eval()

    def train(self, mode: bool = True) -> TorchvisionBackbone:
        # A frozen backbone keeps its BatchNorm statistics whatever the caller asks.
        return super().train(mode and not self.frozen)

    def forward_stages(self, images: Tensor) -> list[Tensor]:
        """Feature grids after ``layer1``..``layer4``, each ``(B, C_i, H / s_i, W / s_i)``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        stages = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            stages.append(x)
        return stages

    def forward(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> ``(B, out_channels, H / 32, W / 32)``."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        return self.forward_stages(images)[-1]
