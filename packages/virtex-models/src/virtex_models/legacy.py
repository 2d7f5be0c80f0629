"""Import checkpoints and YAML configs of the original VirTex code (kdexd/virtex).

:func:`load_original` maps an original config to our :class:`ModelConfig` and the original
state dict (its ``"model"`` entry) to our parameter names. The original names are:

- ``visual.cnn.<torchvision ResNet names>`` -> our ``visual.<same>``;
- ``textual.*`` and ``backward_textual.*`` (``visual_projection``, ``embedding.words``,
  ``embedding.positions``, ``embedding.layer_norm``, ``transformer.layers.N.*`` in
  ``nn.TransformerDecoderLayer`` naming, ``output``; no ``transformer.norm``: the original's
  pre-norm stack had no final LayerNorm, so imported configs set ``final_norm=False``) ->
  unchanged: our head uses the same names. Shared tensors appear under every name that shares
  them (the loader accepts that).

The original vocabulary is pad = unk = 0, sos 1, eos 2, mask 3; its decoder is the ``legacy``
decoding mode (:func:`virtex_models.decoding.legacy_beam_search`), which becomes the loaded
objective's default. YAML needs PyYAML (the ``legacy`` extra), imported only here.

Name strings are parsed by two small parsers (no ``eval``, no regular expressions):
``torchvision::resnet50`` (family ``::`` model) and ``transdec_postnorm::L1_H2048_A32_F8192``
(``transdec_postnorm`` | ``transdec_prenorm``, then ``_``-separated fields, each one letter of
``L`` layers, ``H`` width, ``A`` heads, ``F`` feed-forward size followed by an integer).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from virtex_models.config import ModelConfig, ObjectiveKind
from virtex_models.decoding import DecoderConfig
from virtex_models.pretrained import ModelSpec, load_state_dict_checked
from virtex_models.registry import get_objective, objectives
from virtex_models.textual import TextualConfig
from virtex_models.torchfile import load_weights_only
from virtex_models.visual import VisualConfig
from virtex_models.vocab import VocabSpec

__all__ = [
    "convert_state_dict",
    "load_original",
    "load_original_weights",
    "parse_textual_name",
    "parse_visual_name",
    "read_original_config",
    "spec_from_original_config",
]

#: ``MODEL.NAME`` of the original -> our objective kind (the registry's ``original_names``).
ORIGINAL_KINDS: dict[str, ObjectiveKind] = {
    original: info.name for info in objectives().values() for original in info.original_names
}

#: Defaults of the original config for the keys read here (its ``virtex/config.py``).
ORIGINAL_DEFAULTS: dict[str, Any] = {
    "DATA": {
        "VOCAB_SIZE": 10000,
        "UNK_INDEX": 0,
        "SOS_INDEX": 1,
        "EOS_INDEX": 2,
        "MASK_INDEX": 3,
        "MAX_CAPTION_LENGTH": 30,
    },
    "MODEL": {
        "NAME": "virtex",
        "VISUAL": {"NAME": "torchvision::resnet50", "FROZEN": False},
        "TEXTUAL": {"NAME": "transdec_postnorm::L1_H2048_A32_F8192", "DROPOUT": 0.1},
        "DECODER": {"NAME": "beam_search", "BEAM_SIZE": 5, "NUCLEUS_SIZE": 0.9},
    },
}

_TEXTUAL_FIELDS = {"L": "layers", "H": "width", "A": "heads", "F": "ffn"}

#: Key prefixes that only the original's June-2020 (v0.9) checkpoints have.
_PRE_V1_PREFIXES = ("textual.encoder.", "backward_textual.encoder.", "visual_projection.")


def parse_visual_name(name: str) -> VisualConfig:
    """``torchvision::resnet50`` -> ``VisualConfig(kind="torchvision", name="resnet50")``."""
    family, separator, model = name.partition("::")
    if family != "torchvision" or not separator or not model:
        raise ValueError(
            f"MODEL.VISUAL.NAME {name!r} is not supported: expected 'torchvision::<resnet name>'"
        )
    return VisualConfig(kind="torchvision", name=model)


def parse_textual_name(name: str, dropout: float, max_length: int) -> TextualConfig:
    """``transdec_postnorm::L1_H2048_A32_F8192`` -> a post-norm 1-layer, 2048-wide head with
    32 heads and feed-forward size 8192."""
    family, separator, sizes = name.partition("::")
    if family not in ("transdec_postnorm", "transdec_prenorm") or not separator:
        raise ValueError(
            f"MODEL.TEXTUAL.NAME {name!r}: expected 'transdec_postnorm::L.._H.._A.._F..' or "
            "'transdec_prenorm::...'"
        )
    values: dict[str, int] = {}
    for part in sizes.split("_"):
        letter, digits = part[:1], part[1:]
        if letter not in _TEXTUAL_FIELDS or not digits.isdigit():
            raise ValueError(f"MODEL.TEXTUAL.NAME {name!r}: cannot read field {part!r}")
        values[_TEXTUAL_FIELDS[letter]] = int(digits)
    absent = [letter for letter, field in _TEXTUAL_FIELDS.items() if field not in values]
    if absent:
        raise ValueError(f"MODEL.TEXTUAL.NAME {name!r}: missing field(s) {', '.join(absent)}")
    # The original's pre-norm stack had no LayerNorm after its last layer.
    return TextualConfig(
        norm_first=family == "transdec_prenorm",
        final_norm=False,
        dropout=dropout,
        max_length=max_length,
        **values,
    )


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_original_config(path: str | os.PathLike[str], _depth: int = 0) -> dict[str, Any]:
    """Read an original YAML config, following its ``_BASE_`` (relative path) chain."""
    try:
        import yaml
    except ImportError:  # pragma: no cover - exercised only without PyYAML
        raise ImportError(
            "reading original configs needs PyYAML: pip install 'virtex-models[legacy]'"
        ) from None
    if _depth > 8:
        raise ValueError(f"{path}: _BASE_ chain deeper than 8 files")
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        data = yaml.safe_load(handle) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a YAML mapping")
    base = data.pop("_BASE_", None)
    if base is not None:
        data = _merge(read_original_config(path.parent / str(base), _depth + 1), data)
    return data


def spec_from_original_config(
    config: Mapping[str, Any], num_classes: int | None = None, source: str = "config"
) -> ModelSpec:
    """Our :class:`ModelSpec` for an original config (a nested dict, ``_BASE_`` resolved)."""
    merged = _merge(ORIGINAL_DEFAULTS, config)
    data, model = merged["DATA"], merged["MODEL"]
    name = str(model["NAME"])
    if name not in ORIGINAL_KINDS:
        raise ValueError(f"{source}: MODEL.NAME {name!r} is not one of {sorted(ORIGINAL_KINDS)}")
    kind = ORIGINAL_KINDS[name]
    unk = int(data["UNK_INDEX"])
    vocab = VocabSpec(
        size=int(data["VOCAB_SIZE"]),
        pad=int(data.get("PAD_INDEX", unk)),
        unk=unk,
        sos=int(data["SOS_INDEX"]),
        eos=int(data["EOS_INDEX"]),
        mask=int(data["MASK_INDEX"]),
    )
    max_length = int(data["MAX_CAPTION_LENGTH"])
    visual = parse_visual_name(str(model["VISUAL"]["NAME"]))
    visual.frozen = bool(model["VISUAL"].get("FROZEN", False))
    textual = TextualConfig(max_length=max_length)
    if get_objective(kind).textual:
        textual = parse_textual_name(
            str(model["TEXTUAL"]["NAME"]), float(model["TEXTUAL"]["DROPOUT"]), max_length
        )
    decoder_cfg = model["DECODER"]
    steps = int(decoder_cfg.get("MAX_DECODING_STEPS", max_length))
    if decoder_cfg["NAME"] == "beam_search":
        decoder = DecoderConfig(
            mode="legacy", beam_size=int(decoder_cfg["BEAM_SIZE"]), max_steps=steps
        )
    elif decoder_cfg["NAME"] == "nucleus_sampling":
        decoder = DecoderConfig(
            mode="legacy_nucleus", top_p=float(decoder_cfg["NUCLEUS_SIZE"]), max_steps=steps
        )
    else:
        raise ValueError(f"{source}: MODEL.DECODER.NAME {decoder_cfg['NAME']!r} is not supported")
    return ModelSpec(
        config=ModelConfig(kind=kind, visual=visual, textual=textual, decoder=decoder),
        vocab=vocab,
        num_classes=num_classes,
    )


def convert_state_dict(
    state: Mapping[str, Tensor], source: str = "checkpoint"
) -> dict[str, Tensor]:
    """Original parameter names -> ours (``visual.cnn.`` -> ``visual.``; heads unchanged).

    Raises:
        ValueError: a key outside ``visual.cnn.``, ``textual.`` and ``backward_textual.``; a
            checkpoint of the June-2020 (v0.9) zoo, named as such.
    """
    old = sorted(k for k in state if k.startswith(_PRE_V1_PREFIXES))
    if old:
        raise ValueError(
            f"{source}: a June-2020 (VirTex v0.9) checkpoint (key {old[0]!r}); its layout "
            "(textual.encoder.*, a top-level visual_projection.*) predates the v1.x zoo and is "
            "not supported: use the v1.x weights (virtex_models.zoo.MANIFEST)"
        )
    converted: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith("visual.cnn."):
            rest = key[len("visual.cnn.") :]
            if rest.startswith("fc."):
                continue  # the classifier of a torchvision model is not part of the backbone
            converted["visual." + rest] = value
        elif key.startswith(("textual.", "backward_textual.")):
            converted[key] = value
        else:
            raise ValueError(f"{source}: unexpected key {key!r} in the original state dict")
    return converted


def load_original(
    checkpoint_path: str | os.PathLike[str],
    config_path: str | os.PathLike[str],
    map_location: str | torch.device = "cpu",
) -> tuple[nn.Module, ModelSpec]:
    """Our objective, in eval mode, with the weights of an original VirTex checkpoint.

    Args:
        checkpoint_path: a file written by the original code (a dict whose ``"model"`` entry is
            the state dict; ``optimizer``, ``scheduler``, ``scaler``, ``iteration`` are ignored),
            read with ``torch.load(weights_only=True)``.
        config_path: the original YAML config of that checkpoint.
        map_location: where tensors are loaded.

    Returns:
        ``(objective, spec)``; captioning objectives decode with the original's decoder by
        default (``generate(images)``; ``mode="beam"`` gives our cleaner beam search).

    Raises:
        ValueError: unsupported names in the config, unknown keys, or shapes that do not match
            the config, naming the keys and the file.
    """
    config = read_original_config(config_path)
    spec = spec_from_original_config(config, source=str(config_path))
    return load_original_weights(checkpoint_path, spec, map_location)


def load_original_weights(
    checkpoint_path: str | os.PathLike[str],
    spec: ModelSpec,
    map_location: str | torch.device = "cpu",
) -> tuple[nn.Module, ModelSpec]:
    """Build ``spec`` (from :func:`spec_from_original_config`) and load an original checkpoint.

    ``num_classes`` of a multilabel objective is read from the checkpoint's classifier.
    """
    name = str(checkpoint_path)
    checkpoint = load_weights_only(name, map_location=map_location)
    if not isinstance(checkpoint, Mapping) or "model" not in checkpoint:
        raise ValueError(f"{name}: not an original VirTex checkpoint (no 'model' entry)")
    state = convert_state_dict(checkpoint["model"], name)
    if get_objective(spec.config.kind).needs_classes and "textual.output.weight" in state:
        classes = int(state["textual.output.weight"].shape[0])
        spec = ModelSpec(config=spec.config, vocab=spec.vocab, num_classes=classes)
    model = spec.build()
    load_state_dict_checked(model, state, name)
    return model.eval(), spec
