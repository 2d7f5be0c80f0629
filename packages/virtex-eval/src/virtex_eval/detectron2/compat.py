"""Shims that let detectron2 0.6 import and run with today's numpy, Pillow and setuptools.

Call :func:`apply` before the first ``import detectron2``; it is idempotent and only adds names
that are missing, so it changes nothing for a detectron2 and libraries that do not need it.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

__all__ = ["apply", "compiled_ops_available", "model_zoo_config"]

_applied = False


def _numpy_aliases() -> None:
    # detectron2 0.6 still uses np.int / np.float / np.str / np.object (removed in numpy 1.24;
    # e.g. data/build.py's class histogram, evaluation/sem_seg_evaluation.py) and np.bool
    # (removed in 1.24, back in 2.0; structures/masks.py). They were the builtins all along.
    import numpy as np

    for name, value in (("int", int), ("float", float), ("str", str), ("object", object)):
        if name not in np.__dict__:
            setattr(np, name, value)
    if "bool" not in np.__dict__ and not hasattr(np, "bool"):
        setattr(np, "bool", bool)  # noqa: B010


def _pillow_linear() -> None:
    # data/transforms/transform.py uses Image.LINEAR as a default argument (evaluated at import);
    # Pillow 10 removed that alias of BILINEAR.
    from PIL import Image

    if not hasattr(Image, "LINEAR"):
        setattr(Image, "LINEAR", Image.Resampling.BILINEAR)  # noqa: B010


def _detectron2_dir() -> Path | None:
    # find_spec on a top-level name locates the package without importing it.
    spec = importlib.util.find_spec("detectron2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def compiled_ops_available() -> bool:
    """Whether detectron2's C++ extension (``detectron2._C``) is installed."""
    package = _detectron2_dir()
    return package is not None and any(package.glob("_C.*"))


class _MissingOps(types.ModuleType):
    """Stands in for ``detectron2._C`` when detectron2 was built without its C++ ops."""

    # utils/collect_env.py (run by engine.default_setup) asks these of an importable _C.
    @staticmethod
    def get_compiler_version() -> str:
        return "none: detectron2 built without C++ ops"

    @staticmethod
    def get_cuda_version() -> str:
        return "none: detectron2 built without C++ ops"

    @staticmethod
    def has_cuda() -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise NotImplementedError(
            f"detectron2._C.{name}: this detectron2 was built without its C++ ops (rotated "
            "boxes, deformable convolution, the fast COCO evaluator are unavailable); install "
            "official detectron2 for them"
        )


def _stub_compiled_ops() -> None:
    # Four modules do ``from detectron2 import _C`` at import time (layers/deform_conv.py,
    # layers/rotated_boxes.py, layers/roi_align_rotated.py, evaluation/fast_eval_api.py), so
    # detectron2.layers and detectron2.evaluation cannot be imported at all without the
    # extension. A placeholder module lets them import; using a missing op raises a clear error.
    if _detectron2_dir() is not None and not compiled_ops_available():
        sys.modules.setdefault("detectron2._C", _MissingOps("detectron2._C"))


def apply() -> None:
    """Install every shim (idempotent). Call before importing detectron2."""
    global _applied
    if _applied:
        return
    _numpy_aliases()
    _pillow_linear()
    _stub_compiled_ops()
    _applied = True


def model_zoo_config(relative: str) -> Path:
    """Path of a model-zoo YAML shipped inside detectron2 (e.g. ``COCO-Detection/x.yaml``).

    ``detectron2.model_zoo.get_config_file`` does the same through ``pkg_resources``, which
    setuptools 81 removed; this reads the package data with importlib.resources instead.
    """
    root = importlib.resources.files("detectron2") / "model_zoo" / "configs"
    path = Path(str(root / relative))
    if not path.is_file():
        raise FileNotFoundError(
            f"{relative} is not a detectron2 model-zoo config (looked in {path})"
        )
    return path
