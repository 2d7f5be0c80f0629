"""The registry of objectives: one :class:`ObjectiveInfo` per ``model.kind``.

Every module of :mod:`virtex_models.objectives` declares its objectives with :func:`register`
at import time; the registry imports all of them on the first lookup, so adding an objective is
adding one module there (see ARCHITECTURE.md, "How to add an objective"). Everything that
depends on the kind (``ModelConfig.build``, the data target train loads, whether eval can
caption, the original-config importer, the demo's table) reads it from here instead of spelling
kind strings.

The link to ``virtex_data`` is the target's *name* (``ObjectiveInfo.target``): this package
never imports the data package, whose ``virtex_data.targets`` holds the matching registry of
targets; ``tests/test_seam_wiring.py`` checks that every objective's target exists there.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from virtex_models.config import ModelConfig
    from virtex_models.protocols import ObjectiveModule
    from virtex_models.vocab import VocabSpec

__all__ = ["ObjectiveBuilder", "ObjectiveInfo", "get_objective", "objectives", "register"]

#: ``build(config, vocab, num_classes, options)``: a freshly initialised objective; ``options``
#: is the parsed ``model.options`` (an instance of ``ObjectiveInfo.options``, else ``None``).
ObjectiveBuilder = Callable[["ModelConfig", "VocabSpec", "int | None", Any], "ObjectiveModule"]


@dataclass(frozen=True, kw_only=True)
class ObjectiveInfo:
    """What the rest of the code needs to know about one objective.

    Attributes:
        name: the ``model.kind`` string (also the checkpoint's ``model_spec.config.kind``).
        build: builds the objective from a :class:`~virtex_models.config.ModelConfig`.
        target: name of the ``virtex_data`` target whose batches it consumes
            (``virtex_data.targets``).
        captions: it has ``generate`` (greedy/beam/nucleus decoding through
            :mod:`virtex_models.decoding`) and ``log_likelihood``: ``virtex-eval caption`` and
            zero-shot accept it, and training validation samples captions and watches for
            collapse.
        textual: it uses ``model.textual`` (a Transformer head); ``False`` for the linear
            classification heads, whose original configs name no textual head.
        needs_classes: ``build`` needs ``num_classes`` (from the dataset); its output layer is
            per category, not per token.
        options: dataclass of the objective's own settings, read strictly from ``model.options``
            (``None``: the objective takes none and ``model.options`` must be empty).
        original_names: ``MODEL.NAME`` values of original VirTex configs that mean this
            objective (empty for objectives the original did not have).
    """

    name: str
    build: ObjectiveBuilder
    target: str
    captions: bool = False
    textual: bool = True
    needs_classes: bool = False
    options: type | None = None
    original_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.options is not None and not dataclasses.is_dataclass(self.options):
            raise TypeError(f"objective {self.name!r}: options must be a dataclass type")


_REGISTRY: dict[str, ObjectiveInfo] = {}
_LOADED = False
_LOCK = threading.RLock()


def register(info: ObjectiveInfo) -> ObjectiveInfo:
    """Add ``info`` to the registry (called at import time by the objective's module).

    Raises:
        ValueError: another objective already has this name.
    """
    with _LOCK:
        known = _REGISTRY.get(info.name)
        if known is not None and known is not info:
            raise ValueError(f"objective {info.name!r} is registered twice")
        _REGISTRY[info.name] = info
    return info


def _load() -> None:
    # Imported lazily (not at package import) so that virtex_models.objectives' modules may
    # import config/textual without a cycle.
    global _LOADED
    if _LOADED:
        return
    with _LOCK:
        if _LOADED:
            return
        package = importlib.import_module("virtex_models.objectives")
        for module in sorted(m.name for m in pkgutil.iter_modules(package.__path__)):
            if not module.startswith("_"):
                importlib.import_module(f"virtex_models.objectives.{module}")
        _LOADED = True


def objectives() -> dict[str, ObjectiveInfo]:
    """Every registered objective, by name (a copy, in name order)."""
    _load()
    return dict(sorted(_REGISTRY.items()))


def get_objective(name: str) -> ObjectiveInfo:
    """The objective called ``name``.

    Raises:
        ValueError: no such objective, listing the known ones.
    """
    _load()
    info = _REGISTRY.get(name)
    if info is None:
        known = ", ".join(sorted(_REGISTRY))
        raise ValueError(f"unknown objective kind {name!r} (known: {known})")
    return info
