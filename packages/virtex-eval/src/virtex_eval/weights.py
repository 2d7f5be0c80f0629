"""Backbone weights for every probe, named by one string (the ``--weights`` option).

Accepted forms:

- ``CKPT.pt``: a self-contained checkpoint of ours (``model_spec`` + ``model``); the objective is
  rebuilt with :func:`virtex_models.pretrained.load_objective` and its ``visual`` kept.
- ``original:CKPT,CONFIG.yaml``: an original VirTex checkpoint and its YAML config, through
  :func:`virtex_models.legacy.load_original`.
- ``torchvision:PATH[,ARCH]``: a plain torchvision ResNet state dict (the ImageNet-supervised
  baseline); ``ARCH`` defaults to ``resnet50``. A bare state dict, ``{"state_dict": ...}`` (the
  PyTorch ImageNet example's format) and ``{"model": ...}`` are accepted; ``module.`` prefixes
  (DataParallel) and ``fc.*`` are dropped, everything else must fit exactly.
- ``random[:ARCH]``: random initialisation (seeded, so every run builds the same weights).

Every loader returns a :class:`LoadedBackbone` whose ``identity`` names the weights for the
feature cache: the SHA-256 of the weight file(s), or ``random:<arch>:seed<n>``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from virtex_models.pretrained import load_objective, load_state_dict_checked
from virtex_models.torchfile import load_weights_only
from virtex_models.visual import TorchvisionBackbone

__all__ = [
    "LoadedBackbone",
    "WeightsSource",
    "file_sha256",
    "load_backbone",
    "parse_weights",
]

WeightsKind = Literal["checkpoint", "original", "torchvision", "random"]

#: Seed of ``random[:ARCH]`` weights (fixed so cached features stay valid across runs).
RANDOM_SEED = 0


@dataclass(frozen=True)
class WeightsSource:
    """A parsed ``--weights`` value.

    Attributes:
        kind: which loader reads it.
        path: checkpoint / state-dict file (``None`` for ``random``).
        config: the original YAML config (``original`` only).
        arch: torchvision model name (``torchvision`` and ``random``).
    """

    kind: WeightsKind
    path: Path | None = None
    config: Path | None = None
    arch: str = "resnet50"

    def __str__(self) -> str:
        if self.kind == "checkpoint":
            return str(self.path)
        if self.kind == "original":
            return f"original:{self.path},{self.config}"
        if self.kind == "torchvision":
            return f"torchvision:{self.path},{self.arch}"
        return f"random:{self.arch}"


@dataclass
class LoadedBackbone:
    """A backbone ready for feature extraction.

    Attributes:
        backbone: ``(B, 3, H, W) -> (B, C, h, w)``, in eval mode.
        identity: names these weights exactly (file hashes or the random seed); used as the
            feature-cache key.
        source: what was loaded.
    """

    backbone: nn.Module
    identity: str
    source: WeightsSource

    @property
    def out_channels(self) -> int:
        return int(getattr(self.backbone, "out_channels"))  # noqa: B009


def parse_weights(text: str) -> WeightsSource:
    """Parse a ``--weights`` value (see the module docstring).

    Raises:
        ValueError: an empty value, a missing part, or a file that does not exist.
    """
    text = text.strip()
    if not text:
        raise ValueError(
            "--weights is empty: give CKPT.pt, original:CKPT,CONFIG.yaml, "
            "torchvision:PATH[,ARCH] or random[:ARCH]"
        )
    prefix, colon, rest = text.partition(":")
    if text == "random" or (colon and prefix == "random"):
        return WeightsSource(kind="random", arch=rest or "resnet50")
    if colon and prefix == "original":
        path, comma, config = rest.partition(",")
        if not comma or not path or not config:
            raise ValueError(f"--weights {text!r}: expected original:CKPT,CONFIG.yaml")
        return WeightsSource(
            kind="original", path=_existing(path, text), config=_existing(config, text)
        )
    if colon and prefix == "torchvision":
        path, _, arch = rest.partition(",")
        if not path:
            raise ValueError(f"--weights {text!r}: expected torchvision:PATH[,ARCH]")
        return WeightsSource(
            kind="torchvision", path=_existing(path, text), arch=arch or "resnet50"
        )
    return WeightsSource(kind="checkpoint", path=_existing(text, text))


def _existing(path: str, text: str) -> Path:
    result = Path(path).expanduser()
    if not result.is_file():
        raise FileNotFoundError(f"--weights {text!r}: no such file {result}")
    return result


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    """Hex SHA-256 digest of a file's bytes (read in 4 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _torch_load(path: Path) -> Any:
    return load_weights_only(path)  # one-line ValueError naming what the file is instead


def _describe(checkpoint: Any) -> str:
    if not isinstance(checkpoint, Mapping):
        return f"a {type(checkpoint).__name__}, not a dict"
    keys = sorted(str(k) for k in checkpoint)
    shown = ", ".join(keys[:8]) + (", ..." if len(keys) > 8 else "")
    return f"top-level keys: {shown}"


