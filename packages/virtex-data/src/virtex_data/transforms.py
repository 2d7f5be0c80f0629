"""Image (+ caption) transforms, configured by dataclasses, built on torchvision.transforms.v2.

Training (:class:`TrainTransform`): random resized crop (VirTex: scale 0.2-1.0), horizontal flip
that also swaps the WORDS "left" and "right" in the caption (word boundaries: "bright" stays
"bright"), colour jitter, normalisation. Validation (:class:`EvalTransform`): resize the shorter
side, centre crop, normalise.

Decoding is part of the transform so it can pick the cheapest decode that covers the crop: the
crop box is sampled from the header's size first, then JPEGs are decoded with ``Image.draft`` at
the smallest 1/2^k scale at which the crop still has at least ``image_size`` pixels per side.
The result is the same crop at (nearly) the same quality, from far fewer pixels.

Both transforms apply the EXIF orientation (the crop is sampled in upright coordinates; images
from ``build-lmdb`` are stored upright already, files passed directly may not be) and refuse
images above the pixel limit (:class:`virtex_data.image_codec.ImageTooLarge`) from the header.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from virtex_data.image_codec import (
    apply_orientation,
    check_pixels,
    exif_orientation,
    open_image,
    to_rgb,
    upright_size,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ColorJitterConfig",
    "EvalTransform",
    "TrainTransform",
    "TransformConfig",
    "swap_left_right",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_LEFT_RIGHT = re.compile(r"\b(left|right)(most|ward|wards)?\b", re.IGNORECASE)


def swap_left_right(caption: str) -> str:
    """Swap the words "left" and "right" (and "-most", "-ward(s)" forms) in a caption.

    Only whole words change: ``"bright"`` and ``"leftover"`` stay as they are; the case of the
    first letter is kept.
    """

    def replace(match: re.Match[str]) -> str:
        word = match.group(1)
        other = "right" if word.lower() == "left" else "left"
        if word[0].isupper():
            other = other.capitalize()
        if word.isupper() and len(word) > 1:
            other = other.upper()
        return other + (match.group(2) or "")

    return _LEFT_RIGHT.sub(replace, caption)


@dataclass(kw_only=True)
class ColorJitterConfig:
    """``v2.ColorJitter`` factors, applied with probability ``p`` (VirTex: 0.4/0.4/0.4/0.1, 0.8)."""

    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    p: float = 0.8


@dataclass(kw_only=True)
class TransformConfig:
    """Image transforms of training and evaluation.

    Attributes:
        image_size: output side ``S`` (square crops).
        crop_scale: area fraction range of the random resized crop (VirTex: 0.2-1.0).
        crop_ratio: aspect ratio range of the crop.
        hflip: probability of the caption-aware horizontal flip.
        color_jitter: jitter settings, or ``None`` for none.
        mean, std: normalisation (ImageNet by default).
        eval_resize: shorter side before the centre crop (default ``round(S / 0.875)``).
        reduced_decode: allow JPEG reduced-size decoding when it still covers the crop.
    """

    image_size: int = 224
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    color_jitter: ColorJitterConfig | None = field(default_factory=ColorJitterConfig)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    eval_resize: int | None = None
    reduced_decode: bool = True

    def __post_init__(self) -> None:
        if self.image_size < 1:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        if not 0 <= self.hflip <= 1:
            raise ValueError(f"hflip must be a probability, got {self.hflip}")

    @property
    def resize_side(self) -> int:
        return self.eval_resize or round(self.image_size / 0.875)


def _to_tensor(image: Image.Image, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    tensor = F.to_dtype(F.to_image(image), torch.float32, scale=True)
    return F.normalize(tensor, list(mean), list(std))


def _lazy(image: bytes | Image.Image) -> tuple[Image.Image, int]:
    """The (lazily opened) image, checked against the pixel limit, and its EXIF orientation."""
    if isinstance(image, bytes):
        lazy = open_image(image)
    else:
        lazy = image
        check_pixels(lazy)
    return lazy, exif_orientation(lazy)


def _draft_for(image: Image.Image, needed_scale: float) -> None:
    """Reduced-size JPEG decoding at the smallest scale >= ``needed_scale`` (in place)."""
    if image.format != "JPEG" or needed_scale >= 1:
        return
    width, height = image.size
    image.draft("RGB", (math.ceil(width * needed_scale), math.ceil(height * needed_scale)))


class TrainTransform:
    """Random resized crop + caption-aware flip + colour jitter + normalise.

    Call with encoded image bytes (or a PIL image) and a caption; returns
    ``(image (3, S, S) float32, caption)`` with "left"/"right" swapped when flipped.
    Randomness comes from torch's global generator (seeded per DataLoader worker).
    """

    def __init__(self, config: TransformConfig) -> None:
        self.config = config
        jitter = config.color_jitter
        self._jitter = (
            v2.RandomApply(
                [v2.ColorJitter(jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)],
                p=jitter.p,
            )
            if jitter is not None
            else None
        )

    def crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """A random ``(top, left, h, w)`` box of the random resized crop for an image size."""
        area = width * height
        low, high = self.config.crop_scale
        log_ratio = (math.log(self.config.crop_ratio[0]), math.log(self.config.crop_ratio[1]))
        for _ in range(10):
            target = area * float(torch.empty(1).uniform_(low, high))
            ratio = math.exp(float(torch.empty(1).uniform_(*log_ratio)))
            w = round(math.sqrt(target * ratio))
            h = round(math.sqrt(target / ratio))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,)))
                left = int(torch.randint(0, width - w + 1, (1,)))
                return top, left, h, w
        # Fallback (as torchvision): the whole image, centre-cropped to the ratio range.
        ratio = width / height
        if ratio < self.config.crop_ratio[0]:
            w, h = width, round(width / self.config.crop_ratio[0])
        elif ratio > self.config.crop_ratio[1]:
            h, w = height, round(height * self.config.crop_ratio[1])
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, image: bytes | Image.Image, caption: str = "") -> tuple[Tensor, str]:
        size = self.config.image_size
        lazy, orientation = _lazy(image)
        full_w, full_h = upright_size(lazy.size, orientation)
        top, left, h, w = self.crop_box(full_w, full_h)
        if self.config.reduced_decode:
            _draft_for(lazy, size / min(h, w))  # the scale is the same along both axes
        decoded = to_rgb(apply_orientation(lazy, orientation))
        sx, sy = decoded.width / full_w, decoded.height / full_h
        box = (left * sx, top * sy, (left + w) * sx, (top + h) * sy)
        cropped = decoded.resize((size, size), Image.Resampling.BILINEAR, box=box)
        if self.config.hflip > 0 and float(torch.rand(1)) < self.config.hflip:
            cropped = cropped.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            caption = swap_left_right(caption)
        if self._jitter is not None:
            cropped = self._jitter(cropped)
        return _to_tensor(cropped, self.config.mean, self.config.std), caption


class EvalTransform:
    """Resize the shorter side to ``resize_side``, centre crop ``image_size``, normalise.

    Call with encoded bytes or a PIL image (and optionally a caption, returned unchanged).
    """

    def __init__(self, config: TransformConfig) -> None:
        self.config = config

    def image(self, image: bytes | Image.Image) -> Tensor:
        """``(3, S, S)`` float32 tensor of one image."""
        lazy, orientation = _lazy(image)
        side = self.config.resize_side
        if self.config.reduced_decode:
            _draft_for(lazy, side / min(lazy.size))
        decoded = to_rgb(apply_orientation(lazy, orientation))
        resized = F.resize(decoded, [side], interpolation=v2.InterpolationMode.BILINEAR)
        cropped = F.center_crop(resized, [self.config.image_size])
        return _to_tensor(cropped, self.config.mean, self.config.std)

    def __call__(self, image: bytes | Image.Image, caption: str = "") -> tuple[Tensor, str]:
        return self.image(image), caption
