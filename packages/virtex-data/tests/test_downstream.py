"""Downstream datasets on tiny fixtures built here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from virtex_data.downstream import (
    VOC_CLASSES,
    CocoMultilabelDataset,
    ImageFolderDataset,
    INaturalistDataset,
    VOC07Classification,
)
from virtex_data.transforms import EvalTransform, TransformConfig

TRANSFORM = EvalTransform(TransformConfig(image_size=8, eval_resize=10)).image


def _image(path: Path, colour: tuple[int, int, int] = (10, 20, 30), mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (12, 10), colour if mode == "RGB" else 100).save(path)


def test_image_folder_classes_are_sorted_folders(tmp_path: Path) -> None:
    for name, count in (("zebra", 2), ("ant", 3)):
        for i in range(count):
            _image(tmp_path / name / f"{i}.jpg")
    _image(tmp_path / "ant" / "gray.png", mode="L")
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    dataset = ImageFolderDataset(tmp_path, TRANSFORM)
    assert dataset.classes == ["ant", "zebra"] and len(dataset) == 6
    labels = [int(dataset[i][1]) for i in range(len(dataset))]
    assert labels == [0, 0, 0, 0, 1, 1]
    images, targets = next(iter(DataLoader(dataset, batch_size=6)))
    assert images.shape == (6, 3, 8, 8) and targets.dtype == torch.long


def test_voc07_labels_and_difficult_mask(tmp_path: Path) -> None:
    root = tmp_path / "VOC2007"
    ids = ["000001", "000002", "000003"]
    flags = {"000001": {"cat": "1", "dog": "0"}, "000002": {"dog": "1"}, "000003": {}}
    main = root / "ImageSets" / "Main"
    main.mkdir(parents=True)
    for split in ("trainval", "test"):
        for name in VOC_CLASSES:
            lines = [f"{i} {flags[i].get(name, '-1'):>2}" for i in ids]
            (main / f"{name}_{split}.txt").write_text("\n".join(lines) + "\n")
    for i in ids:
        _image(root / "JPEGImages" / f"{i}.jpg")
    dataset = VOC07Classification(root, "trainval", TRANSFORM)
    assert len(dataset) == 3 and dataset.num_classes == 20
    image, labels, difficult = dataset[0]
    cat, dog = VOC_CLASSES.index("cat"), VOC_CLASSES.index("dog")
    assert image.shape == (3, 8, 8)
    assert labels[cat] == 1 and labels[dog] == 0 and labels.sum() == 1
    assert difficult[dog] and difficult.sum() == 1
    assert dataset[1][1][dog] == 1 and dataset[2][1].sum() == 0
    (main / "cat_test.txt").write_text("000001 7\n")
    with pytest.raises(ValueError, match=r"cat_test.txt:1"):
        VOC07Classification(root, "test", TRANSFORM)


def test_inaturalist_json_maps_categories_to_contiguous_labels(tmp_path: Path) -> None:
    images = [{"id": 10 + k, "file_name": f"train_val2018/Plantae/{k}.jpg"} for k in range(3)]
    for image in images:
        _image(tmp_path / image["file_name"])
    data = {
        "images": images,
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 8141},
            {"id": 2, "image_id": 11, "category_id": 5},
            {"id": 3, "image_id": 12, "category_id": 5},
        ],
        "categories": [{"id": 8141, "name": "b"}, {"id": 5, "name": "a"}],
    }
    annotations = tmp_path / "train2018.json"
    annotations.write_text(json.dumps(data))
    dataset = INaturalistDataset(annotations, tmp_path, TRANSFORM)
    assert dataset.num_classes == 2
    assert [int(dataset[i][1]) for i in range(3)] == [1, 0, 0]
    data["annotations"][0]["category_id"] = 77
    annotations.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="train2018.json: annotations\\[0\\] has unknown"):
        INaturalistDataset(annotations, tmp_path, TRANSFORM)


def test_coco_multilabel_and_unreadable_image(tmp_path: Path) -> None:
    for name in ("a.jpg", "b.jpg"):
        _image(tmp_path / "val" / name)
    data = {
        "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 90, "bbox": [0, 0, 1, 1]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]},
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]},
        ],
        "categories": [
            {"id": 1, "name": "person"},
            {"id": 90, "name": "toothbrush"},
            {"id": 3, "name": "car"},
        ],
    }
    instances = tmp_path / "instances_val.json"
    instances.write_text(json.dumps(data))
    dataset = CocoMultilabelDataset(instances, tmp_path / "val", TRANSFORM)
    assert dataset.num_classes == 3
    assert dataset[0][1].tolist() == [1.0, 0.0, 1.0]  # person (id 1), toothbrush (id 90)
    assert dataset[1][1].tolist() == [0.0, 0.0, 0.0]
    (tmp_path / "val" / "b.jpg").write_bytes(b"broken")
    with pytest.raises(ValueError, match="b.jpg"):
        dataset[1]
