"""Strict parsing of plain dicts (YAML, JSON, checkpoints) into the config dataclasses.

:func:`from_dict` builds a dataclass from a mapping, recursing into nested dataclass fields.
Missing keys take the defaults. Errors are ``ValueError``\\ s naming the full dotted key:

- an unknown key: ``unknown key data.transform.crop_scal (known: color_jitter, ...)``;
- a wrong type: ``model.textual.layers must be an integer, got '2'`` (``bool`` is not accepted
  for ``int``; ``int`` is accepted, and converted, for ``float``);
- a ``Literal`` value outside its choices: ``model.kind='virtex' is not one of ...``;
- a value the dataclass itself rejects (``__post_init__``): ``data.transform: <its message>``.

``X | None`` accepts ``None``; other unions try each member in order. ``tuple[...]`` takes a list
of exactly that many items and ``list[X]`` a list, each item checked. :func:`to_plain` is the
inverse direction (tuples become lists).

Why not dacite or cattrs: both accept ``True`` for an ``int`` field, dacite names no dotted path
for unknown nested keys and keeps ``2`` as an ``int`` in a ``float`` field; making either behave
as the configs are tested took as much code as this module.

Where this lives: virtex-data and virtex-models never import each other, and a bottom package for
one small module would be a fifth distribution to version and install. So this file exists twice,
byte for byte: ``virtex_models/strict_config.py`` (which virtex-train imports too) and
``virtex_data/strict_config.py``. ``tests/test_repository.py`` fails when the copies differ:
edit one, copy it over the other.
"""

from __future__ import annotations

import dataclasses
import reprlib
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

__all__ = ["brief", "convert", "from_dict", "to_plain"]

T = TypeVar("T")

_BRIEF = reprlib.Repr()
_BRIEF.maxlevel = 3
_BRIEF.maxlist = _BRIEF.maxtuple = _BRIEF.maxdict = _BRIEF.maxset = 4
_BRIEF.maxstring = _BRIEF.maxother = _BRIEF.maxlong = 60


def brief(value: Any) -> str:
    """A ``repr`` of ``value`` of at most ~80 characters whose cost does not grow with it."""
    text = _BRIEF.repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def from_dict(cls: type[T], data: Any, where: str) -> T:
    """Build the dataclass ``cls`` from ``data``; errors name ``where`` + the dotted key.

    Raises:
        ValueError: ``data`` is not a mapping, holds an unknown key or a wrongly typed value, or
            ``cls`` rejects the values.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"{where} must be a mapping, got {brief(data)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(str(key) for key in data if key not in names)
    if unknown:
        raise ValueError(f"unknown key {where}.{unknown[0]} (known: {', '.join(sorted(names))})")
    values = {key: convert(hints[key], value, f"{where}.{key}") for key, value in data.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: {error}") from None


def convert(hint: Any, value: Any, where: str) -> Any:
    """Check ``value`` against the type ``hint`` (ints are accepted for floats)."""
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return from_dict(hint, value, where)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{where}={brief(value)} is not one of {', '.join(map(str, args))}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return convert(option, value, where)
            except ValueError as error:
                errors.append(str(error))
        raise ValueError(
            errors[0] if len(errors) == 1 else f"{where}={brief(value)} does not match {hint}"
        )
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where} must be a list, got {brief(value)}")
        return [convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ValueError(f"{where} must be a list of {len(args)} values, got {brief(value)}")
        return tuple(convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:  # e.g. ``model.options``: a mapping of names, checked later by its owner
        if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
            raise ValueError(f"{where} must be a mapping of names, got {brief(value)}")
        return {key: convert(args[1], v, f"{where}.{key}") for key, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true/false, got {brief(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where} must be an integer, got {brief(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{where} must be a number, got {brief(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{where} must be a string, got {brief(value)}")
        return value
    if hint is Any:
        return value
    raise ValueError(f"{where}: unsupported field type {hint}")  # pragma: no cover


def to_plain(value: Any) -> Any:
    """``value`` with every tuple turned into a list and mappings into dicts (YAML/JSON-able)."""
    if isinstance(value, Mapping):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    return value
