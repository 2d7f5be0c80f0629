"""Fine-tune detectron2 detectors from a VirTex backbone (the paper's transfer experiments).

Nothing here imports detectron2 at module level: it is an optional extra, installed with
``python -m virtex_eval.detectron2.install``. Modules:

- :mod:`.install`: the installer (an importable detectron2, official from GitHub, or the
  ``pb1-detectron2`` 0.6 sdist rebuilt as pure Python).
- :mod:`.compat`: shims applied before detectron2 is imported (numpy/Pillow aliases, a stand-in
  for missing compiled ops, model-zoo configs without ``pkg_resources``).
- :mod:`.datasets`: COCO / LVIS / VOC in their standard layouts, the built-in dataset and any
  COCO-format folder.
- :mod:`.modeling`: the ``Res5ROIHeadsExtraNorm`` ROI head of the VOC Faster R-CNN C4 config.
- :mod:`.runner`: config, weights, training, evaluation, ``metrics_detectron2.json``.
- :mod:`.cli`: the ``virtex-eval detectron2`` command.
"""

from __future__ import annotations

import importlib.util

__all__ = ["METRICS_FILE", "detectron2_available"]

#: Written into detectron2's OUTPUT_DIR: ``{"bbox": {"AP": ...}, "segm": {...}, ...}``.
METRICS_FILE = "metrics_detectron2.json"


def detectron2_available() -> bool:
    """Whether detectron2 is installed (found without importing it)."""
    return importlib.util.find_spec("detectron2") is not None
