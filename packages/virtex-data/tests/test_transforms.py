"""Transforms: caption-aware flip, crops, reduced-size decoding."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from virtex_data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    TrainTransform,
    TransformConfig,
    swap_left_right,
)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("a dog on the left of a cat", "a dog on the right of a cat"),
        ("bright lights to the right", "bright lights to the left"),
        ("left, right and leftover copyright", "right, left and leftover copyright"),
        ("the leftmost cup. Left hand", "the rightmost cup. Right hand"),
        ("a left-handed man", "a right-handed man"),
    ],
)
def test_flip_swaps_whole_words_only(before: str, after: str) -> None:
    assert swap_left_right(before) == after
    assert swap_left_right(after) == before


def _halves(width: int = 64, height: int = 48, fmt: str = "PNG") -> bytes:
    array = np.zeros((height, width, 3), dtype=np.uint8)
    array[:, : width // 2] = (255, 0, 0)
    array[:, width // 2 :] = (0, 0, 255)
    out = io.BytesIO()
    Image.fromarray(array).save(out, format=fmt, quality=95)
    return out.getvalue()


def _unnormalise(image: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return image * std + mean


def _config(**changes: object) -> TransformConfig:
    base: dict[str, object] = {
        "image_size": 32,
        "crop_scale": (1.0, 1.0),
        "crop_ratio": (64 / 48, 64 / 48),
        "color_jitter": None,
    }
    base.update(changes)
    return TransformConfig(**base)  # type: ignore[arg-type]


def test_flip_mirrors_image_and_caption_together() -> None:
    caption = "a red half on the left"
    image, text = TrainTransform(_config(hflip=1.0))(_halves(), caption)
    pixels = _unnormalise(image)
    assert text == "a red half on the right"
    assert pixels[2, :, :8].mean() > 0.9 and pixels[0, :, :8].mean() < 0.1  # blue now left
    image, text = TrainTransform(_config(hflip=0.0))(_halves(), caption)
    assert text == caption
    assert _unnormalise(image)[0, :, :8].mean() > 0.9


def test_train_output_shape_and_normalisation() -> None:
    torch.manual_seed(0)
    transform = TrainTransform(TransformConfig(image_size=24))
    image, _ = transform(_halves(), "x")
    assert image.shape == (3, 24, 24) and image.dtype == torch.float32
    pixels = _unnormalise(image)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


def test_crop_boxes_respect_scale_and_ratio() -> None:
    torch.manual_seed(0)
    transform = TrainTransform(TransformConfig(crop_scale=(0.2, 1.0)))
    for _ in range(200):
        top, left, h, w = transform.crop_box(640, 480)
        assert top >= 0 and top + h <= 480 and left >= 0 and left + w <= 640
        assert 0.18 <= h * w / (640 * 480) <= 1.0
        assert 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02


def test_eval_resizes_shorter_side_and_centre_crops() -> None:
    config = TransformConfig(image_size=16, eval_resize=24)
    image = EvalTransform(config).image(_halves(64, 32))
    assert image.shape == (3, 16, 16)
    pixels = _unnormalise(image)
    assert pixels[0, :, :7].mean() > 0.9 and pixels[2, :, 9:].mean() > 0.9


def _photo_like(width: int, height: int) -> bytes:
    y, x = np.mgrid[0:height, 0:width]
    array = np.stack(
        [127 + 100 * np.sin(x / 37.0), 127 + 100 * np.cos(y / 23.0), (x + y) % 256], axis=-1
    ).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="JPEG", quality=90)
    return out.getvalue()


def test_reduced_decoding_is_used_and_matches_full_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = _photo_like(1024, 768)
    sizes: list[tuple[int, int]] = []
    original = Image.Image.resize

    def spy(self: Image.Image, *args: object, **kwargs: object) -> Image.Image:
        sizes.append(self.size)
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Image.Image, "resize", spy)
    outputs = []
    for reduced in (True, False):
        torch.manual_seed(1)
        config = _config(image_size=64, crop_ratio=(4 / 3, 4 / 3), reduced_decode=reduced)
        outputs.append(TrainTransform(config)(data, "")[0])
    assert sizes[0] == (128, 96)  # 1/8 scale still covers a 64 px crop of the whole image
    assert sizes[1] == (1024, 768)
    difference = (_unnormalise(outputs[0]) - _unnormalise(outputs[1])).abs().mean()
    assert difference < 0.03


def test_reduced_decoding_never_undershoots_the_crop(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _photo_like(640, 480)
    decoded: list[tuple[int, int]] = []
    original = Image.Image.resize

    def spy(
        self: Image.Image, size: tuple[int, int], *args: object, **kwargs: object
    ) -> Image.Image:
        box = kwargs.get("box")
        assert isinstance(box, tuple)
        decoded.append((round(box[2] - box[0]), round(box[3] - box[1])))
        return original(self, size, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Image.Image, "resize", spy)
    torch.manual_seed(2)
    transform = TrainTransform(TransformConfig(image_size=112, color_jitter=None))
    for _ in range(30):
        transform(data, "")
    assert min(min(wh) for wh in decoded) >= 111
