"""Visual backbones up to their last feature grid: a torchvision ResNet-family CNN, a timm CNN, or
a torchvision Vision Transformer (its patch grid)."""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torchvision
from torch import Tensor, nn

__all__ = [
    "TimmBackbone",
    "TorchvisionBackbone",
    "ViTBackbone",
    "ViTConfig",
    "VisualConfig",
    "timm_available",
]


def timm_available() -> bool:
    """Whether the optional ``timm`` dependency is importable."""
    return importlib.util.find_spec("timm") is not None


@dataclass(kw_only=True, slots=True)
class ViTConfig:
    """Architecture of a custom torchvision ``VisionTransformer`` (``VisualConfig(kind="vit",
    name="custom")``); the defaults are ViT-B/16's.

    Attributes:
        image_size: input side ``S`` (the position embedding is made for ``S / patch_size``
            patches a side; other sizes are refused).
        patch_size: ``p``, also the grid's stride.
        num_layers: encoder blocks.
        num_heads: attention heads.
        hidden_dim: width ``D``, the grid's channels.
        mlp_dim: feed-forward hidden size.
    """

    image_size: int = 224
    patch_size: int = 16
    num_layers: int = 12
    num_heads: int = 12
    hidden_dim: int = 768
    mlp_dim: int = 3072


@dataclass(kw_only=True, slots=True)
class VisualConfig:
    """How to build a visual backbone.

    Attributes:
        kind: the model family; ``torchvision`` reads ``name`` from ``torchvision.models``,
            ``timm`` from ``timm.create_model`` (optional dependency), ``vit`` builds a
            torchvision Vision Transformer (:class:`ViTBackbone`).
        name: a ResNet-family model of torchvision (``resnet50``, ``resnet101``,
            ``wide_resnet50_2``, ``resnet18``, ...), any timm CNN name, or for ``vit`` a
            torchvision ViT (``vit_b_16``, ``vit_b_32``, ``vit_l_16``, ...) or ``custom``
            (the architecture of ``vit``).
        vit: with ``kind: vit``, the architecture of ``name: custom``; for a named ViT only its
            ``image_size`` is read. Ignored by the other kinds.
        frozen: stop gradients and keep BatchNorm in eval mode (feature extraction).
        channels_last: keep the weights and convert inputs to ``torch.channels_last``
            (faster convolutions on GPUs with tensor cores and on recent CPUs).
        zero_init_residual: start each residual branch's last BatchNorm at zero, so that every
            block begins as the identity (torchvision's ``zero_init_residual``). Every original
            VirTex pretraining run built its ResNet this way, hence the default; it changes the
            initial weights only, not the parameter count. timm ResNets do this already
            (``zero_init_last``), so the flag applies to ``torchvision`` models.
    """

    kind: Literal["torchvision", "timm", "vit"] = "torchvision"
    name: str = "resnet50"
    frozen: bool = False
    channels_last: bool = False
    zero_init_residual: bool = True
    vit: ViTConfig | None = None

    def build(self) -> TorchvisionBackbone | TimmBackbone | ViTBackbone:
        if self.kind == "vit":
            return ViTBackbone(self.name, self.vit or ViTConfig(), frozen=self.frozen)
        if self.kind == "timm":
            return TimmBackbone(self.name, frozen=self.frozen, channels_last=self.channels_last)
        return TorchvisionBackbone(
            self.name,
            frozen=self.frozen,
            channels_last=self.channels_last,
            zero_init_residual=self.zero_init_residual,
        )


