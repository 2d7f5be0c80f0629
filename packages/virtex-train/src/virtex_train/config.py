"""Experiment configs: dataclasses, strict YAML files with one level of ``base:``, overrides.

An experiment YAML has five sections (all optional; missing keys take the defaults)::

    base: other.yaml      # optional, one level, relative to this file
    seed: 0
    data:  {...}          # virtex_data.DataConfig
    model: {...}          # virtex_models.ModelConfig
    optim: {...}          # virtex_train.optim.OptimConfig
    train: {...}          # TrainConfig

:func:`load_config` reads a file, merges it over its base (mappings merge key by key, anything
else replaces), applies dotted ``key.path=value`` overrides (values parsed as YAML scalars or
flow collections) and builds an :class:`ExperimentConfig`. Every unknown key is an error naming
the dotted key and the file (or the override) it came from; every wrongly typed value names the
dotted key and the files involved. The defaults of the dataclasses are the paper's pre-training
setting; :func:`quickstart_config` is the small built-in-data run (``load_config(None)``).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from virtex_data import DataConfig, TransformConfig
from virtex_data.errors import brief
from virtex_models import ModelConfig, TextualConfig, VisualConfig
from virtex_models.registry import get_objective
from virtex_models.strict_config import convert, from_dict, to_plain
from virtex_train.config_yaml import ConfigError, load_yaml, merge
from virtex_train.legacy_config import is_legacy_config, legacy_experiment_dict, read_legacy_yaml
from virtex_train.optim import LookaheadConfig, OptimConfig, ScheduleConfig

__all__ = [
    "ConfigError",
    "ExperimentConfig",
    "Precision",
    "TrainConfig",
    "apply_overrides",
    "experiment_from_legacy",
    "load_config",
    "load_legacy_config",
    "parse_override",
    "quickstart_config",
]

Precision = Literal["auto", "bf16", "fp16", "fp32"]


@dataclass(kw_only=True)
class TrainConfig:
    """The ``train:`` section: length, batch, precision, logging and checkpoint cadence.

    Attributes:
        num_steps: optimiser updates of the whole run.
        batch_size: GLOBAL batch per update (all ranks, after gradient accumulation).
        grad_accumulation: micro-batches per update on each rank.
        precision: ``auto`` (bf16 autocast on GPU, fp32 on CPU), ``bf16``, ``fp16`` (with a
            GradScaler) or ``fp32``.
        channels_last: convert the model and images to channels-last memory format.
        compile: ``torch.compile`` the objective.
        num_workers: data-loader worker processes per rank.
        log_every: updates between training log events.
        checkpoint_every: updates between checkpoints.
        keep_last: step checkpoints kept on disk.
        val_every: updates between validations.
        val_batches: validation batches per validation (``None`` = the whole split).
        sample_captions: decoded validation captions logged at each validation.
        init_from: start from these weights (weights only: step, optimiser and schedule start
            fresh): a checkpoint of ours ``CKPT.pt``, ``original:CKPT,CONFIG.yaml`` or
            ``torchvision:PATH[,ARCH]`` (see :mod:`virtex_train.init_from`). Not re-applied when
            a run resumes.
        init_strict: with ``init_from``, parameters missing from the source or not in the model
            are an error (else reported and skipped).
        collapse_threshold: captioning models: at each validation, decode the validation
            images (greedy, ``val_batches`` batches) and warn when the fraction of distinct
            captions is below this after the warm-up (``optim.schedule.warmup_steps``); 0 turns
            the decoding and the check off.
    """

    num_steps: int = 500000
    batch_size: int = 256
    grad_accumulation: int = 1
    precision: Precision = "auto"
    channels_last: bool = False
    compile: bool = False
    num_workers: int = 4
    log_every: int = 20
    checkpoint_every: int = 2000
    keep_last: int = 3
    val_every: int = 2000
    val_batches: int | None = 20
    sample_captions: int = 4
    init_from: str | None = None
    init_strict: bool = True
    collapse_threshold: float = 0.05

    def __post_init__(self) -> None:
        for name in ("num_steps", "batch_size", "grad_accumulation", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("checkpoint_every", "val_every", "keep_last", "num_workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.val_batches is not None and self.val_batches < 1:
            raise ValueError(f"train.val_batches must be >= 1 or null, got {self.val_batches}")
        if not 0.0 <= self.collapse_threshold <= 1.0:
            raise ValueError(
                f"train.collapse_threshold must be in [0, 1], got {self.collapse_threshold}"
            )
        if self.sample_captions < 0:
            raise ValueError(f"train.sample_captions must be >= 0, got {self.sample_captions}")
        if self.batch_size % self.grad_accumulation:
            raise ValueError(
                f"train.batch_size={self.batch_size} is not divisible by "
                f"train.grad_accumulation={self.grad_accumulation}"
            )


#: The dataclass behind each section (``seed`` is a plain int).
SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
}
TOP_LEVEL_KEYS: tuple[str, ...] = ("seed", *SECTIONS)


@dataclass(kw_only=True)
class ExperimentConfig:
    """A whole experiment. Defaults: the paper's main model (bicaptioning, R-50, L1 H2048).

    ``to_dict`` / ``from_dict`` use the YAML layout of the module docstring; ``to_yaml`` is what
    the trainer writes into the run directory and every checkpoint.
    """

    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        check_caption_lengths(self.data, self.model)

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-able dict (tuples become lists) that :meth:`from_dict` reads back."""
        return {
            "seed": self.seed,
            "data": to_plain(self.data.to_dict()),
            "model": to_plain(self.model.to_dict()),
            "optim": to_plain(dataclasses.asdict(self.optim)),
            "train": to_plain(dataclasses.asdict(self.train)),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "config") -> ExperimentConfig:
        """Strictly build from a plain dict; missing keys take the defaults.

        Raises:
            ConfigError: unknown key or bad value, naming the dotted key and ``source``.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: expected a mapping, got {type(data).__name__}")
        check_keys(data, source)
        try:
            seed = convert(int, data.get("seed", 0), "seed")
            data_cfg = DataConfig.from_dict(dict(data.get("data") or {}))
            model_cfg = ModelConfig.from_dict(dict(data.get("model") or {}))
            optim_cfg = from_dict(OptimConfig, data.get("optim") or {}, "optim")
            train_cfg = from_dict(TrainConfig, data.get("train") or {}, "train")
            return cls(seed=seed, data=data_cfg, model=model_cfg, optim=optim_cfg, train=train_cfg)
        except (ValueError, TypeError) as error:
            raise ConfigError(f"{source}: {error}") from None

    def to_yaml(self) -> str:
        """The config as YAML text (section order as in the module docstring)."""
        return str(yaml.dump(self.to_dict(), Dumper=_Dumper, sort_keys=False, width=100))


def check_caption_lengths(data: DataConfig, model: ModelConfig) -> None:
    """The one check of the caption length, which three sections set.

    ``data.max_caption_length`` (tokens per training caption, ``[SOS]``/``[EOS]`` included) and
    ``model.decoder.max_steps`` (tokens a decoder generates after ``[SOS]``) must both fit the
    positional embedding of the head, ``model.textual.max_length``; objectives without a
    Transformer head (the classification kinds) ignore ``model.textual`` and are not checked.

    Raises:
        ValueError: one line naming the three keys and their values.
    """
    info = get_objective(model.kind)
    if not info.textual:
        return
    positions = model.textual.max_length
    lengths = {"data.max_caption_length": data.max_caption_length}
    if info.captions:
        lengths["model.decoder.max_steps"] = model.decoder.max_steps
    if max(lengths.values()) > positions:
        named = " and ".join(f"{key}={value}" for key, value in lengths.items())
        raise ValueError(
            f"caption lengths disagree: {named} must not exceed "
            f"model.textual.max_length={positions} (the head's positions)"
        )


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read an experiment YAML (``None``: :func:`quickstart_config`) and apply ``overrides``.

    A file in the original VirTex format (upper-case keys such as ``MODEL``, ``OPTIM``,
    ``_BASE_``) is imported by :func:`virtex_train.legacy_config.load_legacy_config`.

    Args:
        path: the YAML file; its optional ``base:`` names another file relative to it, which
            may not have a ``base:`` of its own.
        overrides: ``dotted.key=value`` strings, applied in order after the files.

    Raises:
        ConfigError: unreadable file, unknown key, bad value or a malformed override; the
            message names the file (or override) and the dotted key.
    """
    if path is None:
        merged = quickstart_config().to_dict()
        source = "quickstart defaults"
    else:
        path = Path(path)
        raw = _read_yaml(path)
        if is_legacy_config(raw):
            return load_legacy_config(path, overrides)
        check_keys(raw, str(path), allow_base=True)
        base_name = raw.pop("base", None)
        source = str(path)
        if base_name is not None:
            if not isinstance(base_name, str):
                raise ConfigError(f"{path}: base must be a file name, got {brief(base_name)}")
            base_path = Path(os.path.normpath(path.parent / base_name))
            base = _read_yaml(base_path)
            if "base" in base:
                raise ConfigError(
                    f"{base_path}: a base file cannot have its own base: (one level only; "
                    f"used by {path})"
                )
            check_keys(base, str(base_path))
            merged = merge(base, raw)
            source = f"{path} (base {base_path})"
        else:
            merged = raw
    merged = apply_overrides(merged, overrides)
    if overrides:
        source += " with overrides " + " ".join(overrides)
    return ExperimentConfig.from_dict(merged, source=source)


