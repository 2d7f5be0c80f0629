"""Hostile and broken inputs to the data pipeline (issue 23): pixel bombs, named pipes, truncated
LMDB files, caption files pointing outside the image folder, non-string captions, records without
captions, and EXIF-rotated photos. Each is skipped and listed, or refused with a named error."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch
from PIL import Image

from virtex_data.datasets import CaptioningDataset
from virtex_data.downstream import ImageFolderDataset
from virtex_data.image_codec import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageTooLarge,
    decode_rgb,
    open_image,
    prepare_image,
)
from virtex_data.lmdb_format import LmdbFormatError, decode_record
from virtex_data.lmdb_reader import LmdbReader, check_lmdb_file, read_manifest
from virtex_data.lmdb_writer import BuildError, build_lmdb
from virtex_data.sources import OutsideImageFolder, image_path, read_captions
from virtex_data.tokenizer import CaptionTokenizer
from virtex_data.transforms import EvalTransform, TrainTransform, TransformConfig


# ----------------------------------------------------------------------------- helpers
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` 1-bit pixels, with a few bytes of data.

    Written by hand (struct + zlib), so making it never allocates the pixels.
    """
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale
    data = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", data)
        + _chunk(b"IEND", b"")
    )


def _png(size: tuple[int, int] = (20, 10), colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


def _coco(root: Path, files: dict[str, bytes | None], captions: dict[str, list[object]]) -> Path:
    """A COCO captions file naming ``files`` (written to ``root/images`` unless None)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id, (name, data) in enumerate(files.items()):
        if data is not None:
            (root / "images" / name).write_bytes(data)
        images.append({"id": image_id, "file_name": name})
        for caption in captions.get(name, ["a red block"]):
            annotations.append({"image_id": image_id, "caption": caption, "id": len(annotations)})
    path = root / "captions.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path


@pytest.fixture
def alarm() -> Iterator[None]:
    """Fail (instead of hanging the suite) if the test blocks for 30 s."""

    def fail(*_: object) -> None:
        raise TimeoutError("blocked for 30 s")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# ----------------------------------------------------------------------------- pixel limit
def test_pixel_bombs_are_skipped_and_listed_by_build_lmdb(tmp_path: Path) -> None:
    files = {
        "bomb_30k.png": bomb_png(30000, 30000),  # Pillow itself refuses (> 2x its limit)
        "bomb_12k.png": bomb_png(12000, 12000),  # Pillow only warns (1x-2x): we refuse
        "good.png": _png(),
    }
    assert len(files["bomb_30k.png"]) < 200
    captions = _coco(tmp_path, files, {})
    manifest = build_lmdb(captions, tmp_path / "images", tmp_path / "out.lmdb", progress=False)
    assert manifest.count == 1
    reasons = {entry["file"]: entry["reason"] for entry in manifest.skipped}
    assert set(reasons) == {"bomb_30k.png", "bomb_12k.png"}
    assert (
        "12000x12000 = 144,000,000 pixels, above the limit of 89,478,485" in reasons["bomb_12k.png"]
    )
    assert reasons["bomb_30k.png"].startswith("image too large")
    with pytest.raises(BuildError, match="bomb_30k.png"):
        build_lmdb(captions, tmp_path / "images", tmp_path / "strict.lmdb", strict=True,
                   progress=False)  # fmt: skip


def test_pixel_limit_is_configurable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = {"small.png": _png((10, 10)), "bigger.png": _png((20, 10))}  # 100 and 200 pixels
    captions = _coco(tmp_path, files, {})
    manifest = build_lmdb(
        captions, tmp_path / "images", tmp_path / "a.lmdb", max_pixels=150, progress=False
    )
    assert manifest.count == 1 and manifest.skipped[0]["file"] == "bigger.png"
    monkeypatch.setenv("VIRTEX_MAX_IMAGE_PIXELS", "99")
    manifest = build_lmdb(captions, tmp_path / "images", tmp_path / "b.lmdb", progress=False)
    assert manifest.count == 0 and len(manifest.skipped) == 2
    with pytest.raises(ImageTooLarge, match="10x10 = 100 pixels, above the limit of 99"):
        open_image(_png((10, 10)))
    monkeypatch.setenv("VIRTEX_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ValueError, match="VIRTEX_MAX_IMAGE_PIXELS='lots' is not an integer"):
        open_image(_png((10, 10)))


def test_every_decoder_refuses_a_bomb_with_a_named_error() -> None:
    data = bomb_png(30000, 30000)
    config = TransformConfig(image_size=16, color_jitter=None)
    for decode in (
        lambda: decode_rgb(data),
        lambda: EvalTransform(config).image(data),
        lambda: TrainTransform(config)(data, "a caption"),
    ):
        with pytest.raises(ImageTooLarge, match="image too large"):
            decode()
    assert DEFAULT_MAX_IMAGE_PIXELS == 89_478_485  # Pillow's default, independently known


def test_training_names_the_record_of_an_oversized_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    captions = _coco(tmp_path, {"a.png": _png((20, 10))}, {})
    build_lmdb(captions, tmp_path / "images", tmp_path / "t.lmdb", progress=False)
    tokenizer = CaptionTokenizer.train(["a red block"] * 4, 40)
    dataset = CaptioningDataset(
        LmdbReader(tmp_path / "t.lmdb"), tokenizer, TrainTransform(TransformConfig(image_size=16))
    )
    monkeypatch.setenv("VIRTEX_MAX_IMAGE_PIXELS", "100")  # an LMDB built with a higher limit
    with pytest.raises(ValueError, match=r"t\.lmdb: record 0 \(image 0\): image too large"):
        dataset[0]


# ----------------------------------------------------------------------------- regular files
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_named_pipe_among_images_is_skipped_without_blocking(tmp_path: Path, alarm: None) -> None:
    captions = _coco(tmp_path, {"pipe.png": None, "good.png": _png()}, {})
    os.mkfifo(tmp_path / "images" / "pipe.png")
    manifest = build_lmdb(captions, tmp_path / "images", tmp_path / "out.lmdb", progress=False)
    assert manifest.count == 1
    assert manifest.skipped == [
        {
            "image_id": 0,
            "file": "pipe.png",
            "reason": "cannot read file: not a regular file (a named pipe, socket or device)",
        }
    ]
    with pytest.raises(LmdbFormatError, match="not a regular file"):
        check_lmdb_file(tmp_path / "images" / "pipe.png")


# ----------------------------------------------------------------------------- truncated LMDB
def _built(tmp_path: Path, count: int = 12) -> Path:
    rng = np.random.default_rng(0)
    # Incompressible images: the file spans many pages, the manifest (written last) near the end.
    files = {f"{i}.png": _png_noise(rng) for i in range(count)}
    captions = _coco(tmp_path, files, {})
    build_lmdb(captions, tmp_path / "images", tmp_path / "ok.lmdb", progress=False)
    return tmp_path / "ok.lmdb"


def _png_noise(rng: np.random.Generator) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(out, format="PNG")
    return out.getvalue()


def test_truncated_lmdb_is_named_before_it_is_mapped(tmp_path: Path) -> None:
    good = _built(tmp_path)
    check_lmdb_file(good)  # a complete file passes
    size = good.stat().st_size
    cut = tmp_path / "cut.lmdb"
    shutil.copyfile(good, cut)
    os.truncate(cut, size - 3 * 4096)
    with pytest.raises(LmdbFormatError, match=rf"cut\.lmdb: truncated: {size - 3 * 4096:,} bytes"):
        LmdbReader(cut)
    with pytest.raises(LmdbFormatError, match="truncated"):
        read_manifest(cut)
    os.truncate(cut, 100)
    with pytest.raises(LmdbFormatError, match=r"cut\.lmdb: not an LMDB file"):
        LmdbReader(cut)


def test_truncated_lmdb_inspect_exits_with_a_message_not_sigbus(tmp_path: Path) -> None:
    good = _built(tmp_path)
    cut = tmp_path / "cut.lmdb"
    shutil.copyfile(good, cut)
    os.truncate(cut, good.stat().st_size // 2)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        [sys.executable, "-m", "virtex_data", "inspect", str(cut), "--records", "100"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 1, (result.returncode, result.stderr)  # SIGBUS would be -7
    assert "cut.lmdb: truncated" in result.stderr and "Traceback" not in result.stderr


# ----------------------------------------------------------------------------- paths
@pytest.mark.parametrize(
    "name", ["../outside.png", "/etc/passwd", "a/../../outside.png", "..", "", "sub/../../x.png"]
)
def test_image_paths_outside_the_folder_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(OutsideImageFolder):
        image_path(tmp_path, name)


def test_image_paths_inside_the_folder_are_kept(tmp_path: Path) -> None:
    assert image_path(tmp_path, "a/b.png") == tmp_path / "a" / "b.png"
    assert image_path(tmp_path, "a/../b.png") == tmp_path / "b.png"
    assert image_path(tmp_path, "..b.png") == tmp_path / "..b.png"


def test_build_lmdb_does_not_embed_files_outside_images(tmp_path: Path) -> None:
    secret = _png((12, 12), (1, 2, 3))
    (tmp_path / "outside.png").write_bytes(secret)
    files = {"../outside.png": None, str(tmp_path / "outside.png"): None, "good.png": _png()}
    captions = _coco(tmp_path, files, {})
    manifest = build_lmdb(captions, tmp_path / "images", tmp_path / "out.lmdb", progress=False)
    assert manifest.count == 1
    skipped = {entry["file"]: entry["reason"] for entry in manifest.skipped}
    assert set(skipped) == {"../outside.png", str(tmp_path / "outside.png")}
    assert all("is not inside the image folder" in reason for reason in skipped.values())
    reader = LmdbReader(tmp_path / "out.lmdb")
    assert [reader[i].image for i in range(len(reader))] != [secret]
    assert reader[0].file_name == "good.png"


# ----------------------------------------------------------------------------- captions
def test_non_string_captions_are_dropped_and_counted_never_stored(tmp_path: Path) -> None:
    files = {"mixed.png": _png(), "nulls.png": _png(), "good.png": _png()}
    captions = _coco(
        tmp_path,
        files,
        {"mixed.png": [None, "a red block", 5, ["x"]], "nulls.png": [None, None]},
    )
    source = read_captions(captions)
    assert [(i.captions, i.invalid_captions) for i in source.images] == [
        (["a red block"], 3),
        ([], 2),
        (["a red block"], 0),
    ]
    manifest = build_lmdb(captions, tmp_path / "images", tmp_path / "out.lmdb", progress=False)
    assert manifest.count == 2
    assert manifest.skipped == [
        {"image_id": 1, "file": "nulls.png", "reason": "no captions that are strings"}
    ]
    dropped = [(d["image_id"], d["count"], d["reason"]) for d in manifest.dropped_captions]
    assert dropped == [(0, 3, "not a string"), (1, 2, "not a string")]
    reader = LmdbReader(tmp_path / "out.lmdb")
    assert [reader[i].captions for i in range(2)] == [["a red block"], ["a red block"]]
    with pytest.raises(BuildError, match="mixed.png.*not a string"):
        build_lmdb(captions, tmp_path / "images", tmp_path / "s.lmdb", strict=True,
                   progress=False)  # fmt: skip


def test_jsonl_null_caption_is_not_the_word_none(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(_png())
    lines = [{"image": "a.png", "caption": None}, {"image": "a.png", "caption": "a red block"}]
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines))
    manifest = build_lmdb(path, tmp_path / "images", tmp_path / "out.lmdb", progress=False)
    assert LmdbReader(tmp_path / "out.lmdb")[0].captions == ["a red block"]
    assert manifest.dropped_captions == [{"image_id": 0, "count": 1, "reason": "not a string"}]


def test_record_without_captions_is_a_named_error_not_index_error(tmp_path: Path) -> None:
    record = {"id": 7, "file": "x.png", "image": _png(), "format": "png", "width": 20,
              "height": 10, "captions": []}  # fmt: skip
    with pytest.raises(LmdbFormatError, match="no captions"):
        decode_record(msgpack.packb(record, use_bin_type=True))
    # In a file: the dataset raises the reader's error naming the file and the record.
    captions = _coco(tmp_path, {"a.png": _png()}, {})
    build_lmdb(captions, tmp_path / "images", tmp_path / "r.lmdb", progress=False)
    import lmdb

    env = lmdb.open(str(tmp_path / "r.lmdb"), subdir=False, lock=False)
    with env.begin(write=True) as txn:
        txn.put(b"%010d" % 0, msgpack.packb(record, use_bin_type=True))
    env.close()
    tokenizer = CaptionTokenizer.train(["a red block"] * 4, 40)
    dataset = CaptioningDataset(
        LmdbReader(tmp_path / "r.lmdb"), tokenizer, EvalTransform(TransformConfig(image_size=16))
    )
    with pytest.raises(LmdbFormatError, match=r"r\.lmdb: record 0: malformed record: no captions"):
        dataset[0]


# ----------------------------------------------------------------------------- EXIF orientation
#: Stored pixels: 32 rows x 64 columns, four solid quadrants.
QUADRANTS = {"tl": (230, 20, 20), "tr": (20, 200, 20), "bl": (20, 20, 230), "br": (240, 240, 240)}


def stored_array() -> np.ndarray:
    array = np.zeros((32, 64, 3), np.uint8)
    array[:16, :32], array[:16, 32:] = QUADRANTS["tl"], QUADRANTS["tr"]
    array[16:, :32], array[16:, 32:] = QUADRANTS["bl"], QUADRANTS["br"]
    return array


def rotated_jpeg(orientation: int = 6) -> bytes:
    """A JPEG whose EXIF says: turn me (6 = rotate 90 degrees clockwise to view)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    Image.fromarray(stored_array()).save(out, format="JPEG", quality=95, exif=exif)
    return out.getvalue()


def upright_array() -> np.ndarray:
    """What a viewer shows for Orientation=6: the stored pixels turned 90 degrees clockwise."""
    return np.rot90(stored_array(), k=-1)


def quadrant_means(array: np.ndarray) -> list[np.ndarray]:
    h, w = array.shape[0] // 2, array.shape[1] // 2
    parts = [array[:h, :w], array[:h, w:], array[h:, :w], array[h:, w:]]
    return [p.reshape(-1, 3).astype(float).mean(0) for p in parts]


def assert_upright(array: np.ndarray) -> None:
    """Same layout as :func:`upright_array` (JPEG and resampling: 25 levels of slack)."""
    for got, want in zip(quadrant_means(array), quadrant_means(upright_array()), strict=True):
        assert np.abs(got - want).max() < 25, (got, want)


def test_exif_orientation_is_applied_when_building_and_decoding(tmp_path: Path) -> None:
    assert upright_array().shape == (64, 32, 3)  # portrait once turned
    prepared = prepare_image(_write(tmp_path / "phone.jpg", rotated_jpeg()))
    assert (prepared.width, prepared.height, prepared.oriented) == (32, 64, True)
    stored = Image.open(io.BytesIO(prepared.data))
    assert stored.getexif().get(0x0112, 1) == 1  # nothing left to turn it twice
    assert_upright(np.asarray(stored.convert("RGB")))
    assert_upright(np.asarray(decode_rgb(rotated_jpeg())))
    # Via build-lmdb: stored upright and counted.
    captions = _coco(tmp_path / "b", {"phone.jpg": rotated_jpeg()}, {})
    manifest = build_lmdb(captions, tmp_path / "b" / "images", tmp_path / "o.lmdb", progress=False)
    record = LmdbReader(tmp_path / "o.lmdb")[0]
    assert manifest.oriented == 1 and (record.width, record.height) == (32, 64)
    assert_upright(np.asarray(decode_rgb(record.image)))


@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8])
def test_each_orientation_matches_the_exif_definition(orientation: int) -> None:
    # The EXIF definitions as numpy operations on the stored array (rows, columns).
    stored = stored_array()
    expected = {
        1: stored,
        2: stored[:, ::-1],
        3: stored[::-1, ::-1],
        4: stored[::-1, :],
        5: stored.transpose(1, 0, 2),
        6: np.rot90(stored, k=-1),
        7: np.rot90(stored, k=-1)[::-1, :],
        8: np.rot90(stored, k=1),
    }[orientation]
    got = np.asarray(decode_rgb(rotated_jpeg(orientation)))
    assert got.shape == expected.shape
    for a, b in zip(quadrant_means(got), quadrant_means(expected), strict=True):
        assert np.abs(a - b).max() < 25


