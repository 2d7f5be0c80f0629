"""Self-contained checkpoints: rebuild an objective from ``model_spec`` + ``model``.

A checkpoint (written by ``virtex_train``, or by :func:`checkpoint_dict`) is a dict loadable with
``torch.load(weights_only=True)`` holding at least::

    {"format_version": 1,
     "model": <state dict of the objective>,
     "model_spec": {"config": ModelConfig.to_dict(), "vocab": {...VocabSpec...},
                    "num_classes": int | None}}

Other entries (optimizer, tokenizer JSON, resolved YAML, ...) are ignored here.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from virtex_models.config import ModelConfig
from virtex_models.torchfile import load_weights_only
from virtex_models.vocab import VocabSpec

__all__ = [
    "FORMAT_VERSION",
    "ModelSpec",
    "checkpoint_dict",
    "load_objective",
    "load_state_dict_checked",
]

#: Version of the checkpoint layout this module writes and reads.
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild an objective besides its weights.

    Attributes:
        config: the architecture.
        vocab: vocabulary layout.
        num_classes: categories of ``multilabel_classification`` (else ``None``).
    """

    config: ModelConfig
    vocab: VocabSpec
    num_classes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint's ``model_spec`` entry (plain JSON-able values)."""
        return {
            "config": self.config.to_dict(),
            "vocab": dataclasses.asdict(self.vocab),
            "num_classes": self.num_classes,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "model_spec") -> ModelSpec:
        """Parse a ``model_spec`` entry; errors name ``where`` and the key."""
        unknown = sorted(set(data) - {"config", "vocab", "num_classes"})
        if unknown:
            raise ValueError(f"unknown key {where}.{unknown[0]}")
        for key in ("config", "vocab"):
            if key not in data:
                raise ValueError(f"{where} has no {key!r} entry")
        config = ModelConfig.from_dict(dict(data["config"]), where=f"{where}.config")
        try:
            vocab = VocabSpec(**data["vocab"])
        except TypeError as error:
            raise ValueError(f"{where}.vocab: {error}") from None
        num_classes = data.get("num_classes")
        if num_classes is not None and not isinstance(num_classes, int):
            raise ValueError(f"{where}.num_classes must be an int or null, got {num_classes!r}")
        return cls(config=config, vocab=vocab, num_classes=num_classes)

    def build(self) -> nn.Module:
        """A freshly initialised objective of this spec."""
        return self.config.build(self.vocab, self.num_classes)


def checkpoint_dict(model: nn.Module, spec: ModelSpec) -> dict[str, Any]:
    """A minimal self-contained checkpoint of ``model`` (what :func:`load_objective` needs)."""
    return {
        "format_version": FORMAT_VERSION,
        "model_spec": spec.to_dict(),
        "model": model.state_dict(),
    }


def load_state_dict_checked(
    module: nn.Module, state: Mapping[str, Tensor], source: str = "checkpoint"
) -> None:
    """``module.load_state_dict(state, strict=True)`` with errors that name the keys.

    Raises:
        ValueError: missing or unexpected keys, or tensors whose shapes differ, listing the keys
            (and shapes) and naming ``source``.
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{key}: checkpoint {tuple(state[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(state))
        if tuple(state[key].shape) != tuple(expected[key].shape)
    ]
    problems = []
    if missing:
        problems.append("missing keys: " + ", ".join(missing))
    if unexpected:
        problems.append("unexpected keys: " + ", ".join(unexpected))
    if mismatched:
        problems.append("shape mismatch: " + "; ".join(mismatched))
    if problems:
        raise ValueError(f"{source} does not fit the model: " + " | ".join(problems))
    module.load_state_dict(dict(state), strict=True)


def load_objective(
    source: str | os.PathLike[str] | Mapping[str, Any], map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelSpec]:
    """Rebuild the objective of a self-contained checkpoint, in eval mode.

    Args:
        source: a checkpoint file (read with ``torch.load(weights_only=True)``) or the dict.
        map_location: where tensors are loaded.

    Returns:
        ``(objective, spec)``.

    Raises:
        ValueError: no ``model_spec``/``model`` entry, an unknown ``format_version``, a bad spec
            or weights that do not fit, naming the file and the key.
    """
    if isinstance(source, Mapping):
        checkpoint: Mapping[str, Any] = source
        name = "checkpoint"
    else:
        name = str(Path(source))
        checkpoint = load_weights_only(name, map_location=map_location)
        if not isinstance(checkpoint, Mapping):
            raise ValueError(f"{name}: not a checkpoint dict")
    version = checkpoint.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise ValueError(f"{name}: format_version {version!r} is not {FORMAT_VERSION}")
    for key in ("model_spec", "model"):
        if key not in checkpoint:
            raise ValueError(f"{name}: no {key!r} entry (not a self-contained checkpoint)")
    spec = ModelSpec.from_dict(checkpoint["model_spec"], where=f"{name}: model_spec")
    model = spec.build()
    load_state_dict_checked(model, checkpoint["model"], name)
    return model.eval(), spec
