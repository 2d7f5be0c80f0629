"""WebDataset shards: build-shards, expansion, per-rank/per-worker split, resume, bad samples.

Expected values come from the caption file (every image id, normalised captions) and from the
tar files read with the standard library's ``tarfile`` (which shard holds which image), never
from ``virtex_data.shards`` itself.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import socket
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from torch.utils.data import DataLoader

from virtex_data.batch import CaptionBatch, MaskedLMBatch
from virtex_data.cli import main
from virtex_data.config import DataConfig
from virtex_data.normalize import normalize_caption
from virtex_data.shard_writer import build_shards
from virtex_data.shards import ShardLoader, build_shard_dataset, expand_shards
from virtex_data.tokenizer import CaptionTokenizer
from virtex_data.transforms import TrainTransform, TransformConfig

RANK_SCRIPT = Path(__file__).parent / "_shard_rank.py"
SHARD_SIZE = 8  # 40 training images: 5 shards


@pytest.fixture(scope="module")
def shard_dir(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "train"
    build_shards(
        synth_root / "annotations" / "captions_train.json",
        synth_root / "train",
        out,
        shard_size=SHARD_SIZE,
        progress=False,
    )
    return out


@pytest.fixture(scope="module")
def tokenizer(synth_data: dict[str, Path]) -> CaptionTokenizer:
    return CaptionTokenizer.from_file(synth_data["tokenizer"])


def _coco(synth_root: Path) -> dict:
    return json.loads((synth_root / "annotations" / "captions_train.json").read_text())


def _all_ids(synth_root: Path) -> list[int]:
    return sorted(int(image["id"]) for image in _coco(synth_root)["images"])


def _shard_of(shard_dir: Path) -> dict[int, str]:
    """image id -> shard file, read with the standard library's tarfile."""
    where: dict[int, str] = {}
    for path in sorted(shard_dir.glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(member).read())  # type: ignore[union-attr]
                    where[int(meta["image_id"])] = str(path)
    return where


def _dataset(spec: str, tokenizer: CaptionTokenizer, **kwargs):
    return build_shard_dataset(
        spec,
        kwargs.pop("target", "captioning"),
        tokenizer,
        TrainTransform(TransformConfig(image_size=16)),
        max_caption_length=12,
        rank=kwargs.pop("rank", 0),
        world_size=kwargs.pop("world_size", 1),
        **kwargs,
    )


def _ids(dataset, workers: int = 0, batch_size: int = 3, stop_after: int | None = None):
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=dataset.collate,
        drop_last=False,
    )
    ids: list[int] = []
    # islice stops without pulling one more batch: the trainer trains on every batch it pulls.
    for batch in itertools.islice(ShardLoader(loader, dataset.progress), stop_after):
        ids.extend(batch.image_ids.tolist())
    return ids


PATTERN = "{00000..00004}.tar"


def test_build_shards_writes_every_image_with_its_normalised_captions(
    shard_dir: Path, synth_root: Path
) -> None:
    coco = _coco(synth_root)
    expected: dict[int, list[str]] = {int(i["id"]): [] for i in coco["images"]}
    for annotation in coco["annotations"]:
        expected[int(annotation["image_id"])].append(normalize_caption(annotation["caption"]))
    assert sorted(p.name for p in shard_dir.glob("*.tar")) == [f"{i:05d}.tar" for i in range(5)]
    seen: dict[int, list[str]] = {}
    for path in sorted(shard_dir.glob("*.tar")):
        with tarfile.open(path) as tar:
            names = tar.getnames()
            keys = {n.split(".", 1)[0] for n in names}
            assert len(keys) == SHARD_SIZE
            for key in keys:
                assert {f"{key}.png", f"{key}.txt", f"{key}.json"} <= set(names)
                meta = json.loads(tar.extractfile(f"{key}.json").read())  # type: ignore[union-attr]
                text = tar.extractfile(f"{key}.txt").read().decode()  # type: ignore[union-attr]
                assert text == meta["captions"][0]
                seen[int(meta["image_id"])] = meta["captions"]
    assert seen == expected
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    assert manifest["count"] == 40 and manifest["counts"] == [8] * 5


