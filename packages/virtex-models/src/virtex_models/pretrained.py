"""The checkpoint format: one definition, read and written here for every package.

A checkpoint (written by ``virtex_train``, or by :func:`checkpoint_dict`) is a dict loadable with
``torch.load(weights_only=True)`` holding at least::

    {"format_version": 1,
     "model": <state dict of the objective>,
     "model_spec": {"config": ModelConfig.to_dict(), "vocab": {...VocabSpec...},
                    "num_classes": int | None}}

and, from training runs, ``"preprocessing"`` (:class:`Preprocessing`: how evaluation prepares
images: ``image_size``, ``eval_resize``, ``mean``, ``std``), ``"tokenizer"`` (the tokenizer's
JSON) and ``"config"`` (the resolved experiment YAML). ``virtex_train.checkpoint`` adds the
trainer state (optimizer, scheduler, step, RNG ...) to the same dict; readers here keep such
entries in :attr:`ModelCheckpoint.extra` untouched.

Typed access: :func:`read_checkpoint` (file or dict -> :class:`ModelCheckpoint`) and
:meth:`ModelCheckpoint.to_dict`; :func:`read_checkpoint_file` is the one place a checkpoint file is
loaded (through :func:`virtex_models.torchfile.load_weights_only`, i.e. ``weights_only=True``).
Checkpoints written before ``preprocessing`` existed read with ``preprocessing=None``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from virtex_models.config import ModelConfig
from virtex_models.torchfile import load_weights_only
from virtex_models.vocab import VocabSpec

__all__ = [
    "FORMAT_VERSION",
    "ModelCheckpoint",
    "ModelSpec",
    "Preprocessing",
    "checkpoint_dict",
    "load_objective",
    "load_state_dict_checked",
    "read_checkpoint",
    "read_checkpoint_file",
]

#: Version of the checkpoint layout this module writes and reads (the only definition).
FORMAT_VERSION = 1

#: ImageNet normalisation, the default of ``virtex_data.transforms.TransformConfig``.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


@dataclass(frozen=True)
class Preprocessing:
    """How evaluation prepares images for a model: its training run's validation transform.

    Shorter side to ``eval_resize`` (``None``: ``round(image_size / 0.875)``), centre crop
    ``image_size``, then ``(x - mean) / std`` per RGB channel of ``[0, 1]`` pixels.
    """

    image_size: int = 224
    eval_resize: int | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint's ``preprocessing`` entry (lists, so it stays plain data)."""
        return {
            "image_size": self.image_size,
            "eval_resize": self.eval_resize,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "preprocessing") -> Preprocessing:
        """Parse a ``preprocessing`` entry; errors name ``where`` and the key."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{where} must be a dict, got {type(data).__name__}")
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown key {where}.{unknown[0]}")
        size = data.get("image_size", 224)
        resize = data.get("eval_resize")
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"{where}.image_size must be a positive int, got {size!r}")
        if resize is not None and (not isinstance(resize, int) or isinstance(resize, bool)):
            raise ValueError(f"{where}.eval_resize must be an int or null, got {resize!r}")
        triples = []
        for key, default in (("mean", IMAGENET_MEAN), ("std", IMAGENET_STD)):
            value = data.get(key, default)
            if (
                not isinstance(value, list | tuple)
                or len(value) != 3
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
            ):
                raise ValueError(f"{where}.{key} must be 3 numbers, got {value!r}")
            triples.append((float(value[0]), float(value[1]), float(value[2])))
        return cls(image_size=size, eval_resize=resize, mean=triples[0], std=triples[1])


@dataclass
class ModelCheckpoint:
    """A checkpoint as typed fields (see the module docstring for the file layout).

    Attributes:
        model: state dict of the objective.
        spec: what rebuilds the objective.
        preprocessing: evaluation's image preprocessing (``None``: written before it existed).
        tokenizer: the tokenizer's JSON (``None``: not stored).
        extra: every other entry (trainer state, config YAML, versions ...), untouched.
    """

    model: dict[str, Tensor]
    spec: ModelSpec
    preprocessing: Preprocessing | None = None
    tokenizer: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The dict that ``torch.save`` writes (loadable with ``weights_only=True``)."""
        data: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "model": self.model,
            "model_spec": self.spec.to_dict(),
        }
        if self.preprocessing is not None:
            data["preprocessing"] = self.preprocessing.to_dict()
        if self.tokenizer is not None:
            data["tokenizer"] = self.tokenizer
        return {**data, **self.extra}

    @classmethod
    def from_dict(
        cls, checkpoint: Mapping[str, Any], source: str = "checkpoint"
    ) -> ModelCheckpoint:
        """Check and type a checkpoint dict.

        Raises:
            ValueError: an unknown ``format_version`` (a missing one is taken as current), no
                ``model_spec``/``model`` entry, a bad spec or preprocessing entry, or a tokenizer
                entry that is not text, naming ``source`` and the key.
        """
        version = checkpoint.get("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ValueError(f"{source}: format_version {version!r} is not {FORMAT_VERSION}")
        for key in ("model_spec", "model"):
            if key not in checkpoint:
                raise ValueError(f"{source}: no {key!r} entry (not a self-contained checkpoint)")
        spec = ModelSpec.from_dict(checkpoint["model_spec"], where=f"{source}: model_spec")
        preprocessing = None
        if checkpoint.get("preprocessing") is not None:
            preprocessing = Preprocessing.from_dict(
                checkpoint["preprocessing"], where=f"{source}: preprocessing"
            )
        tokenizer = checkpoint.get("tokenizer")
        if tokenizer is not None and not isinstance(tokenizer, str):
            raise ValueError(f"{source}: the 'tokenizer' entry is not JSON text")
        known = {"format_version", "model", "model_spec", "preprocessing", "tokenizer"}
        return cls(
            model=checkpoint["model"],
            spec=spec,
            preprocessing=preprocessing,
            tokenizer=tokenizer,
            extra={k: v for k, v in checkpoint.items() if k not in known},
        )

    def build(self, source: str = "checkpoint") -> nn.Module:
        """The objective with these weights, in eval mode (errors name ``source``)."""
        model = self.spec.build()
        load_state_dict_checked(model, self.model, source)
        return model.eval()


def read_checkpoint_file(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load a checkpoint file as a dict (``weights_only=True``); the format is not checked.

    Raises:
        ValueError: a missing or unreadable file, one that is not a torch file or holds more
            than tensors and plain values, or one whose top level is not a dict, naming it.
    """
    name = str(path)
    checkpoint = load_weights_only(name, map_location=map_location)
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{name}: not a checkpoint dict (found {type(checkpoint).__name__})")
    return checkpoint


def read_checkpoint(
    source: str | os.PathLike[str] | Mapping[str, Any], map_location: str | torch.device = "cpu"
) -> ModelCheckpoint:
    """A checkpoint file (or its dict) as a :class:`ModelCheckpoint`.

    Raises:
        ValueError: see :func:`read_checkpoint_file` and :meth:`ModelCheckpoint.from_dict`.
    """
    if isinstance(source, Mapping):
        return ModelCheckpoint.from_dict(source)
    name = str(Path(source))
    return ModelCheckpoint.from_dict(read_checkpoint_file(name, map_location), name)


def checkpoint_dict(model: nn.Module, spec: ModelSpec) -> dict[str, Any]:
    """A minimal self-contained checkpoint of ``model`` (what :func:`load_objective` needs)."""
    return ModelCheckpoint(model=dict(model.state_dict()), spec=spec).to_dict()


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
    name = "checkpoint" if isinstance(source, Mapping) else str(Path(source))
    checkpoint = read_checkpoint(source, map_location)
    return checkpoint.build(name), checkpoint.spec
