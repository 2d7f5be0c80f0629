"""Import the YAML configs of the original VirTex code (kdexd/virtex, release 1.x).

The original files are yacs/fvcore ``CfgNode`` YAML: upper-case keys (``RANDOM_SEED``, ``AMP``,
``DATA.*``, ``MODEL.*``, ``OPTIM.*``) over the defaults of its ``virtex/config.py``, with an
optional ``_BASE_`` file (relative path; chains allowed, as in fvcore). :func:`read_legacy_yaml`
reads such a file and :func:`legacy_experiment_dict` maps it to the plain dict of our experiment
YAML, which :func:`virtex_train.config.load_legacy_config` (and ``load_config``, which recognises
these files) turns into an :class:`~virtex_train.config.ExperimentConfig`; the mapping
is the table in ``docs/CONFIGS.md``. Like the original, an unknown key is an error (naming the
key and the file); so is a value of the wrong type, and so is a setting we cannot reproduce
(ImageNet-initialised backbones, data-efficiency subsets, unrecognised ``NO_DECAY`` patterns).

Architecture names are parsed by :mod:`virtex_models.legacy` (no regular expressions, no
``eval``): ``torchvision::resnet50`` and ``transdec_postnorm::L1_H2048_A32_F8192``
(``transdec_prenorm`` = pre-norm layers).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from virtex_models.legacy import ORIGINAL_KINDS, parse_textual_name, parse_visual_name
from virtex_models.registry import get_objective
from virtex_train.config_yaml import ConfigError, load_yaml, merge

__all__ = [
    "LEGACY_DEFAULTS",
    "LEGACY_NO_DECAY",
    "is_legacy_config",
    "legacy_experiment_dict",
    "read_legacy_yaml",
]

#: Every key of the original ``virtex/config.py`` (release 1.x) with its default. The two
#: ``DATA.USE_*`` keys appear in the original's ``_base_`` config files.
LEGACY_DEFAULTS: dict[str, Any] = {
    "RANDOM_SEED": 0,
    "AMP": True,
    "CUDNN_DETERMINISTIC": False,
    "CUDNN_BENCHMARK": True,
    "DATA": {
        "ROOT": "datasets/coco",
        "TOKENIZER_MODEL": "datasets/vocab/coco_10k.model",
        "VOCAB_SIZE": 10000,
        "UNK_INDEX": 0,
        "SOS_INDEX": 1,
        "EOS_INDEX": 2,
        "MASK_INDEX": 3,
        "IMAGE_CROP_SIZE": 224,
        "MAX_CAPTION_LENGTH": 30,
        "IMAGE_TRANSFORM_TRAIN": [
            "random_resized_crop",
            "horizontal_flip",
            "color_jitter",
            "normalize",
        ],
        "IMAGE_TRANSFORM_VAL": ["smallest_resize", "center_crop", "normalize"],
        "MASKED_LM": {
            "MASK_PROPORTION": 0.15,
            "MASK_PROBABILITY": 0.85,
            "REPLACE_PROBABILITY": 0.10,
        },
        "USE_PERCENTAGE": 100.0,
        "USE_SINGLE_CAPTION": False,
    },
    "MODEL": {
        "NAME": "virtex",
        "VISUAL": {
            "NAME": "torchvision::resnet50",
            "FEATURE_SIZE": 2048,
            "PRETRAINED": False,
            "FROZEN": False,
        },
        "TEXTUAL": {"NAME": "transdec_postnorm::L1_H2048_A32_F8192", "DROPOUT": 0.1},
        "DECODER": {
            "NAME": "beam_search",
            "BEAM_SIZE": 5,
            "NUCLEUS_SIZE": 0.9,
            "MAX_DECODING_STEPS": 30,
        },
    },
    "OPTIM": {
        "OPTIMIZER_NAME": "sgd",
        "SGD_MOMENTUM": 0.9,
        "WEIGHT_DECAY": 0.0001,
        "NO_DECAY": ".*textual.(embedding|transformer).*(norm.*|bias)",
        "CLIP_GRAD_NORM": 10.0,
        "LOOKAHEAD": {"USE": True, "ALPHA": 0.5, "STEPS": 5},
        "BATCH_SIZE": 256,
        "CNN_LR": 0.2,
        "LR": 0.001,
        "NUM_ITERATIONS": 500000,
        "WARMUP_STEPS": 10000,
        "LR_DECAY_NAME": "cosine",
        "LR_STEPS": [],
        "LR_GAMMA": 0.1,
    },
}

#: ``OPTIM.NO_DECAY`` patterns of the original -> our ``optim.no_decay`` kinds. The original's
#: default excludes norm layers and biases of the textual head only; ours apply the kinds to the
#: whole model (see ``docs/CONFIGS.md``).
LEGACY_NO_DECAY: dict[str, list[Literal["norm", "bias", "embedding"]]] = {
    ".*textual.(embedding|transformer).*(norm.*|bias)": ["norm", "bias"],
    "none": [],
    "": [],
}

_DECAY_KINDS: dict[str, Literal["cosine", "linear", "multistep", "constant"]] = {
    "cosine": "cosine",
    "linear": "linear",
    "multistep": "multistep",
    "none": "constant",
}
_TRAIN_TRANSFORMS = {"random_resized_crop", "horizontal_flip", "color_jitter", "normalize"}
_VAL_TRANSFORMS = {"smallest_resize", "center_crop", "normalize"}


def is_legacy_config(data: Mapping[str, Any]) -> bool:
    """Whether a parsed YAML mapping is in the original's format (upper-case keys)."""
    return bool(data) and all(
        isinstance(key, str) and (key == "_BASE_" or key in LEGACY_DEFAULTS) for key in data
    )