def experiment_from_legacy(config: Mapping[str, Any], source: str = "config") -> ExperimentConfig:
    """An original VirTex config (nested dict, ``_BASE_`` resolved) as an :class:`ExperimentConfig`.

    See :func:`virtex_train.legacy_config.legacy_experiment_dict` for the mapping.

    Raises:
        ConfigError: a setting with no equivalent here, naming the key and ``source``.
    """
    result = legacy_experiment_dict(config, source)
    return ExperimentConfig.from_dict(result, source=f"{source} (imported original config)")


def load_legacy_config(
    path: str | os.PathLike[str], overrides: Sequence[str] = ()
) -> ExperimentConfig:
    """Read an original VirTex YAML file (following ``_BASE_``) as an :class:`ExperimentConfig`.

    Args:
        path: the original config file.
        overrides: our dotted ``key=value`` overrides (e.g. ``train.num_steps=10``), applied to
            the imported config.
    """
    config = experiment_from_legacy(read_legacy_yaml(path), source=str(path))
    if not overrides:
        return config
    merged = apply_overrides(config.to_dict(), overrides)
    return ExperimentConfig.from_dict(
        merged, source=f"{path} (imported original config) with overrides {' '.join(overrides)}"
    )


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.cnn_lr=0.1"`` -> ``(["optim", "cnn_lr"], 0.1)``; the value is parsed as YAML."""
    key, separator, value_text = text.partition("=")
    key = key.strip()
    if not separator or not key:
        raise ConfigError(f"override {brief(text)}: expected dotted.key=value")
    parts = key.split(".")
    if any(not part for part in parts):
        raise ConfigError(f"override {brief(text)}: empty component in key {brief(key)}")
    try:
        value = load_yaml(value_text) if value_text.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"override {brief(text)}: value is not valid YAML ({error})") from None
    return parts, value