class _Backbone(nn.Module):
    """Shared behaviour: ``frozen`` and ``channels_last`` handling."""

    frozen: bool
    channels_last: bool

    def _finish_init(self, frozen: bool, channels_last: bool) -> None:
        self.frozen = frozen
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)
        if frozen:
            self.requires_grad_(False)
            self.eval()

    def train(self, mode: bool = True) -> Any:
        # A frozen backbone keeps its BatchNorm statistics whatever the caller asks.
        return super().train(mode and not self.frozen)

    def _prepare(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images


class TorchvisionBackbone(_Backbone):
    """A torchvision ResNet without its pooling and classifier.

    The parameter names are torchvision's own (``conv1``, ``bn1``, ``layer1``..``layer4``) so a
    torchvision state dict without ``fc`` loads with ``strict=True`` and exporters map names 1:1.

    Args:
        name: model name in ``torchvision.models`` (ResNet family: it must have ``layer4``).
        frozen: no gradients, BatchNorm statistics fixed (``train()`` keeps it in eval mode).
        channels_last: weights and inputs in ``torch.channels_last`` memory format.
        zero_init_residual: zero the last BatchNorm weight of every residual branch.
    """

    stride = 32

    def __init__(
        self,
        name: str = "resnet50",
        frozen: bool = False,
        channels_last: bool = False,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        try:
            builder = getattr(torchvision.models, name)
        except AttributeError:
            raise ValueError(f"torchvision.models has no model named {name!r}") from None
        cnn = builder(weights=None, zero_init_residual=zero_init_residual)
        if not hasattr(cnn, "layer4") or not hasattr(cnn, "fc"):
            raise ValueError(f"{name!r} is not a ResNet-family model (it has no layer4/fc)")
        self.name = name
        self.conv1 = cnn.conv1
        self.bn1 = cnn.bn1
        self.relu = cnn.relu
        self.maxpool = cnn.maxpool
        self.layer1 = cnn.layer1
        self.layer2 = cnn.layer2
        self.layer3 = cnn.layer3
        self.layer4 = cnn.layer4
        self.out_channels: int = int(cnn.fc.in_features)
        self._finish_init(frozen, channels_last)

    def forward_stages(self, images: Tensor) -> list[Tensor]:
        """Feature grids after ``layer1``..``layer4``, each ``(B, C_i, H / s_i, W / s_i)``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(self._prepare(images)))))
        stages = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            stages.append(x)
        return stages

    def forward(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> ``(B, out_channels, H / 32, W / 32)``."""
        return self.forward_stages(images)[-1]


class TimmBackbone(_Backbone):
    """A timm CNN up to its last feature grid (``forward_features``); needs ``timm``.

    The timm model lives under ``.model`` with timm's own parameter names, so timm state dicts
    load into it directly.

    Args:
        name: a ``timm.create_model`` name of a CNN (e.g. ``resnet50``, ``resnet18d``,
            ``convnext_atto``).
        frozen: no gradients, BatchNorm statistics fixed.
        channels_last: weights and inputs in ``torch.channels_last`` memory format.
    """

    def __init__(self, name: str, frozen: bool = False, channels_last: bool = False) -> None:
        super().__init__()
        if not timm_available():
            raise ImportError(
                "VisualConfig(kind='timm') needs timm: pip install 'virtex-models[timm]'"
            )
        import timm

        try:
            model = timm.create_model(name, pretrained=False, num_classes=0, global_pool="")
        except RuntimeError as error:  # timm raises RuntimeError for unknown names
            raise ValueError(f"timm has no model named {name!r}: {error}") from None
        info = getattr(model, "feature_info", None)
        if not info:
            raise ValueError(f"timm model {name!r} has no feature_info: not a CNN backbone")
        self.name = name
        self.model = model
        self.out_channels: int = int(getattr(model, "num_features"))  # noqa: B009
        self.stride: int = int(info[-1]["reduction"])
        self._finish_init(frozen, channels_last)

    def forward(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> ``(B, out_channels, H / stride, W / stride)``."""
        grid: Tensor = getattr(self.model, "forward_features")(self._prepare(images))  # noqa: B009
        if grid.dim() != 4:
            raise ValueError(f"timm model {self.name!r} returned {tuple(grid.shape)}, not a grid")
        return grid


class ViTBackbone(_Backbone):
    """A torchvision Vision Transformer whose patch tokens form the grid.

    The class token is dropped and the ``(S / p) ** 2`` patch tokens after the encoder (and its
    final LayerNorm) are laid out as ``(B, D, S / p, S / p)``: the same seam as a CNN's last
    grid, so every objective and head runs on it unchanged. The model lives under ``.model``
    with torchvision's parameter names; its classification head is removed.

    Args:
        name: a torchvision ViT builder (``vit_b_16``, ...; built with ``image_size`` of
            ``config``) or ``custom`` (built from ``config``).
        config: the architecture (``custom``) or the image size (named models).
        frozen: no gradients.
    """

    def __init__(self, name: str, config: ViTConfig, frozen: bool = False) -> None:
        super().__init__()
        vit_class = torchvision.models.VisionTransformer
        if name == "custom":
            model = vit_class(
                image_size=config.image_size,
                patch_size=config.patch_size,
                num_layers=config.num_layers,
                num_heads=config.num_heads,
                hidden_dim=config.hidden_dim,
                mlp_dim=config.mlp_dim,
            )
        else:
            builder = getattr(torchvision.models, name, None)
            if builder is None or not name.startswith("vit_"):
                raise ValueError(f"torchvision.models has no Vision Transformer named {name!r}")
            model = builder(weights=None, image_size=config.image_size)
        if not isinstance(model, vit_class):  # pragma: no cover - torchvision's vit_* all are
            raise ValueError(f"{name!r} is not a torchvision VisionTransformer")
        # The classifier is never used: no parameters that DDP would see without gradients.
        model.heads = nn.Identity()
        self.name = name
        self.model = model
        self.out_channels: int = int(model.hidden_dim)
        self.stride: int = int(model.patch_size)
        self._finish_init(frozen, channels_last=False)

    def forward(self, images: Tensor) -> Tensor:
        """``(B, 3, S, S)`` -> ``(B, hidden_dim, S / p, S / p)`` patch features."""
        model = self.model
        tokens = model._process_input(self._prepare(images))  # (B, N, D), checks the size
        cls = model.class_token.expand(tokens.shape[0], -1, -1)
        encoded = model.encoder(torch.cat([cls, tokens], dim=1))[:, 1:]
        side = math.isqrt(encoded.shape[1])
        return encoded.transpose(1, 2).unflatten(2, (side, side))
