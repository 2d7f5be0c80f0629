"""Optional GPU JPEG decoding of training images (``data.gpu_decode: true``).

The usual path decodes and augments every image in the DataLoader workers on the CPU
(:class:`~virtex_data.transforms.TrainTransform`). With ``data.gpu_decode`` the workers only
read the JPEG header, draw the same random crop box and flip (same draws, same order), and
ship the *encoded* bytes; the batch's ``to(device)`` - called by the trainer - decodes all of
them in one ``torchvision.io.decode_jpeg(..., device="cuda")`` call (nvJPEG), then crops,
resizes (bilinear, antialiased), flips, colour-jitters and normalises on the device and returns
an ordinary :class:`~virtex_data.batch.CaptionBatch`.

What differs from the CPU path (so runs are not bit-comparable across the switch): no
reduced-size (DCT-scaled) decode, torch's antialiased bilinear resize instead of PIL's, the
colour jitter draws its factors in the main process; the EXIF orientation is not applied
(``virtex-data build-lmdb`` stores images upright, so LMDB files never need it). Images that are
not JPEG (a PNG in the LMDB) are decoded on the CPU by ``torchvision.io.decode_image`` and moved.

Only the captioning targets (``captioning``, ``bicaptioning``) of the training split use it;
validation keeps the CPU path. Without CUDA, :func:`virtex_data.build_dataset` warns once and
uses the CPU path (see :func:`gpu_decode_available`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision import io
from torchvision.transforms import v2

from virtex_data.batch import CaptionBatch
from virtex_data.datasets import CaptioningDataset, Sample, pad_tokens
from virtex_data.image_codec import open_image
from virtex_data.lmdb_reader import LmdbReader
from virtex_data.tokenizer import CaptionTokenizer
from virtex_data.transforms import TrainTransform, TransformConfig, swap_left_right

__all__ = [
    "EncodedCaptionBatch",
    "EncodedImage",
    "GpuDecodeCaptioningDataset",
    "GpuDecodeTransform",
    "gpu_decode_available",
]

_JPEG_MAGIC = b"\xff\xd8\xff"


def gpu_decode_available() -> str | None:
    """Why GPU decoding cannot be used here (``None``: it can)."""
    if not torch.cuda.is_available():
        return "CUDA is not available"
    return None


@dataclass
class EncodedImage:
    """An image still encoded, with the augmentation drawn for it.

    Attributes:
        data: ``(n,)`` uint8, the file's bytes.
        box: ``(top, left, height, width)`` crop box in stored-pixel coordinates.
        flip: mirror the crop horizontally.
    """

    data: Tensor
    box: tuple[int, int, int, int]
    flip: bool


class GpuDecodeTransform:
    """The worker side: header, crop box and flip; the pixels stay encoded.

    Draws exactly what :class:`TrainTransform` draws before decoding (crop box, then flip), so
    the sampled augmentation of a seeded run is the same on both paths.
    """

    def __init__(self, config: TransformConfig) -> None:
        self.config = config
        self._crop = TrainTransform(dataclasses.replace(config, color_jitter=None))

    def __call__(self, image: bytes | Image.Image, caption: str = "") -> tuple[Any, str]:
        if not isinstance(image, bytes):
            raise TypeError("data.gpu_decode needs encoded image bytes, not a decoded image")
        lazy = open_image(image)  # header only; refuses images above the pixel limit
        width, height = lazy.size  # stored orientation: that is what the decoder returns
        box = self._crop.crop_box(width, height)
        flip = self.config.hflip > 0 and float(torch.rand(1)) < self.config.hflip
        if flip:
            caption = swap_left_right(caption)
        data = torch.frombuffer(bytearray(image), dtype=torch.uint8)
        return EncodedImage(data, box, flip), caption


@dataclass
class EncodedCaptionBatch:
    """A captioning batch whose images are decoded by :meth:`to` on the target device.

    Attributes:
        image_ids: ``(B,)`` int64.
        images: the encoded images with their crop boxes and flips.
        tokens: ``(B, L)`` int64, right-padded.
        lengths: ``(B,)`` int64.
        config: the transform settings (output size, jitter, normalisation).
    """

    image_ids: Tensor
    images: list[EncodedImage]
    tokens: Tensor
    lengths: Tensor
    config: TransformConfig

    def __len__(self) -> int:
        return len(self.images)

    def pin_memory(self) -> Self:
        """Pinned token tensors and bytes (``DataLoader(pin_memory=True)``)."""
        images = [dataclasses.replace(i, data=i.data.pin_memory()) for i in self.images]
        return dataclasses.replace(
            self,
            image_ids=self.image_ids.pin_memory(),
            images=images,
            tokens=self.tokens.pin_memory(),
            lengths=self.lengths.pin_memory(),
        )

    def to(
        self,
        device: torch.device | str,
        non_blocking: bool = False,
        memory_format: torch.memory_format | None = None,
    ) -> CaptionBatch:
        """Decode, augment and normalise on ``device``: a :class:`CaptionBatch` of
        ``(B, 3, S, S)`` float32 images there."""
        device = torch.device(device)
        decoded = _decode(self.images, device)
        size = self.config.image_size
        jitter = self.config.color_jitter
        jitter_op = (
            v2.RandomApply(
                [v2.ColorJitter(jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)],
                p=jitter.p,
            )
            if jitter is not None
            else None
        )
        crops = []
        for pixels, item in zip(decoded, self.images, strict=True):
            top, left, h, w = item.box
            crop = pixels[:, top : top + h, left : left + w].float().div_(255)
            crop = F.interpolate(
                crop[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )[0].clamp_(0, 1)
            if item.flip:
                crop = crop.flip(-1)
            if jitter_op is not None:
                crop = jitter_op(crop)
            crops.append(crop)
        mean = torch.tensor(self.config.mean, device=device)[:, None, None]
        std = torch.tensor(self.config.std, device=device)[:, None, None]
        images = (torch.stack(crops) - mean) / std
        if memory_format is not None:
            images = images.contiguous(memory_format=memory_format)
        return CaptionBatch(
            image_ids=self.image_ids.to(device, non_blocking=non_blocking),
            images=images,
            tokens=self.tokens.to(device, non_blocking=non_blocking),
            lengths=self.lengths.to(device, non_blocking=non_blocking),
        )


def _decode(images: Sequence[EncodedImage], device: torch.device) -> list[Tensor]:
    """``(3, H, W)`` uint8 RGB per image on ``device``: JPEGs in one batched call."""
    out: list[Tensor | None] = [None] * len(images)
    jpegs = [i for i, item in enumerate(images) if bytes(item.data[:3].tolist()) == _JPEG_MAGIC]
    if jpegs:
        target = "cuda" if device.type == "cuda" else "cpu"
        decoded = io.decode_jpeg(
            [images[i].data for i in jpegs], mode=io.ImageReadMode.RGB, device=target
        )
        for i, pixels in zip(jpegs, decoded, strict=True):
            out[i] = pixels.to(device)
    for i, item in enumerate(images):
        if out[i] is None:  # PNG and other formats: CPU decode
            out[i] = io.decode_image(item.data, mode=io.ImageReadMode.RGB).to(device)
    return [pixels for pixels in out if pixels is not None]


class GpuDecodeCaptioningDataset(CaptioningDataset):
    """:class:`CaptioningDataset` whose items keep the image encoded (see the module docstring).

    Build it through :func:`virtex_data.build_dataset` with ``data.gpu_decode: true``.
    """

    def __init__(
        self,
        reader: LmdbReader,
        tokenizer: CaptionTokenizer,
        *,
        transform_config: TransformConfig,
        max_caption_length: int = 30,
        random_caption: bool = True,
    ) -> None:
        super().__init__(
            reader,
            tokenizer,
            GpuDecodeTransform(transform_config),
            max_caption_length,
            random_caption,
        )
        self.transform_config = transform_config

    def collate(self, samples: Sequence[Sample]) -> EncodedCaptionBatch:  # type: ignore[override]
        tokens, lengths = pad_tokens([s.tokens for s in samples], self.special.pad)
        images: list[EncodedImage] = [s.image for s in samples]  # type: ignore[misc]
        return EncodedCaptionBatch(
            image_ids=torch.tensor([s.image_id for s in samples], dtype=torch.long),
            images=images,
            tokens=tokens,
            lengths=lengths,
            config=self.transform_config,
        )