def apply_overrides(config: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``config`` (a plain nested dict) with each ``dotted.key=value`` applied.

    Raises:
        ConfigError: malformed override or unknown key, naming the override.
    """
    result = merge({}, config)
    for text in overrides:
        parts, value = parse_override(text)
        nested: Any = value
        for part in reversed(parts):
            nested = {part: nested}
        check_keys(nested, f"override {brief(text)}")
        result = merge(result, nested)
    return result


def quickstart_config() -> ExperimentConfig:
    """The quickstart run on the built-in dataset (``data/synth``): under 3 minutes on 2 cores.

    ResNet-18 and a 1-layer, 128-wide bicaptioning head on the built-in images at 32 px;
    ``configs/quickstart.yaml`` holds the same values and says why each differs from the paper.
    """
    return ExperimentConfig(
        seed=0,
        data=DataConfig(
            train_lmdb="data/synth/train.lmdb",
            val_lmdb="data/synth/val.lmdb",
            tokenizer="data/synth/tokenizer.json",
            # The captions name colours, positions and counts: no colour jitter, mild crops.
            transform=TransformConfig(
                image_size=32, eval_resize=32, color_jitter=None, crop_scale=(0.8, 1.0)
            ),
        ),
        model=ModelConfig(
            # Not the paper's zero-initialised residual branches: they learn too slowly for runs
            # this short (configs/quickstart.yaml has the measurement).
            visual=VisualConfig(name="resnet18", zero_init_residual=False),
            # No dropout: a run this short does not overfit (val loss below train loss), and on
            # CPU drawing the masks costs about 7% of a step (configs/quickstart.yaml).
            textual=TextualConfig(layers=1, width=128, heads=2, ffn=512, dropout=0.0),
        ),
        # One LR for backbone and head: the paper's head LR (0.001) is made for 500k steps; in
        # 200 steps it leaves the loss near chance (docs/CONFIGS.md has the measurements).
        optim=OptimConfig(
            cnn_lr=0.2,
            lr=0.2,
            schedule=ScheduleConfig(kind="cosine", warmup_steps=20),
            lookahead=LookaheadConfig(enabled=False, alpha=0.5, steps=5),
            fused=True,  # PyTorch's one-kernel SGD step, on CPU too
        ),
        train=TrainConfig(
            num_steps=1100,
            batch_size=32,
            num_workers=0,  # a loader process costs more than it saves on 2 cores
            log_every=20,
            checkpoint_every=550,
            keep_last=2,
            val_every=550,
            val_batches=4,
            sample_captions=4,
        ),
    )


# --------------------------------------------------------------------------------------------
# Strict parsing helpers
# --------------------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Block-style mappings, one-line lists (``betas: [0.9, 0.999]``)."""


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)


