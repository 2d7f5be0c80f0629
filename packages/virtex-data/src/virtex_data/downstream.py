"""Datasets of the downstream evaluations: class folders, VOC 2007, iNaturalist 2018, COCO.

Each item is a tuple of tensors (default DataLoader collation stacks them):

- :class:`ImageFolderDataset` (ImageNet layout ``root/<class>/<image>``): ``(image, label)``,
  ``label`` int64 scalar; classes are the sorted folder names.
- :class:`VOC07Classification` (``VOCdevkit/VOC2007``): ``(image, labels (20,) float32,
  difficult (20,) bool)``; ``labels`` is 1 for a positive image, 0 otherwise; difficult
  (flag 0 in ``ImageSets/Main/<class>_<split>.txt``) is kept apart, as a mask, so an SVM can
  ignore those examples, as the VOC protocol does.
- :class:`INaturalistDataset` (2018 JSON: ``train2018.json`` / ``val2018.json``):
  ``(image, label)``; category ids are mapped to ``0..C-1`` in sorted order.
- :class:`CocoMultilabelDataset` (``instances_*.json`` + image folder): ``(image, multi-hot (C,))``.

``transform`` maps a PIL image to a tensor, e.g. ``EvalTransform(TransformConfig()).image``.
Errors name the file that could not be read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from virtex_data.datasets import coco_multilabels
from virtex_data.image_codec import decode_rgb, read_regular_file

__all__ = [
    "VOC_CLASSES",
    "CocoMultilabelDataset",
    "ImageFolderDataset",
    "INaturalistDataset",
    "VOC07Classification",
]

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")

ImageTransform = Callable[[Image.Image], Tensor]


def _load(path: Path, transform: ImageTransform) -> Tensor:
    # A regular file, within the pixel limit, turned upright (see virtex_data.image_codec).
    try:
        rgb = decode_rgb(read_regular_file(path))
        rgb.load()
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from error
    return transform(rgb)


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read {path}: {error}") from error


class ImageFolderDataset(Dataset[tuple[Tensor, Tensor]]):
    """``root/<class name>/<image file>``, classes in sorted order (ImageNet, Places...)."""

    def __init__(self, root: str | os.PathLike[str], transform: ImageTransform) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder root not found: {self.root}")
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        if not self.classes:
            raise ValueError(f"{self.root}: no class folders")
        self.samples: list[tuple[Path, int]] = []
        for label, name in enumerate(self.classes):
            for path in sorted((self.root / name).rglob("*")):
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    self.samples.append((path, label))
        self.transform = transform
        self.num_classes = len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        path, label = self.samples[index]
        return _load(path, self.transform), torch.tensor(label, dtype=torch.long)


class VOC07Classification(Dataset[tuple[Tensor, Tensor, Tensor]]):
    """PASCAL VOC 2007 classification (``split``: ``"trainval"`` or ``"test"``).

    Args:
        root: the ``VOC2007`` folder (holding ``JPEGImages/`` and ``ImageSets/Main/``).
        split: image set.
        transform: PIL image -> tensor.
    """

    def __init__(self, root: str | os.PathLike[str], split: str, transform: ImageTransform) -> None:
        if split not in ("train", "val", "trainval", "test"):
            raise ValueError(f"VOC split must be train, val, trainval or test, got {split!r}")
        self.root = Path(root)
        flags: dict[str, list[int]] = {}
        for k, name in enumerate(VOC_CLASSES):
            path = self.root / "ImageSets" / "Main" / f"{name}_{split}.txt"
            if not path.is_file():
                raise FileNotFoundError(f"VOC image set file not found: {path}")
            for n, line in enumerate(path.read_text().splitlines(), start=1):
                if not line.strip():
                    continue
                parts = line.split()
                if len(parts) != 2 or parts[1] not in ("1", "-1", "0"):
                    raise ValueError(f"{path}:{n}: expected '<image id> <1|-1|0>', got {line!r}")
                flags.setdefault(parts[0], [-1] * len(VOC_CLASSES))[k] = int(parts[1])
        self.image_ids = sorted(flags)
        table = torch.tensor([flags[i] for i in self.image_ids], dtype=torch.long)
        self.labels = (table == 1).float()
        self.difficult = table == 0
        self.transform = transform
        self.num_classes = len(VOC_CLASSES)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        path = self.root / "JPEGImages" / f"{self.image_ids[index]}.jpg"
        return _load(path, self.transform), self.labels[index], self.difficult[index]


class INaturalistDataset(Dataset[tuple[Tensor, Tensor]]):
    """iNaturalist 2018 (``train2018.json`` / ``val2018.json`` and the image root).

    Args:
        annotations: the JSON file (``images`` with ``file_name`` relative to ``root``,
            ``annotations`` with ``image_id`` and ``category_id``, ``categories``).
        root: folder the ``file_name`` paths are relative to.
        transform: PIL image -> tensor.
    """

    def __init__(
        self,
        annotations: str | os.PathLike[str],
        root: str | os.PathLike[str],
        transform: ImageTransform,
    ) -> None:
        source = Path(annotations)
        data = _json(source)
        for key in ("images", "annotations", "categories"):
            if key not in data:
                raise ValueError(f"{source}: iNaturalist JSON has no {key!r} key")
        category_ids = sorted(int(c["id"]) for c in data["categories"])
        index = {c: k for k, c in enumerate(category_ids)}
        label_of = {}
        for n, annotation in enumerate(data["annotations"]):
            category = int(annotation["category_id"])
            if category not in index:
                raise ValueError(f"{source}: annotations[{n}] has unknown category_id {category}")
            label_of[int(annotation["image_id"])] = index[category]
        self.root = Path(root)
        self.samples: list[tuple[str, int]] = []
        for image in data["images"]:
            if int(image["id"]) not in label_of:
                raise ValueError(f"{source}: image {image['id']} has no annotation")
            self.samples.append((str(image["file_name"]), label_of[int(image["id"])]))
        self.transform = transform
        self.num_classes = len(category_ids)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        name, label = self.samples[index]
        return _load(self.root / name, self.transform), torch.tensor(label, dtype=torch.long)


class CocoMultilabelDataset(Dataset[tuple[Tensor, Tensor]]):
    """COCO instances as multilabel classification: ``(image, multi-hot (C,))``.

    Categories are sorted by id and numbered ``0..C-1`` (as :class:`MultilabelDataset`).
    """

    def __init__(
        self,
        instances: str | os.PathLike[str],
        root: str | os.PathLike[str],
        transform: ImageTransform,
    ) -> None:
        labels, self.categories = coco_multilabels(instances)
        data = _json(Path(instances))
        self.root = Path(root)
        self.samples = [(str(i["file_name"]), labels[int(i["id"])]) for i in data["images"]]
        self.num_classes = len(self.categories)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        name, labels = self.samples[index]
        target = torch.zeros(self.num_classes, dtype=torch.float32)
        target[labels] = 1.0
        return _load(self.root / name, self.transform), target