def read_legacy_yaml(path: str | os.PathLike[str], _depth: int = 0) -> dict[str, Any]:
    """Read an original config file and its ``_BASE_`` chain into one nested dict.

    Every file is checked against :data:`LEGACY_DEFAULTS` on its own, so an unknown key or a
    wrongly typed value names the file that holds it.

    Raises:
        ConfigError: unreadable file, unknown key, wrong type, or a ``_BASE_`` cycle.
    """
    path = Path(path)
    if _depth > 8:
        raise ConfigError(f"{path}: _BASE_ chain deeper than 8 files (a cycle?)")
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config file ({error.strerror})") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    base = data.pop("_BASE_", None)
    _check(data, LEGACY_DEFAULTS, "", str(path))
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: _BASE_ must be a file name, got {base!r}")
    return merge(read_legacy_yaml(os.path.normpath(path.parent / base), _depth + 1), data)


def _check(data: Mapping[str, Any], schema: Mapping[str, Any], prefix: str, source: str) -> None:
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in schema:
            raise ConfigError(
                f"{source}: unknown key {dotted} (the original VirTex config has no such key; "
                f"known here: {', '.join(schema)})"
            )
        default = schema[key]
        if isinstance(default, dict):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{source}: {dotted} must be a mapping, got {value!r}")
            _check(value, default, f"{dotted}.", source)
        elif not _same_type(default, value):
            raise ConfigError(
                f"{source}: {dotted} must be {type(default).__name__} like the default "
                f"{default!r}, got {value!r}"
            )