_Dumper.add_representer(list, _represent_list)


def check_keys(data: Mapping[str, Any], source: str, *, allow_base: bool = False) -> None:
    """Raise :class:`ConfigError` for the first key of ``data`` that no dataclass field has.

    Walks nested sections (following ``X | None`` fields to their dataclass); values are
    checked later, when the dataclasses are built.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    known = (*TOP_LEVEL_KEYS, "base") if allow_base else TOP_LEVEL_KEYS
    for key, value in data.items():
        if key not in known:
            raise ConfigError(
                f"{source}: unknown key {brief(key)} (known top-level keys: {', '.join(known)})"
            )
        if key in SECTIONS:
            _check_section(SECTIONS[key], value, key, source)


def _check_section(cls: type, data: Any, where: str, source: str) -> None:
    if data is None:
        return
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: {where} must be a mapping, got {brief(data)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key, value in data.items():
        if key not in names:
            raise ConfigError(
                f"{source}: unknown key {where}.{key} (known in {where}: {', '.join(names)})"
            )
        nested = _dataclass_of(hints[key])
        if nested is not None and isinstance(value, Mapping):
            _check_section(nested, value, f"{where}.{key}", source)


def _dataclass_of(hint: Any) -> type | None:
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            if dataclasses.is_dataclass(option) and isinstance(option, type):
                return option
    return None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config file ({error.strerror})") from None
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {error.start}); a config is a UTF-8 YAML file"
        ) from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    # An empty section (``optim:`` with nothing under it) means "defaults", not null.
    return {key: {} if key in SECTIONS and value is None else value for key, value in data.items()}
