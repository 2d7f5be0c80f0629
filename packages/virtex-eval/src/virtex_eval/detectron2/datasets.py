"""Dataset registration for detectron2.

- COCO 2017, LVIS v0.5/v1 and VOC 2007/2012 under their standard names (``coco_2017_train``,
  ``lvis_v1_val``, ``voc_2007_trainval`` ...) are registered by detectron2 itself when
  ``detectron2.data`` is first imported, from the folder in ``$DETECTRON2_DATASETS``::

      ROOT/coco/{train2017,val2017}/  ROOT/coco/annotations/instances_{train,val}2017.json
      ROOT/lvis/lvis_v1_{train,val}.json   (images from ROOT/coco/)
      ROOT/VOC2007/{Annotations,ImageSets,JPEGImages}/  ROOT/VOC2012/...

  :func:`set_data_root` sets that variable and must run before detectron2 is imported.
- The built-in dataset (``virtex-data synth``; COCO instances with polygons) is registered by
  :func:`register_synth` as ``virtex_synth_train`` / ``virtex_synth_val``.
- Any COCO-format folder: :func:`register_coco_folder`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from virtex_eval.detectron2 import compat

__all__ = [
    "SYNTH_PREFIX",
    "register_coco_folder",
    "register_synth",
    "set_data_root",
    "thing_classes",
]

SYNTH_PREFIX = "virtex_synth"


def set_data_root(root: str | os.PathLike[str]) -> None:
    """Point detectron2's built-in COCO/LVIS/VOC registrations at ``root``.

    Raises:
        RuntimeError: ``detectron2.data`` is already imported (its registrations are fixed).
    """
    if "detectron2.data" in sys.modules and os.environ.get("DETECTRON2_DATASETS") != str(root):
        raise RuntimeError(
            "detectron2.data is already imported; set DETECTRON2_DATASETS before importing it"
        )
    os.environ["DETECTRON2_DATASETS"] = str(root)


def thing_classes(json_file: str | os.PathLike[str]) -> list[str]:
    """Category names of a COCO instances file, in id order (detectron2's contiguous ids).

    Raises:
        ValueError: the file has no ``categories`` list, naming it.
    """
    with open(json_file, encoding="utf-8") as handle:
        data = json.load(handle)
    categories = data.get("categories") if isinstance(data, dict) else None
    if not isinstance(categories, list) or not categories:
        raise ValueError(f"{json_file}: no 'categories' list (not COCO instances)")
    return [c["name"] for c in sorted(categories, key=lambda c: c["id"])]


def register_coco_folder(
    name: str, json_file: str | os.PathLike[str], image_root: str | os.PathLike[str]
) -> None:
    """Register a COCO-format instances dataset (idempotent; other files replace the entry).

    Raises:
        FileNotFoundError: the annotation file or image folder is missing, naming it.
    """
    compat.apply()
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    for path in (Path(json_file), Path(image_root)):
        if not path.exists():
            raise FileNotFoundError(f"dataset {name!r}: {path} does not exist")
    if name in DatasetCatalog.list():
        if MetadataCatalog.get(name).get("json_file") == str(json_file):
            return
        # Another folder under the same name (a second run in one process): the latest wins.
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_instances(
        name, {"thing_classes": thing_classes(json_file)}, str(json_file), str(image_root)
    )


def register_synth(root: str | os.PathLike[str], prefix: str = SYNTH_PREFIX) -> list[str]:
    """Register the built-in dataset written by ``virtex_data.synth.generate(root)``.

    Returns:
        The registered names (``{prefix}_train``, ``{prefix}_val`` for the splits present).

    Raises:
        FileNotFoundError: ``root`` holds no ``annotations/instances_*.json``.
    """
    base = Path(root)
    names = []
    for split in ("train", "val"):
        json_file = base / "annotations" / f"instances_{split}.json"
        if json_file.is_file():
            register_coco_folder(f"{prefix}_{split}", json_file, base / split)
            names.append(f"{prefix}_{split}")
    if not names:
        raise FileNotFoundError(
            f"{base}: no annotations/instances_{{train,val}}.json (run `virtex-data synth`)"
        )
    return names
