"""LMDB writing and reading: format, atomicity, manifest, and every bad input of the issue."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import lmdb
import msgpack
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from virtex_data.cli import main
from virtex_data.image_codec import decode_rgb, prepare_image
from virtex_data.lmdb_format import MANIFEST_KEY, record_key
from virtex_data.lmdb_reader import LmdbFormatError, LmdbReader, read_manifest
from virtex_data.lmdb_writer import BuildError, build_lmdb

RED = (220, 20, 20)


def _jpeg(
    size: tuple[int, int] = (40, 30), colour: tuple[int, ...] = RED, mode: str = "RGB"
) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, colour).save(out, format="JPEG", quality=95)
    return out.getvalue()


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def make_bad_coco(root: Path) -> tuple[Path, Path]:
    """A COCO captions fixture with one image per bad-input case of the issue."""
    images = root / "images"
    images.mkdir(parents=True)
    gradient = np.linspace(0, 65535, 16 * 8, dtype=np.uint16).reshape(8, 16)
    files: dict[str, bytes | None] = {
        "good.jpg": _jpeg(),
        "cmyk.jpg": _jpeg(colour=(0, 255, 255, 0), mode="CMYK"),
        "gray.png": _png(Image.new("L", (16, 8), 77)),
        "rgba.png": _png(Image.new("RGBA", (16, 8), (255, 0, 0, 0))),
        "png16.png": _png(Image.fromarray(gradient)),
        "corrupt.jpg": b"\xff\xd8\xff\xe0 this is not a jpeg at all" * 4,
        "truncated.jpg": _jpeg((64, 64))[:300],
        "missing.jpg": None,
        "nocaps.jpg": _jpeg(),
        "emptycaps.jpg": _jpeg(),
        "onecap.jpg": _jpeg(),
    }
    for name, data in files.items():
        if data is not None:
            (images / name).write_bytes(data)
    entries = [{"id": k + 1, "file_name": name} for k, name in enumerate(files)]
    ids = {e["file_name"]: e["id"] for e in entries}
    long_caption = " ".join(["word"] * 80)
    annotations = []
    for name in files:
        if name == "nocaps.jpg":
            continue
        captions = ["A red Picture.", "  another   one "]
        if name == "emptycaps.jpg":
            captions = ["", "   \t"]
        if name == "onecap.jpg":
            captions = ["", long_caption]
        annotations += [{"image_id": ids[name], "caption": c} for c in captions]
    annotations.append({"image_id": 999, "caption": "an orphan caption"})
    captions_file = root / "captions.json"
    captions_file.write_text(json.dumps({"images": entries, "annotations": annotations}))
    return captions_file, images


@pytest.fixture(scope="module")
def bad_lmdb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad")
    captions, images = make_bad_coco(root)
    build_lmdb(captions, images, root / "out.lmdb", workers=2, progress=False)
    return root / "out.lmdb"


def _by_file(reader: LmdbReader) -> dict[str, int]:
    return {reader[i].file_name: i for i in range(len(reader))}


def test_bad_inputs_are_skipped_and_listed_by_id_and_reason(bad_lmdb: Path) -> None:
    manifest = read_manifest(bad_lmdb)
    reasons = {entry["file"]: entry["reason"] for entry in manifest.skipped}
    assert set(reasons) == {
        "corrupt.jpg",
        "truncated.jpg",
        "missing.jpg",
        "nocaps.jpg",
        "emptycaps.jpg",
    }
    assert "missing" in reasons["missing.jpg"]
    assert "no captions" in reasons["nocaps.jpg"]
    assert "empty" in reasons["emptycaps.jpg"]
    assert "corrupt" in reasons["corrupt.jpg"] or "not a recognised" in reasons["corrupt.jpg"]
    assert "truncated" in reasons["truncated.jpg"] or "corrupt" in reasons["truncated.jpg"]
    assert manifest.unknown_image_ids == [999]
    assert manifest.count == 6
    assert {"CMYK", "L", "RGBA"} <= set(manifest.converted)
    assert {d["image_id"] for d in manifest.dropped_captions} == {10, 11}  # empty ones


def test_convertible_images_are_stored_as_rgb(bad_lmdb: Path) -> None:
    reader = LmdbReader(bad_lmdb)
    index = _by_file(reader)
    for name in ("good.jpg", "cmyk.jpg", "gray.png", "rgba.png", "png16.png"):
        record = reader[index[name]]
        image = Image.open(io.BytesIO(record.image))
        assert image.mode == "RGB", name
        assert (record.width, record.height) == image.size
    cmyk = np.asarray(decode_rgb(reader[index["cmyk.jpg"]].image)).reshape(-1, 3).mean(0)
    assert cmyk[0] > 200 and cmyk[1] < 60 and cmyk[2] < 60  # red stays red
    gray = np.asarray(decode_rgb(reader[index["gray.png"]].image))
    assert (gray == 77).all()
    rgba = np.asarray(decode_rgb(reader[index["rgba.png"]].image))
    assert (rgba == 255).all()  # fully transparent pixels composite to white
    png16 = np.asarray(decode_rgb(reader[index["png16.png"]].image))[..., 0]
    expected = np.rint(np.linspace(0, 65535, 128).reshape(8, 16) / 257).astype(np.uint8)
    assert np.abs(png16.astype(int) - expected).max() <= 1


def test_records_hold_normalised_non_empty_captions(bad_lmdb: Path) -> None:
    reader = LmdbReader(bad_lmdb)
    index = _by_file(reader)
    assert reader[index["good.jpg"]].captions == ["a red picture.", "another one"]
    long = reader[index["onecap.jpg"]].captions
    assert long == [" ".join(["word"] * 80)]  # long captions are kept; datasets truncate
    assert reader.image_ids == [reader[i].image_id for i in range(len(reader))]


def test_rgb_jpeg_bytes_are_stored_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(_jpeg())
    assert prepare_image(path).data == path.read_bytes()


def test_max_side_caps_the_longer_side(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(_png(Image.new("RGB", (200, 100), RED)))
    prepared = prepare_image(path, max_side=50)
    assert (prepared.width, prepared.height) == (50, 25)
    assert prepared.resized and prepared.format == "jpeg"
    assert Image.open(io.BytesIO(prepared.data)).size == (50, 25)


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        ("corrupt.jpg", "corrupt"),
        ("missing.jpg", "missing image file"),
        ("nocaps.jpg", "no captions"),
        ("emptycaps.jpg", "empty"),
    ],
)
def test_strict_fails_on_the_first_bad_input_naming_it(
    tmp_path: Path, drop: str, message: str
) -> None:
    captions, images = make_bad_coco(tmp_path)
    data = json.loads(captions.read_text())
    keep = {"good.jpg", drop}
    data["images"] = [e for e in data["images"] if e["file_name"] in keep]
    ids = {e["id"] for e in data["images"]}
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
    captions.write_text(json.dumps(data))
    with pytest.raises(BuildError, match=message) as info:
        build_lmdb(captions, images, tmp_path / "s.lmdb", strict=True, progress=False)
    assert drop in str(info.value)
    assert not (tmp_path / "s.lmdb").exists()
    assert not (tmp_path / "s.lmdb.partial").exists()


def test_strict_rejects_unknown_image_ids(tmp_path: Path) -> None:
    captions, images = make_bad_coco(tmp_path)
    with pytest.raises(BuildError, match="unknown image ids"):
        build_lmdb(captions, images, tmp_path / "s.lmdb", strict=True, progress=False)


def test_reader_is_lazy_and_pickles_without_environment(bad_lmdb: Path) -> None:
    reader = LmdbReader(bad_lmdb)
    assert reader._env is None
    first = reader[0]
    assert reader._env is not None
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._env is None
    assert clone[0] == first
    with pytest.raises(IndexError, match="out of range"):
        reader[len(reader)]


def test_record_format_is_msgpack_not_pickle(bad_lmdb: Path) -> None:
    reader = LmdbReader(bad_lmdb)
    with reader._environment().begin() as txn:  # the process's shared read-only handle
        value = msgpack.unpackb(txn.get(record_key(0)), raw=False)
        manifest = msgpack.unpackb(txn.get(MANIFEST_KEY), raw=False)
    assert set(value) == {"id", "file", "image", "format", "width", "height", "captions"}
    assert manifest["format"] == "virtex-lmdb" and manifest["format_version"] == 1


def _rewrite_manifest(path: Path, **changes: object) -> None:
    env = lmdb.open(str(path), subdir=False, lock=False)
    with env.begin(write=True) as txn:
        manifest = msgpack.unpackb(txn.get(MANIFEST_KEY), raw=False)
        manifest.update(changes)
        txn.put(MANIFEST_KEY, msgpack.packb(manifest, use_bin_type=True))
    env.close()


@pytest.fixture()
def good_copy(bad_lmdb: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy.lmdb"
    copy.write_bytes(bad_lmdb.read_bytes())
    return copy


def test_other_format_version_is_rejected_naming_the_file(good_copy: Path) -> None:
    _rewrite_manifest(good_copy, format_version=99)
    with pytest.raises(LmdbFormatError, match=r"copy.lmdb: format version 99"):
        LmdbReader(good_copy)


def test_other_normalisation_version_is_rejected(good_copy: Path) -> None:
    _rewrite_manifest(good_copy, normalization_version=0)
    with pytest.raises(LmdbFormatError, match="normalised with version 0"):
        LmdbReader(good_copy)


def test_file_still_being_written_is_rejected(tmp_path: Path) -> None:
    partial = tmp_path / "x.lmdb.partial"
    env = lmdb.open(str(partial), subdir=False)
    with env.begin(write=True) as txn:
        txn.put(record_key(0), b"\x80")
    env.close()
    with pytest.raises(LmdbFormatError, match="still being written"):
        LmdbReader(tmp_path / "x.lmdb")
    with pytest.raises(LmdbFormatError, match="no manifest record"):
        LmdbReader(partial)


def test_corrupt_record_error_names_file_and_record(good_copy: Path) -> None:
    env = lmdb.open(str(good_copy), subdir=False, lock=False)
    with env.begin(write=True) as txn:
        txn.put(record_key(2), msgpack.packb({"id": 1}))
    env.close()
    with pytest.raises(LmdbFormatError, match=r"copy.lmdb: record 2: malformed"):
        LmdbReader(good_copy)[2]


def test_existing_output_is_not_overwritten_by_default(bad_lmdb: Path, tmp_path: Path) -> None:
    captions, images = make_bad_coco(tmp_path)
    with pytest.raises(FileExistsError, match="overwrite"):
        build_lmdb(captions, images, bad_lmdb, progress=False)


def test_cli_build_lmdb_and_inspect(tmp_path: Path) -> None:
    captions, images = make_bad_coco(tmp_path)
    out = tmp_path / "cli.lmdb"
    runner = CliRunner()
    result = runner.invoke(
        main,
        [
            "build-lmdb",
            "--captions",
            str(captions),
            "--images",
            str(images),
            "--output",
            str(out),
            "--workers",
            "1",
            "--max-side",
            "32",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "wrote 6 records" in result.output
    assert "missing.jpg" in result.output
    assert not (tmp_path / "cli.lmdb-lock").exists()
    result = runner.invoke(main, ["inspect", str(out), "--records", "2"])
    assert result.exit_code == 0, result.output
    assert "format_version: 1" in result.output
    assert "a red picture." in result.output
    strict = runner.invoke(
        main,
        [
            "build-lmdb",
            "--captions",
            str(captions),
            "--images",
            str(images),
            "--output",
            str(tmp_path / "strict.lmdb"),
            "--strict",
        ],
    )
    assert strict.exit_code != 0
    assert "unknown image ids" in strict.output


def test_reader_uses_its_readahead_setting(bad_lmdb: Path, tmp_path: Path) -> None:
    copy = tmp_path / "ra.lmdb"
    copy.write_bytes(bad_lmdb.read_bytes())
    reader = LmdbReader(copy, readahead=True)
    reader[0]
    assert reader._environment().flags()["readahead"] is True
    reader.close()
    other = LmdbReader(copy, readahead=False)
    other[0]
    assert other._environment().flags()["readahead"] is False


def test_inspect_reports_a_file_still_being_written(tmp_path: Path) -> None:
    env = lmdb.open(str(tmp_path / "x.lmdb.partial"), subdir=False)
    env.close()
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "x.lmdb")])
    assert result.exit_code != 0
    assert "still being written" in result.output


def test_jsonl_and_csv_sources_group_captions_per_image(tmp_path: Path) -> None:
    images = tmp_path / "img"
    images.mkdir()
    for name in ("a.jpg", "b.jpg"):
        (images / name).write_bytes(_jpeg())
    rows = [("a.jpg", "A cat"), ("b.jpg", "a dog"), ("a.jpg", 'a "quoted", cat')]
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("".join(json.dumps({"image": i, "caption": c}) + "\n" for i, c in rows))
    table = tmp_path / "pairs.csv"
    table.write_text(
        "image_id,image,caption\n"
        + "".join(
            f'{7 if i == "a.jpg" else 9},{i},"{c.replace(chr(34), chr(34) * 2)}"\n' for i, c in rows
        )
    )
    for source, ids in ((jsonl, [0, 1]), (table, [7, 9])):
        out = tmp_path / f"{source.suffix[1:]}.lmdb"
        build_lmdb(source, images, out, progress=False)
        reader = LmdbReader(out)
        assert reader.image_ids == ids
        assert reader[0].captions == ["a cat", 'a "quoted", cat']
        assert reader[1].captions == ["a dog"]
