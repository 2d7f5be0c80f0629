"""YAML text and dict merging shared by our experiment configs and the legacy importer.

:mod:`virtex_train.config` imports :mod:`virtex_train.legacy_config` (to read original VirTex
files); both import this module, so they share one safe loader and one error type without an
import cycle.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import yaml

__all__ = ["MAX_CONFIG_NODES", "ConfigError", "load_yaml", "merge"]


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key and the file."""


#: Most values a config may expand to, aliases followed (the largest real config has ~150).
MAX_CONFIG_NODES = 10_000


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, but ``1e-4`` is a float (YAML 1.2), not the string ``"1e-4"``.

    Aliases (``*name``) are allowed, but a document whose aliases expand to more than
    :data:`MAX_CONFIG_NODES` values (a "billion laughs" alias bomb: 400 bytes, gigabytes once
    copied or printed) is refused before anything walks it.
    """

    def construct_document(self, node: yaml.Node) -> Any:
        expanded = _expanded_size(node, {}, MAX_CONFIG_NODES)
        if expanded > MAX_CONFIG_NODES:
            raise yaml.YAMLError(
                f"aliases expand to more than {MAX_CONFIG_NODES} values (an alias bomb?)"
            )
        return super().construct_document(node)


def _expanded_size(node: yaml.Node, memo: dict[int, int], limit: int) -> int:
    """Values ``node`` stands for with aliases expanded; stops counting past ``limit``."""
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = limit + 1  # a cycle counts as unbounded
    total = 1
    if isinstance(node, yaml.SequenceNode):
        for child in node.value:
            total += _expanded_size(child, memo, limit)
            if total > limit:
                break
    elif isinstance(node, yaml.MappingNode):
        for name, child in node.value:
            total += _expanded_size(name, memo, limit) + _expanded_size(child, memo, limit)
            if total > limit:
                break
    memo[key] = total
    return total


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: no arbitrary objects


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, any other value replaces (lists included)."""
    merged: dict[str, Any] = {}
    for key, value in base.items():
        merged[key] = merge({}, value) if isinstance(value, Mapping) else value
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        elif isinstance(value, Mapping):
            merged[key] = merge({}, value)
        else:
            merged[key] = value
    return merged