def test_transforms_and_feature_datasets_see_the_photo_upright(tmp_path: Path) -> None:
    plain = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "color_jitter": None}
    # Train: whole-image crop of the upright aspect (1:2), no flip: a squashed upright image.
    train = TrainTransform(
        TransformConfig(
            image_size=16, crop_scale=(1.0, 1.0), crop_ratio=(0.5, 0.5), hflip=0.0, **plain
        )
    )
    torch.manual_seed(0)
    tensor, _ = train(rotated_jpeg(), "")
    assert_upright_tensor(tensor)
    # Eval: shorter side 16 then centre crop 16 keeps rows 16..48 of 64: all four quadrants.
    evaluated = EvalTransform(TransformConfig(image_size=16, eval_resize=16, **plain)).image(
        rotated_jpeg()
    )
    assert_upright_tensor(evaluated)
    # Linear-probe / VOC image folders (virtex-eval features).
    _write(tmp_path / "root" / "cls" / "phone.jpg", rotated_jpeg())
    folder = ImageFolderDataset(tmp_path / "root", lambda image: torch.from_numpy(
        np.asarray(image).copy()))  # fmt: skip
    assert_upright(folder[0][0].numpy())
    # ... and given to the evaluation transform (feature extraction), not turned a second time.
    probe = EvalTransform(TransformConfig(image_size=16, eval_resize=16, **plain))
    assert_upright_tensor(ImageFolderDataset(tmp_path / "root", probe.image)[0][0])
    assert_upright_tensor(probe.image(decode_rgb(rotated_jpeg())))


def assert_upright_tensor(tensor: torch.Tensor) -> None:
    array = (tensor.permute(1, 2, 0).numpy() * 255).round()
    for got, want in zip(quadrant_means(array), quadrant_means(upright_array()), strict=True):
        assert np.abs(got - want).max() < 30, (got, want)


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