def _same_type(default: Any, value: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(default, list):
        return isinstance(value, list)
    return isinstance(value, type(default))


def legacy_experiment_dict(config: Mapping[str, Any], source: str = "config") -> dict[str, Any]:
    """Map an original config (nested dict, ``_BASE_`` resolved) to our experiment dict.

    Missing keys take the original defaults (:data:`LEGACY_DEFAULTS`), which are the paper's
    pre-training setting, so an empty file gives the paper's main model.

    Raises:
        ConfigError: a setting with no equivalent here, naming the key and ``source``.
    """
    _check(config, LEGACY_DEFAULTS, "", source)
    c = merge(LEGACY_DEFAULTS, config)
    data, model, optim = c["DATA"], c["MODEL"], c["OPTIM"]

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(f"{source}: {key}: {message}")

    name = model["NAME"]
    if name not in ORIGINAL_KINDS:
        raise fail("MODEL.NAME", f"{name!r} is not one of {', '.join(ORIGINAL_KINDS)}")
    kind = ORIGINAL_KINDS[name]
    if model["VISUAL"]["PRETRAINED"]:
        raise fail("MODEL.VISUAL.PRETRAINED", "ImageNet-initialised backbones are not supported")
    if data["USE_PERCENTAGE"] != 100.0:
        raise fail("DATA.USE_PERCENTAGE", "training on a subset is not supported (100 only)")
    if data["USE_SINGLE_CAPTION"]:
        raise fail("DATA.USE_SINGLE_CAPTION", "one caption per image is not supported")
    for key, allowed in (
        ("IMAGE_TRANSFORM_TRAIN", _TRAIN_TRANSFORMS),
        ("IMAGE_TRANSFORM_VAL", _VAL_TRANSFORMS),
    ):
        unknown = [t for t in data[key] if t not in allowed]
        if unknown:
            raise fail(f"DATA.{key}", f"unsupported transform(s) {unknown}; known {allowed}")
    train_transforms = set(data["IMAGE_TRANSFORM_TRAIN"])
    for required in ("random_resized_crop", "normalize"):
        if required not in train_transforms:
            raise fail(
                "DATA.IMAGE_TRANSFORM_TRAIN", f"training without {required} is not supported"
            )

    max_length = data["MAX_CAPTION_LENGTH"]
    try:
        visual = parse_visual_name(model["VISUAL"]["NAME"])
        visual.frozen = model["VISUAL"]["FROZEN"]
        textual: dict[str, Any] = {"max_length": max_length}
        if get_objective(kind).textual:
            parsed = parse_textual_name(
                model["TEXTUAL"]["NAME"], float(model["TEXTUAL"]["DROPOUT"]), max_length
            )
            textual = {
                "layers": parsed.layers,
                "width": parsed.width,
                "heads": parsed.heads,
                "ffn": parsed.ffn,
                "norm_first": parsed.norm_first,
                "dropout": parsed.dropout,
                "max_length": parsed.max_length,
            }
            if parsed.norm_first:
                # The original's pre-norm stack had no final LayerNorm (post-norm has none).
                textual["final_norm"] = False
    except ValueError as error:
        raise ConfigError(f"{source}: {error}") from None

    decoder = model["DECODER"]
    decoder_out: dict[str, Any] = {"max_steps": decoder["MAX_DECODING_STEPS"]}
    if decoder["NAME"] == "beam_search":
        decoder_out.update(mode="beam", beam_size=decoder["BEAM_SIZE"])
    elif decoder["NAME"] == "nucleus_sampling":
        decoder_out.update(mode="nucleus", top_p=float(decoder["NUCLEUS_SIZE"]))
    else:
        raise fail("MODEL.DECODER.NAME", f"{decoder['NAME']!r} is not beam_search/nucleus_sampling")

    no_decay = LEGACY_NO_DECAY.get(optim["NO_DECAY"])
    if no_decay is None:
        raise fail(
            "OPTIM.NO_DECAY",
            f"pattern {optim['NO_DECAY']!r} has no module-type equivalent; use one of "
            f"{list(LEGACY_NO_DECAY)} or write our YAML with optim.no_decay",
        )
    decay_kind = _DECAY_KINDS.get(optim["LR_DECAY_NAME"])
    if decay_kind is None:
        raise fail(
            "OPTIM.LR_DECAY_NAME", f"{optim['LR_DECAY_NAME']!r} is not one of {_DECAY_KINDS}"
        )
    if optim["OPTIMIZER_NAME"] not in ("sgd", "adamw"):
        raise fail("OPTIM.OPTIMIZER_NAME", f"{optim['OPTIMIZER_NAME']!r} is not sgd/adamw")

    root = data["ROOT"].rstrip("/")
    tokenizer = str(Path(data["TOKENIZER_MODEL"]).with_suffix(".json"))
    data_out: dict[str, Any] = {
        "train_lmdb": f"{root}/coco_train2017.lmdb",
        "val_lmdb": f"{root}/coco_val2017.lmdb",
        "tokenizer": tokenizer,
        "max_caption_length": max_length,
        "transform": {
            "image_size": data["IMAGE_CROP_SIZE"],
            "hflip": 0.5 if "horizontal_flip" in train_transforms else 0.0,
        },
        "masking": {
            "proportion": float(data["MASKED_LM"]["MASK_PROPORTION"]),
            "mask": float(data["MASKED_LM"]["MASK_PROBABILITY"]),
            "random": float(data["MASKED_LM"]["REPLACE_PROBABILITY"]),
            # Rounded so that 1 - 0.85 - 0.10 is 0.05, not 0.05000000000000002.
            "keep": round(
                1.0
                - float(data["MASKED_LM"]["MASK_PROBABILITY"])
                - float(data["MASKED_LM"]["REPLACE_PROBABILITY"]),
                12,
            ),
        },
    }
    if "color_jitter" not in train_transforms:
        data_out["transform"]["color_jitter"] = None
    if get_objective(kind).needs_classes:  # categories come from COCO instances
        data_out["train_instances"] = f"{root}/annotations/instances_train2017.json"
        data_out["val_instances"] = f"{root}/annotations/instances_val2017.json"

    clip = float(optim["CLIP_GRAD_NORM"])
    result = {
        "seed": c["RANDOM_SEED"],
        "data": data_out,
        "model": {
            "kind": kind,
            "visual": {"kind": visual.kind, "name": visual.name, "frozen": visual.frozen},
            "textual": textual,
            "decoder": decoder_out,
        },
        "optim": {
            "kind": optim["OPTIMIZER_NAME"],
            "cnn_lr": float(optim["CNN_LR"]),
            "lr": float(optim["LR"]),
            "momentum": float(optim["SGD_MOMENTUM"]),
            "weight_decay": float(optim["WEIGHT_DECAY"]),
            "no_decay": list(no_decay),
            "clip_grad_norm": clip if clip > 0 else None,
            "lookahead": {
                "enabled": optim["LOOKAHEAD"]["USE"],
                "alpha": float(optim["LOOKAHEAD"]["ALPHA"]),
                "steps": optim["LOOKAHEAD"]["STEPS"],
            },
            "schedule": {
                "kind": decay_kind,
                "warmup_steps": optim["WARMUP_STEPS"],
                "milestones": list(optim["LR_STEPS"]),
                "gamma": float(optim["LR_GAMMA"]),
            },
        },
        "train": {
            "num_steps": optim["NUM_ITERATIONS"],
            "batch_size": optim["BATCH_SIZE"],
            "precision": "auto" if c["AMP"] else "fp32",
        },
    }
    return result
