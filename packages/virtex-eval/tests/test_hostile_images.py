"""Evaluation image readers under hostile input (issue 23): pixel bombs and named pipes are named
errors (skipped and listed by caption and report), EXIF-rotated photos are used upright."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import struct
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

import helpers_caption as h

from virtex_eval.cli.caption import caption_command
from virtex_eval.images import (
    ImageFileError,
    eval_transform,
    find_images,
    load_image,
    load_image_tensor,
)
from virtex_eval.report import write_report


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A ~100-byte PNG whose header claims ``width x height`` pixels (never allocated here)."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _chunk(b"IEND", b"")
    )


def stored_array() -> np.ndarray:
    """32 rows x 64 columns in four solid quadrants."""
    array = np.zeros((32, 64, 3), np.uint8)
    array[:16, :32], array[:16, 32:] = (230, 20, 20), (20, 200, 20)
    array[16:, :32], array[16:, 32:] = (20, 20, 230), (240, 240, 240)
    return array


def rotated_jpeg(path: Path) -> Path:
    """A JPEG with EXIF Orientation 6: viewers turn it 90 degrees clockwise."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored_array()).save(path, format="JPEG", quality=95, exif=exif)
    return path


def quadrant_means(array: np.ndarray) -> list[np.ndarray]:
    y, x = array.shape[0] // 2, array.shape[1] // 2
    parts = [array[:y, :x], array[:y, x:], array[y:, :x], array[y:, x:]]
    return [p.reshape(-1, 3).astype(float).mean(0) for p in parts]


def assert_upright(array: np.ndarray, slack: float = 30) -> None:
    # The EXIF definition of 6, as numpy: the stored rows turned clockwise.
    want = quadrant_means(np.rot90(stored_array(), k=-1))
    for got, expected in zip(quadrant_means(array), want, strict=True):
        assert np.abs(got - expected).max() < slack, (got, expected)


@pytest.fixture
def alarm() -> Iterator[None]:
    def fail(*_: object) -> None:
        raise TimeoutError("blocked for 30 s")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_load_image_and_tensor_apply_exif_orientation(tmp_path: Path) -> None:
    path = rotated_jpeg(tmp_path / "phone.jpg")
    image = load_image(path)
    assert image.size == (32, 64)  # portrait
    assert_upright(np.asarray(image))
    # Caption / zero-shot preprocessing: shorter side 16, centre crop 16 (rows 16..48 of 64).
    transform = eval_transform(16, 16)
    tensor = load_image_tensor(path, transform)
    mean = torch.tensor(transform.config.mean).view(3, 1, 1)
    std = torch.tensor(transform.config.std).view(3, 1, 1)
    assert_upright(((tensor * std + mean).permute(1, 2, 0).numpy() * 255).round())


def test_pixel_bomb_is_a_named_image_error(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png())
    for load in (lambda: load_image(path), lambda: load_image_tensor(path, eval_transform(16))):
        with pytest.raises(ImageFileError, match=r"bomb\.png: image too large") as caught:
            load()
        assert "\n" not in str(caught.value)
    path.write_bytes(bomb_png(12000, 12000))  # between Pillow's warning and its error
    with pytest.raises(ImageFileError, match="12000x12000 = 144,000,000 pixels"):
        load_image(path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_named_pipe_is_refused_without_blocking(tmp_path: Path, alarm: None) -> None:
    pipe = tmp_path / "pipe.jpg"
    os.mkfifo(pipe)
    with pytest.raises(ImageFileError, match=r"pipe\.jpg: cannot read file \(not a regular file"):
        load_image(pipe)
    with pytest.raises(ImageFileError, match=r"pipe\.jpg: not a regular file"):
        find_images([pipe])
    (tmp_path / "ok.png").write_bytes(b"")
    assert find_images([tmp_path]) == [tmp_path / "ok.png"]  # folders list regular files only


def test_caption_skips_a_bomb_and_refuses_a_single_one(tmp_path: Path) -> None:
    data, _ = h.trained()
    torch.save(data, tmp_path / "model.pt")
    folder = tmp_path / "photos"
    h.write_images(folder)
    (folder / "bomb.png").write_bytes(bomb_png())
    checkpoint = ["--checkpoint", str(tmp_path / "model.pt")]
    result = CliRunner().invoke(caption_command, [*checkpoint, str(folder)])
    assert result.exit_code == 0, result.output
    assert "skipped 1 of 4 image(s)" in result.output
    assert f"{folder / 'bomb.png'}: image too large" in result.output
    assert sum("\t" in line for line in result.output.splitlines()) == 3  # the other captions
    # One image named on the command line: a one-line error, no traceback.
    for extra in ([], ["--strict"]):
        result = CliRunner().invoke(
            caption_command, [*checkpoint, str(folder / "bomb.png"), *extra]
        )
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert "image too large" in result.output


def test_report_lists_a_bomb_and_shows_a_rotated_photo_upright(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    samples = [
        {"step": 10, "image_id": 1, "caption": "a phone photo", "references": []},
        {"step": 10, "image_id": 2, "caption": "a bomb", "references": []},
    ]
    (run / "samples.jsonl").write_text("\n".join(json.dumps(s) for s in samples) + "\n")
    images = tmp_path / "val"
    images.mkdir()
    rotated_jpeg(images / "000001.jpg")
    (images / "000002.png").write_bytes(bomb_png())
    text = write_report(run, images=images).read_text()
    assert "000002.png: image too large" in text
    sources = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', text)
    assert len(sources) == 1
    thumbnail = Image.open(io.BytesIO(base64.b64decode(sources[0]))).convert("RGB")
    assert thumbnail.size == (32, 64)
    assert_upright(np.asarray(thumbnail))