def _looks_like_torchvision(state: Mapping[str, Any]) -> bool:
    keys = {str(k).removeprefix("module.") for k in state}
    return "conv1.weight" in keys and any(k.startswith("layer4.") for k in keys)


def _load_checkpoint(source: WeightsSource) -> nn.Module:
    assert source.path is not None
    checkpoint = _torch_load(source.path)
    if isinstance(checkpoint, Mapping) and "model_spec" in checkpoint and "model" in checkpoint:
        objective, _ = load_objective(checkpoint)
        visual = getattr(objective, "visual", None)
        if not isinstance(visual, nn.Module):
            raise ValueError(f"{source.path}: the objective has no visual backbone")
        return visual
    hint = ""
    if isinstance(checkpoint, Mapping):
        inner = checkpoint.get("model")
        if isinstance(inner, Mapping) and any(str(k).startswith("visual.cnn.") for k in inner):
            hint = (
                " It looks like an original VirTex checkpoint: use "
                f"--weights original:{source.path},CONFIG.yaml"
            )
        elif _looks_like_torchvision(checkpoint.get("state_dict", checkpoint)):
            hint = (
                f" It looks like a torchvision state dict: use --weights torchvision:{source.path}"
            )
    raise ValueError(
        f"{source.path}: not a virtex checkpoint (no 'model_spec' and 'model' entries; "
        f"{_describe(checkpoint)}).{hint}"
    )


def _load_original(source: WeightsSource) -> nn.Module:
    from virtex_models.legacy import load_original

    assert source.path is not None and source.config is not None
    checkpoint = _torch_load(source.path)
    if not isinstance(checkpoint, Mapping) or "model" not in checkpoint:
        raise ValueError(
            f"{source.path}: not an original VirTex checkpoint (no 'model' entry; "
            f"{_describe(checkpoint)})"
        )
    if "model_spec" in checkpoint:
        raise ValueError(
            f"{source.path}: this is a virtex checkpoint of ours: use --weights {source.path}"
        )
    objective, _ = load_original(source.path, source.config)
    visual = getattr(objective, "visual", None)
    if not isinstance(visual, nn.Module):
        raise ValueError(f"{source.path}: the objective has no visual backbone")
    return visual


def torchvision_state(checkpoint: Any, source: str) -> dict[str, Tensor]:
    """The backbone part of a torchvision-format checkpoint (see module docstring)."""
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{source}: not a state dict ({_describe(checkpoint)})")
    if "model_spec" in checkpoint:
        raise ValueError(f"{source}: this is a virtex checkpoint of ours: use --weights {source}")
    state: Any = checkpoint
    for key in ("state_dict", "model"):
        if isinstance(checkpoint.get(key), Mapping):
            state = checkpoint[key]
            break
    if any(str(k).startswith("visual.cnn.") for k in state):
        raise ValueError(
            f"{source}: this is an original VirTex checkpoint: use --weights "
            f"original:{source},CONFIG.yaml"
        )
    result: dict[str, Tensor] = {}
    for key, value in state.items():
        name = str(key).removeprefix("module.")
        if name.startswith("fc."):
            continue
        if not isinstance(value, Tensor):
            raise ValueError(f"{source}: entry {key!r} is not a tensor")
        result[name] = value
    return result


def _load_torchvision(source: WeightsSource) -> nn.Module:
    assert source.path is not None
    backbone = TorchvisionBackbone(source.arch)
    state = torchvision_state(_torch_load(source.path), str(source.path))
    load_state_dict_checked(backbone, state, f"{source.path} ({source.arch})")
    return backbone


def _load_random(source: WeightsSource) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return TorchvisionBackbone(source.arch)


def load_backbone(weights: str | WeightsSource) -> LoadedBackbone:
    """Load the visual backbone named by ``weights``, in eval mode, on the CPU.

    Raises:
        ValueError: a file of another kind (the message names the file and suggests the right
            ``--weights`` form), or weights that do not fit the architecture.
        FileNotFoundError: a file that does not exist.
    """
    source = parse_weights(weights) if isinstance(weights, str) else weights
    if source.kind == "checkpoint":
        backbone = _load_checkpoint(source)
    elif source.kind == "original":
        backbone = _load_original(source)
    elif source.kind == "torchvision":
        backbone = _load_torchvision(source)
    else:
        backbone = _load_random(source)
    if source.kind == "random":
        identity = f"random:{source.arch}:seed{RANDOM_SEED}"
    else:
        assert source.path is not None
        identity = f"{source.kind}:{file_sha256(source.path)}"
        if source.config is not None:
            identity += f":{file_sha256(source.config)}"
        if source.kind == "torchvision":
            identity += f":{source.arch}"
    if not hasattr(backbone, "out_channels"):
        raise ValueError(f"{source}: the backbone has no out_channels")
    backbone.eval()
    return LoadedBackbone(backbone=backbone, identity=identity, source=source)
