"""``train.init_from``: start a run from pretrained weights (weights only).

Accepted forms:

- ``CKPT.pt``: a checkpoint of ours (``model_spec`` + ``model``, e.g. a pretraining run's
  ``final.pt``);
- ``original:CKPT,CONFIG.yaml``: an original VirTex checkpoint and its YAML config, converted by
  :func:`virtex_models.legacy.load_original`;
- ``torchvision:PATH[,ARCH]``: a torchvision ResNet state dict (bare, ``{"state_dict": ...}``
  or ``{"model": ...}``; ``module.`` prefixes and ``fc.*`` dropped). It initialises the visual
  backbone only; ``ARCH`` (default: the config's ``model.visual.name``) must be the config's.

Only the model's weights are read: the step, optimiser state, learning-rate schedule and data
order start fresh (unlike ``--resume``, which continues a run; a resumed fine-tune continues
from its own checkpoint and never re-reads ``init_from``).

Matching is by parameter name. Strict by default (``train.init_strict: true``): a parameter of
the model missing from the source, or one of the source the model does not have, is an error
listing them; with ``init_strict: false`` they are reported and the model's own initialisation
is kept (missing) or the source's tensor ignored (unexpected). A torchvision source covers the
``visual.`` parameters only, so strictness applies to those. When the source was trained with
another vocabulary (another tokenizer, compared by its SHA-256, or another size), the word
embeddings and vocabulary-sized output layers (``textual.embedding.words.weight``,
``textual.output.weight``/``bias``, and the same under ``backward_textual.``) keep their fresh
initialisation and are reported as re-initialised; any other shape mismatch is an error naming
the parameter. Loading does not change ``requires_grad``, so a frozen backbone
(``model.visual.frozen``) stays frozen with the loaded weights.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from virtex_data import CaptionTokenizer
from virtex_models import ModelConfig
from virtex_models.legacy import load_original
from virtex_models.pretrained import read_checkpoint_file
from virtex_models.registry import get_objective
from virtex_models.torchfile import load_weights_only

__all__ = ["InitFromError", "InitReport", "SourceWeights", "apply_init", "read_init_source"]

#: Parameters whose shape is set by the vocabulary (re-initialised for a new tokenizer).
VOCAB_KEY = re.compile(
    r"^(textual|backward_textual)\.(embedding\.words\.weight|output\.(weight|bias))$"
)


class InitFromError(ValueError):
    """``train.init_from`` cannot initialise this model; says which file and parameter."""


@dataclass
class SourceWeights:
    """A state dict read from ``train.init_from``.

    Attributes:
        name: the ``init_from`` value (for messages).
        state: parameter name -> tensor, in our objective's naming.
        vocab_size: the source's vocabulary size (``None``: no vocabulary, e.g. torchvision).
        tokenizer_sha256: the source tokenizer's hash, when the checkpoint holds one.
        visual_only: the source covers ``visual.*`` only (torchvision).
    """

    name: str
    state: dict[str, Tensor]
    vocab_size: int | None = None
    tokenizer_sha256: str | None = None
    visual_only: bool = False


@dataclass
class InitReport:
    """What :func:`apply_init` did, by parameter name."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    vocabulary_changed: bool = False

    def lines(self) -> list[str]:
        """Human-readable summary (printed at the start of the run)."""
        out = [f"init_from {self.source}: loaded {len(self.loaded)} tensors"]
        if self.reinitialised:
            out.append("  new vocabulary: re-initialised " + ", ".join(self.reinitialised))
        if self.missing:
            out.append("  missing from the source (kept at initialisation): " + _few(self.missing))
        if self.unexpected:
            out.append("  unexpected in the source (ignored): " + _few(self.unexpected))
        return out