def test_expand_shards(tmp_path: Path) -> None:
    assert expand_shards("d/{00008..00011}.tar") == [f"d/{i:05d}.tar" for i in range(8, 12)]
    assert expand_shards("a/{0..1}.tar::b/x.tar") == ["a/0.tar", "a/1.tar", "b/x.tar"]
    for name in ("b.tar", "a.tar", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert expand_shards(str(tmp_path)) == [str(tmp_path / "a.tar"), str(tmp_path / "b.tar")]
    with pytest.raises(ValueError, match="local or mounted"):
        expand_shards("https://host/{0..3}.tar")
    with pytest.raises(ValueError, match="empty"):
        expand_shards(" ")


def test_one_epoch_serves_every_image_once_with_two_workers(
    shard_dir: Path, synth_root: Path, tokenizer: CaptionTokenizer
) -> None:
    dataset = _dataset(str(shard_dir / PATTERN), tokenizer, shuffle_buffer=5)
    ids = _ids(dataset, workers=2)
    assert sorted(ids) == _all_ids(synth_root)  # no repeat, nothing missing
    # Every shard was finished and reported, by whichever worker read it.
    assert dataset.progress.completed == set(range(5)) and dataset.progress.in_flight() == {}


def test_shuffle_is_seeded_and_changes_with_the_epoch(
    shard_dir: Path, tokenizer: CaptionTokenizer
) -> None:
    spec = str(shard_dir / PATTERN)
    first = _ids(_dataset(spec, tokenizer, shuffle_buffer=6, seed=1))
    assert _ids(_dataset(spec, tokenizer, shuffle_buffer=6, seed=1)) == first
    other = _dataset(spec, tokenizer, shuffle_buffer=6, seed=1)
    other.progress.set_epoch(1)
    second = _ids(other)
    assert sorted(second) == sorted(first) and second != first


def test_batches_are_the_lmdb_targets_batches(shard_dir: Path, tokenizer: CaptionTokenizer) -> None:
    spec = str(shard_dir / PATTERN)
    plain = _dataset(spec, tokenizer)
    loader = DataLoader(plain, batch_size=4, collate_fn=plain.collate)
    batch = next(iter(ShardLoader(loader, plain.progress)))
    assert type(batch) is CaptionBatch and batch.images.shape == (4, 3, 16, 16)
    assert (batch.tokens[:, 0] == tokenizer.special.sos).all()
    masked = _dataset(spec, tokenizer, target="masked_lm")
    mlm = masked.collate([next(iter(masked)) for _ in range(2)]).batch
    assert isinstance(mlm, MaskedLMBatch)
    with pytest.raises(ValueError, match="multilabel"):
        _dataset(spec, tokenizer, target="multilabel")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.timeout(300)
def test_two_gloo_ranks_see_disjoint_halves_of_the_epoch(
    shard_dir: Path, synth_root: Path, synth_data: dict[str, Path], tmp_path: Path
) -> None:
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(sys.path),
            "OMP_NUM_THREADS": "1",
            "RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        # Rank 1 reads through 2 DataLoader workers: ranks and workers split together.
        workers = str(2 * rank)
        args = [str(shard_dir / PATTERN), str(synth_data["tokenizer"]), str(tmp_path), workers]
        procs.append(
            subprocess.Popen(
                [sys.executable, str(RANK_SCRIPT), *args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    for proc in procs:
        output, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, output
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    ids = [set(r["ids"]) for r in results]
    assert all(len(r["ids"]) == len(set(r["ids"])) for r in results)
    assert not ids[0] & ids[1]
    assert sorted(ids[0] | ids[1]) == _all_ids(synth_root)
    # Each rank read whole shards: the shards of its images are disjoint from the other's.
    where = _shard_of(shard_dir)
    shards = [{where[i] for i in rank_ids} for rank_ids in ids]
    assert not shards[0] & shards[1] and len(shards[0]) + len(shards[1]) == 5
    # The gathered state (rank 0 writes checkpoints) holds both ranks' completed shards.
    state = results[0]["state"]
    assert state == results[1]["state"] and len(state["ranks"]) == 2
    completed = [{int(s) for s in r["completed"]} for r in state["ranks"]]
    assert sorted(completed[0] | completed[1]) == list(range(5))


@pytest.mark.parametrize("workers_after", [0, 2])
def test_an_interrupted_epoch_resumes_repeating_only_the_shards_in_flight(
    shard_dir: Path, synth_root: Path, tokenizer: CaptionTokenizer, workers_after: int
) -> None:
    spec = str(shard_dir / PATTERN)
    first = _dataset(spec, tokenizer, shuffle_buffer=6, seed=2)
    before = _ids(first, batch_size=3, stop_after=8)  # 24 of 40 samples, mid-epoch
    state = first.progress.state_dict()
    in_flight = {int(shard): n for shard, n in state["ranks"][0]["in_flight"]}
    completed = set(state["ranks"][0]["completed"])
    assert completed and in_flight  # the case to test: some shards done, some open

    resumed = _dataset(spec, tokenizer, shuffle_buffer=6, seed=2)
    resumed.progress.load_state_dict(json.loads(json.dumps(state)))  # as stored: plain data
    after = _ids(resumed, workers=workers_after)

    where = _shard_of(shard_dir)
    shards = expand_shards(spec)
    # Nothing is skipped: the two parts cover the epoch.
    assert set(before) | set(after) == set(_all_ids(synth_root))
    # Exactly the samples consumed from the shards in flight repeat, and the state counted them.
    expected_repeats = {i for i in before if where[i] not in {shards[s] for s in completed}}
    assert set(before) & set(after) == expected_repeats
    assert sum(in_flight.values()) == len(expected_repeats) > 0
    assert len(after) == len(set(after)) and len(before) == len(set(before))
    message = resumed.progress.describe_resume()
    for shard in in_flight:
        assert Path(shards[shard]).name in message


def test_resume_refuses_another_shard_list_or_world_size(
    shard_dir: Path, tokenizer: CaptionTokenizer
) -> None:
    state = _dataset(str(shard_dir / PATTERN), tokenizer).progress.state_dict()
    with pytest.raises(ValueError, match="another shard list"):
        _dataset(str(shard_dir / "{00000..00003}.tar"), tokenizer).progress.load_state_dict(state)
    two = _dataset(str(shard_dir / PATTERN), tokenizer, rank=0, world_size=2)
    with pytest.raises(ValueError, match="world_size"):
        two.progress.load_state_dict(state)
    with pytest.raises(ValueError, match="not a shard state"):
        two.progress.load_state_dict({"epoch": 0, "position": 3})


def _tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_corrupt_image_and_empty_caption_are_skipped_counted_and_logged(
    synth_root: Path,
    tokenizer: CaptionTokenizer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    png = sorted((synth_root / "train").iterdir())[0].read_bytes()
    members = []
    for n in range(4):
        members += [(f"{n:04d}.png", png), (f"{n:04d}.txt", f"A red circle {n}".encode())]
    members += [("bad1.jpg", b"\xff\xd8 this is no jpeg"), ("bad1.txt", b"a caption")]
    members += [("bad2.png", png), ("bad2.txt", b" \t ")]
    members += [("bad3.txt", b"a caption without an image")]
    _tar(tmp_path / "00000.tar", members)
    # A second shard cut in the middle of its second sample: the first one is kept.
    _tar(tmp_path / "full.tar", [("0100.png", png), ("0100.txt", b"x"), ("0101.png", png * 20)])
    data = (tmp_path / "full.tar").read_bytes()
    padded = -(-len(png) // 512) * 512  # tar: 512-byte header per member, data padded to 512
    (tmp_path / "00001.tar").write_bytes(data[: 512 + padded + 512 + 512 + 512 + 1000])
    (tmp_path / "full.tar").unlink()

    dataset = _dataset(str(tmp_path / "{00000..00001}.tar"), tokenizer, shuffle_buffer=0)
    with caplog.at_level(logging.WARNING, logger="virtex_data.shards"):
        ids = _ids(dataset, batch_size=1)
    assert sorted(ids) == [0, 1, 2, 3, 100]
    assert dataset.progress.skipped == 4
    notes = " | ".join(dataset.progress.notes)
    assert "bad1: unreadable image" in notes and "bad2: empty caption" in notes
    assert "bad3: no image member" in notes and "00001.tar: -: shard unreadable after 1" in notes
    assert "bad1" in caplog.text and "bad2" in caplog.text
    assert dataset.progress.completed == {0, 1}


def test_data_config_names_shards_or_an_lmdb_file() -> None:
    config = DataConfig.from_dict({"train_shards": "s/{00000..00009}.tar"})
    assert config.train_lmdb is None and config.train_shards == "s/{00000..00009}.tar"
    assert DataConfig.from_dict(config.to_dict()) == config  # the saved run config reloads
    with pytest.raises(ValueError, match="both set"):
        DataConfig.from_dict({"train_shards": "s/0.tar", "train_lmdb": "t.lmdb"})
    # The quickstart's default LMDB path is replaced, not a conflict (config overrides).
    both = {"train_shards": "s/0.tar", "train_lmdb": "data/synth/train.lmdb"}
    assert DataConfig.from_dict(both).train_lmdb is None
    with pytest.raises(ValueError, match="both unset"):
        DataConfig.from_dict({"train_lmdb": None})
    assert DataConfig().train_lmdb == "data/synth/train.lmdb"


def test_cli_build_shards_and_inspect(synth_root: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "shards"
    args = ["build-shards", "--captions", str(synth_root / "annotations" / "captions_val.json")]
    args += ["--images", str(synth_root / "val"), "--output", str(out), "--shard-size", "5"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "wrote 12 samples in 3 shard(s)" in result.output
    assert "{00000..00002}.tar" in result.output
    again = runner.invoke(main, args)
    assert again.exit_code == 1 and "not empty" in again.output
    shown = runner.invoke(main, ["inspect", str(out / "{00000..00002}.tar"), "--records", "2"])
    assert shown.exit_code == 0, shown.output
    assert "12 samples in 3 shard(s)" in shown.output and "[1] 00000.tar" in shown.output
    assert Counter(line[:3] for line in shown.output.splitlines())["[2]"] == 0
    folder = runner.invoke(main, ["inspect", str(out)])
    assert "manifest count: 12" in folder.output and "12 samples" in folder.output


def test_streamed_images_equal_the_lmdb_path(
    shard_dir: Path, synth_data: dict[str, Path], tokenizer: CaptionTokenizer
) -> None:
    """Same image bytes and captions reach the transform from shards as from the LMDB file."""
    from virtex_data.lmdb_reader import LmdbReader
    from virtex_data.shards import decode_sample, read_shard

    reader = LmdbReader(synth_data["train"])
    by_id = {reader[i].image_id: reader[i] for i in range(len(reader))}
    for raw in read_shard(str(shard_dir / "00001.tar")):
        record = decode_sample(raw).record
        assert record is not None
        stored = by_id[record.image_id]
        assert record.image == stored.image and record.captions == stored.captions
