"""``data.gpu_decode``: the CPU fallback, and the device-side decoding code run on the CPU.

No test here needs CUDA: ``EncodedCaptionBatch.to("cpu")`` runs the same crop / resize / flip /
normalise code as ``to("cuda")``, with torchvision's CPU JPEG decoder in place of nvJPEG.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from virtex_data import CaptionBatch, CaptionTokenizer, DataConfig, build_dataset, gpu_decode
from virtex_data.datasets import CaptioningDataset
from virtex_data.gpu_decode import EncodedCaptionBatch, EncodedImage, GpuDecodeCaptioningDataset
from virtex_data.transforms import IMAGENET_MEAN, IMAGENET_STD, TransformConfig

MEAN = torch.tensor(IMAGENET_MEAN)[:, None, None]
STD = torch.tensor(IMAGENET_STD)[:, None, None]


def config(synth_data: dict[str, Path], gpu: bool, jitter: bool = False) -> DataConfig:
    transform = TransformConfig(image_size=24, **({} if jitter else {"color_jitter": None}))
    return DataConfig(
        train_lmdb=str(synth_data["train"]),
        val_lmdb=str(synth_data["val"]),
        tokenizer=str(synth_data["tokenizer"]),
        transform=transform,
        gpu_decode=gpu,
    )


def first_items(dataset: CaptioningDataset, count: int = 6) -> list:
    torch.manual_seed(5)
    return [dataset[i] for i in range(count)]


def test_switch_without_cuda_warns_once_and_keeps_the_cpu_path(
    synth_data: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    tokenizer = CaptionTokenizer.from_file(synth_data["tokenizer"])
    with pytest.warns(UserWarning, match=r"^data\.gpu_decode: CUDA is not available; decoding"):
        dataset = build_dataset(config(synth_data, True), "train", "captioning", tokenizer)
    assert type(dataset) is CaptioningDataset
    plain = build_dataset(config(synth_data, False), "train", "captioning", tokenizer)
    for a, b in zip(first_items(dataset), first_items(plain), strict=True):
        assert torch.equal(a.image, b.image) and torch.equal(a.tokens, b.tokens)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # validation is never GPU-decoded: no warning
        build_dataset(config(synth_data, True), "val", "captioning", tokenizer)


def test_switch_refuses_targets_it_does_not_serve(synth_data: dict[str, Path]) -> None:
    tokenizer = CaptionTokenizer.from_file(synth_data["tokenizer"])
    with pytest.raises(ValueError, match=r"^data\.gpu_decode: supported for the captioning"):
        build_dataset(config(synth_data, True), "train", "masked_lm", tokenizer)


def test_device_path_draws_the_cpu_paths_augmentation(
    synth_data: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gpu_decode, "gpu_decode_available", lambda: None)
    tokenizer = CaptionTokenizer.from_file(synth_data["tokenizer"])
    encoded = build_dataset(config(synth_data, True), "train", "captioning", tokenizer)
    plain = build_dataset(config(synth_data, False), "train", "captioning", tokenizer)
    assert isinstance(encoded, GpuDecodeCaptioningDataset)
    samples, reference = first_items(encoded), first_items(plain)
    batch = encoded.collate(samples)
    assert isinstance(batch, EncodedCaptionBatch) and len(batch) == 6
    decoded = batch.pin_memory().to("cpu") if torch.cuda.is_available() else batch.to("cpu")
    assert isinstance(decoded, CaptionBatch)
    expected = plain.collate(reference)
    # Same random draws in the same order: same captions (flip swaps left/right words), ...
    assert torch.equal(decoded.tokens, expected.tokens)
    assert torch.equal(decoded.lengths, expected.lengths)
    assert decoded.images.shape == expected.images.shape == (6, 3, 24, 24)
    # ... same crops and flips; only the resampling filter differs (PIL vs torch bilinear):
    # mean difference well under one grey level per pixel in normalised units (1/255/0.225).
    difference = (decoded.images - expected.images).abs()
    assert difference.mean() < 2 / 255 / 0.225
    # A wrong flip or box would differ by far more than that: compare with mirrored crops.
    mirrored = (decoded.images.flip(-1) - expected.images).abs().mean()
    assert mirrored > 5 * difference.mean()


def _png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def test_lossless_image_at_output_size_is_normalised_and_flipped_exactly() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    data = torch.frombuffer(bytearray(_png(pixels)), dtype=torch.uint8)
    config = TransformConfig(image_size=8, color_jitter=None)
    batch = EncodedCaptionBatch(
        image_ids=torch.tensor([1, 2]),
        images=[EncodedImage(data, (0, 0, 8, 8), False), EncodedImage(data, (0, 0, 8, 8), True)],
        tokens=torch.tensor([[2, 3], [2, 3]]),
        lengths=torch.tensor([2, 2]),
        config=config,
    )
    out = batch.to("cpu", memory_format=torch.channels_last)
    # By hand: CHW, /255, minus mean, over std; the second one mirrored left-right.
    chw = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
    expected = (chw - MEAN) / STD
    torch.testing.assert_close(out.images[0], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.images[1], expected.flip(-1), rtol=1e-5, atol=1e-5)
    assert out.images.is_contiguous(memory_format=torch.channels_last)


def test_jpeg_crop_is_decoded_cropped_and_resized() -> None:
    # A smooth 640 x 480 gradient: JPEG keeps it within a few grey levels.
    y, x = np.mgrid[0:480, 0:640]
    pixels = np.stack([x * 255 // 639, y * 255 // 479, (x + y) * 255 // 1118], -1)
    out = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(out, format="JPEG", quality=95)
    data = torch.frombuffer(bytearray(out.getvalue()), dtype=torch.uint8)
    box = (100, 200, 160, 160)  # top, left, height, width
    batch = EncodedCaptionBatch(
        image_ids=torch.tensor([0]),
        images=[EncodedImage(data, box, False)],
        tokens=torch.tensor([[2, 3]]),
        lengths=torch.tensor([2]),
        config=TransformConfig(image_size=16, color_jitter=None),
    )
    image = batch.to("cpu").images[0] * STD + MEAN
    # Pixel (i, j) of the 16 px output covers source rows 100 + 10 i .. + 10 and columns
    # 200 + 10 j .. + 10: its value is the gradient at the centre of that block.
    centres_x = 200 + 10 * torch.arange(16) + 4.5
    centres_y = 100 + 10 * torch.arange(16) + 4.5
    red = (centres_x * 255 / 639 / 255)[None, :].expand(16, 16)
    green = (centres_y * 255 / 479 / 255)[:, None].expand(16, 16)
    torch.testing.assert_close(image[0], red, rtol=0, atol=3 / 255)
    torch.testing.assert_close(image[1], green, rtol=0, atol=3 / 255)


def test_decoded_images_must_be_bytes() -> None:
    transform = gpu_decode.GpuDecodeTransform(TransformConfig(image_size=8))
    with pytest.raises(TypeError, match="encoded image bytes"):
        transform(Image.new("RGB", (8, 8)), "a caption")