def _few(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


def _tensors(state: Any, source: str) -> dict[str, Tensor]:
    if not isinstance(state, Mapping):
        raise InitFromError(f"train.init_from {source}: the weights are not a state dict")
    result: dict[str, Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise InitFromError(f"train.init_from {source}: entry {key!r} is not a tensor")
        result[str(key)] = value
    return result


def _read_ours(path: Path, text: str) -> SourceWeights:
    try:
        checkpoint = read_checkpoint_file(path)
    except Exception as error:  # an unreadable or unsafe file: say which
        raise InitFromError(f"train.init_from {text}: cannot read it ({error})") from None
    if not isinstance(checkpoint, Mapping) or "model" not in checkpoint:
        hint = ""
        if isinstance(checkpoint, Mapping) and any("conv1.weight" in str(k) for k in checkpoint):
            hint = f" (a torchvision state dict? use torchvision:{text})"
        raise InitFromError(f"train.init_from {text}: not a virtex checkpoint{hint}")
    if "model_spec" not in checkpoint:
        raise InitFromError(
            f"train.init_from {text}: no 'model_spec' entry (an original VirTex checkpoint? "
            f"use original:{text},CONFIG.yaml)"
        )
    vocab = checkpoint["model_spec"].get("vocab") or {}
    sha = None
    if isinstance(checkpoint.get("tokenizer"), str):
        sha = CaptionTokenizer.from_json(checkpoint["tokenizer"]).sha256
    size = vocab.get("size")
    return SourceWeights(
        text, _tensors(checkpoint["model"], text), int(size) if size else None, sha
    )


def _read_original(value: str, text: str) -> SourceWeights:
    checkpoint, sep, config = value.partition(",")
    if not sep or not checkpoint or not config:
        raise InitFromError(f"train.init_from {text!r}: expected original:CKPT,CONFIG.yaml")
    for part in (checkpoint, config):
        if not Path(part).is_file():
            raise InitFromError(f"train.init_from {text}: {part} does not exist")
    try:
        objective, spec = load_original(checkpoint, config)
    except (ValueError, RuntimeError) as error:
        raise InitFromError(f"train.init_from {text}: {error}") from None
    return SourceWeights(text, dict(objective.state_dict()), spec.vocab.size)


def _read_torchvision(value: str, text: str, model: ModelConfig) -> SourceWeights:
    path, _, arch = value.partition(",")
    if arch and arch != model.visual.name:
        raise InitFromError(
            f"train.init_from {text}: a {arch} state dict for a {model.visual.name} model "
            f"(model.visual.name)"
        )
    try:
        checkpoint = load_weights_only(path)
    except Exception as error:
        raise InitFromError(f"train.init_from {text}: cannot read it ({error})") from None
    state: Any = checkpoint
    if isinstance(checkpoint, Mapping):
        if "model_spec" in checkpoint:
            raise InitFromError(f"train.init_from {text}: a virtex checkpoint; use {path}")
        for key in ("state_dict", "model"):
            if isinstance(checkpoint.get(key), Mapping):
                state = checkpoint[key]
                break
    tensors = _tensors(state, text)
    visual = {
        "visual." + key.removeprefix("module."): value
        for key, value in tensors.items()
        if not key.removeprefix("module.").startswith("fc.")
    }
    return SourceWeights(text, visual, visual_only=True)


def read_init_source(text: str, model: ModelConfig) -> SourceWeights:
    """Read the weights named by ``train.init_from`` (see the module docstring).

    Raises:
        InitFromError: a missing or unreadable file, or a malformed value, naming it.
    """
    if text.startswith("original:"):
        return _read_original(text.removeprefix("original:"), text)
    if text.startswith("torchvision:"):
        value = text.removeprefix("torchvision:")
        if not Path(value.partition(",")[0]).is_file():
            raise InitFromError(f"train.init_from {text}: {value.partition(',')[0]} not found")
        return _read_torchvision(value, text, model)
    path = Path(text)
    if not path.is_file():
        raise InitFromError(f"train.init_from {text}: no such file")
    return _read_ours(path, text)


def _vocabulary_changed(source: SourceWeights, tokenizer: CaptionTokenizer) -> bool:
    if source.vocab_size is None:
        return False
    if source.vocab_size != tokenizer.vocab_size:
        return True
    return source.tokenizer_sha256 is not None and source.tokenizer_sha256 != tokenizer.sha256


def apply_init(
    model: nn.Module,
    source: SourceWeights,
    tokenizer: CaptionTokenizer,
    *,
    strict: bool = True,
    vocabulary_layers: bool = True,
) -> InitReport:
    """Copy ``source``'s weights into ``model`` (in place) and say what happened.

    Args:
        model: the freshly built objective (its initialisation is what is kept for
            re-initialised and, when not strict, missing parameters).
        source: from :func:`read_init_source`.
        tokenizer: this run's tokenizer (compared with the source's vocabulary).
        strict: missing / unexpected parameters are an error.
        vocabulary_layers: the objective has vocabulary-sized layers (all but multilabel).

    Raises:
        InitFromError: missing or unexpected parameters (strict), or a shape mismatch outside
            the vocabulary layers, naming the parameters.
    """
    target = model.state_dict()
    changed = vocabulary_layers and _vocabulary_changed(source, tokenizer)
    report = InitReport(source.name, vocabulary_changed=changed)
    covered = {k for k in target if k.startswith("visual.")} if source.visual_only else set(target)
    report.missing = sorted(covered - set(source.state))
    report.unexpected = sorted(set(source.state) - set(target))
    load: dict[str, Tensor] = {}
    mismatched = []
    for key in sorted(covered & set(source.state)):
        if changed and VOCAB_KEY.match(key):
            report.reinitialised.append(key)
            continue
        value, expected = source.state[key], target[key]
        if tuple(value.shape) != tuple(expected.shape):
            mismatched.append(
                f"{key}: source {tuple(value.shape)} vs model {tuple(expected.shape)}"
            )
            continue
        load[key] = value
    if mismatched:
        raise InitFromError(
            f"train.init_from {source.name}: shape mismatch: "
            + "; ".join(mismatched[:5])
            + (f" ... ({len(mismatched)} in all)" if len(mismatched) > 5 else "")
        )
    if strict and (report.missing or report.unexpected):
        problems = []
        if report.missing:
            problems.append("missing from the source: " + _few(report.missing))
        if report.unexpected:
            problems.append("not in the model: " + _few(report.unexpected))
        raise InitFromError(
            f"train.init_from {source.name} does not fit the model ("
            + "; ".join(problems)
            + "); set train.init_strict=false to load what fits"
        )
    with torch.no_grad():
        for key, value in load.items():
            target[key].copy_(value)  # state_dict() tensors share storage with the model
    report.loaded = sorted(load)
    return report


def init_from_config(
    text: str,
    model: nn.Module,
    config: ModelConfig,
    tokenizer: CaptionTokenizer,
    *,
    strict: bool = True,
) -> InitReport:
    """:func:`read_init_source` + :func:`apply_init` for the run's objective."""
    source = read_init_source(os.fspath(text), config)
    return apply_init(
        model,
        source,
        tokenizer,
        strict=strict,
        # A per-category output layer has no vocabulary rows to map.
        vocabulary_layers=not get_objective(config.kind).needs_classes,
    )
