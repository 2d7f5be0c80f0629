"""Data loading benchmark: LMDB vs. image folder vs. tar shards, warm and cold; decoding.

Makes COCO-like 640x480 JPEGs (~100 KB, photo-like noise), writes them as a folder, as one
LMDB file (``virtex_data.lmdb_writer.build_lmdb``) and as WebDataset tar shards of 100 images
(``virtex_data.shard_writer.build_shards``, streamed by ``virtex_data.shards``), and measures, in
the same run:

1. raw random reads/s of the stored bytes: LMDB (readahead off / on) vs. files, cold and warm;
2. samples/s of the full training pipeline (read + decode + random resized crop + flip + jitter +
   normalise + tokenise + collate, batch 32, shuffled) at 0, 1 and 2 DataLoader workers, reading
   from LMDB vs. from the folder vs. streaming the shards (shuffle buffer 256 per worker), warm
   (files in the page cache) and cold (dropped from the cache with
   ``posix_fadvise(POSIX_FADV_DONTNEED)`` after an ``fsync``: no root needed, but advisory; where
   the kernel keeps pages anyway, "cold" reads are warmer than a first read on a cluster);
3. decode time of a 224 px crop with and without reduced-size (JPEG draft) decoding;
4. (``--tokenizer``) BPE training time on 600k captions.

Ratios are against the folder pipeline (1, 2) and full decoding (3) measured in this run.

    PYTHONPATH=packages/virtex-data/src python benchmarks/data_loading.py            # ~5 min
    PYTHONPATH=packages/virtex-data/src python benchmarks/data_loading.py --tokenizer
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from virtex_data.datasets import CaptioningDataset
from virtex_data.image_codec import decode_rgb, prepare_image
from virtex_data.lmdb_format import ImageRecord
from virtex_data.lmdb_reader import LmdbReader
from virtex_data.lmdb_writer import build_lmdb
from virtex_data.sampler import ResumableSampler
from virtex_data.shard_writer import build_shards
from virtex_data.shards import ShardCaptionDataset, ShardLoader, build_shard_dataset
from virtex_data.synth import describe, sample_scene
from virtex_data.tokenizer import CaptionTokenizer
from virtex_data.transforms import TrainTransform, TransformConfig

WIDTH, HEIGHT = 640, 480


def make_images(folder: Path, count: int, seed: int = 0) -> list[str]:
    """COCO-like JPEGs: smooth colour fields plus fine noise (~100 KB at quality 90)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = []
    for k in range(count):
        coarse = rng.integers(0, 256, (HEIGHT // 16, WIDTH // 16, 3), dtype=np.uint8)
        base = np.asarray(Image.fromarray(coarse).resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC))
        noise = rng.normal(0, 18, (HEIGHT, WIDTH, 3))
        array = np.clip(base + noise, 0, 255).astype(np.uint8)
        name = f"{k:012d}.jpg"
        Image.fromarray(array).save(folder / name, format="JPEG", quality=90)
        names.append(name)
    return names


class FolderReader:
    """The same interface as ``LmdbReader``, reading one JPEG file per record."""

    def __init__(self, folder: Path, names: list[str], captions: list[list[str]]) -> None:
        self.path = folder
        self.names = names
        self.captions = captions
        self.image_ids = list(range(len(names)))

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> ImageRecord:
        data = (self.path / self.names[index]).read_bytes()
        return ImageRecord(
            index, self.names[index], data, "jpeg", WIDTH, HEIGHT, self.captions[index]
        )


def _filesystem(path: Path) -> str:
    """Type of the file system holding ``path`` (Linux ``/proc/mounts``; "" if unknown)."""
    try:
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return ""
    best, kind = "", ""
    resolved = str(path.resolve())
    for fields in mounts:
        point = fields[1]
        if resolved.startswith(point) and len(point) > len(best):
            best, kind = point, fields[2]
    return kind


def drop_from_cache(paths: list[Path]) -> None:
    """Evict files from the page cache (they must not be mapped by a live process)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm_cache(paths: list[Path]) -> None:
    for path in paths:
        path.read_bytes()


def raw_reads(read: Callable[[int], bytes], count: int, total: int, seed: int) -> float:
    order = random.Random(seed).sample(range(total), min(count, total))
    start = time.perf_counter()
    for index in order:
        read(index)
    return len(order) / (time.perf_counter() - start)


def pipeline_rate(dataset: CaptioningDataset, workers: int, samples: int, seed: int) -> float:
    sampler = ResumableSampler(len(dataset), 1, 0, shuffle=True, seed=seed)
    loader = DataLoader(
        dataset,
        batch_size=32,
        sampler=sampler,
        num_workers=workers,
        collate_fn=dataset.collate,
        prefetch_factor=4 if workers else None,
    )
    # Timing starts after the first batch: worker start-up is not throughput.
    iterator = iter(loader)
    next(iterator)
    seen = 0
    start = time.perf_counter()
    for batch in iterator:
        seen += len(batch)
        if seen >= samples:
            break
    seconds = time.perf_counter() - start
    del loader
    return seen / seconds


def shard_rate(dataset: ShardCaptionDataset, workers: int, samples: int) -> float:
    """Samples/s of the streamed shards, timed from the second batch as :func:`pipeline_rate`."""
    loader = DataLoader(
        dataset,
        batch_size=32,
        num_workers=workers,
        collate_fn=dataset.collate,
        prefetch_factor=4 if workers else None,
    )
    iterator = iter(ShardLoader(loader, dataset.progress))
    next(iterator)
    seen = 0
    start = time.perf_counter()
    for batch in iterator:
        seen += len(batch)
        if seen >= samples:
            break
    seconds = time.perf_counter() - start
    del iterator, loader
    return seen / seconds


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")


def bench_tokenizer() -> None:
    rng = random.Random(0)
    synth = []
    while len(synth) < 600_000:
        synth.extend(describe(sample_scene(rng, 64), rng))
    # COCO-like word statistics: 25k word types with Zipfian frequencies, 8-14 words.
    letters = "abcdefghijklmnopqrstuvwxyz"
    lexicon = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(25000)]
    weights = [1 / (k + 1) for k in range(len(lexicon))]
    np_rng = np.random.default_rng(0)
    probs = np.array(weights) / sum(weights)
    words = np_rng.choice(len(lexicon), size=(600_000, 11), p=probs)
    zipf = [" ".join(lexicon[w] for w in row[: 8 + (i % 7)]) for i, row in enumerate(words)]
    rows = []
    for name, corpus in (("synth captions", synth[:600_000]), ("Zipf 25k-word captions", zipf)):
        start = time.perf_counter()
        tokenizer = CaptionTokenizer.train(corpus, 10000)
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        encoded = tokenizer.encode_batch(corpus[:100_000])
        enc_rate = 100_000 / (time.perf_counter() - start)
        per = statistics.mean(len(e) for e in encoded)
        rows.append(
            [name, f"{train_s:.1f}", str(tokenizer.vocab_size), f"{enc_rate:,.0f}", f"{per:.1f}"]
        )
    table(
        "BPE training on 600k captions (vocab 10000 requested)",
        ["corpus", "train s", "vocab", "encode_batch captions/s", "tokens/caption"],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1200, help="JPEGs to make")
    parser.add_argument("--samples", type=int, default=384, help="samples per pipeline run")
    parser.add_argument("--workdir", default=None, help="folder on a real disk (not tmpfs)")
    parser.add_argument("--repeats", type=int, default=2, help="pipeline runs per cell (best)")
    parser.add_argument("--tokenizer", action="store_true", help="also time BPE training")
    parser.add_argument("--keep", action="store_true", help="keep the temporary workdir")
    parser.add_argument(
        "--sections",
        default="reads,pipeline,decode,maxside",
        help="comma-separated subset of reads,pipeline,decode,maxside",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="virtex-bench-"))
    if _filesystem(workdir) in ("tmpfs", "ramfs"):
        print(
            f"warning: {workdir} is on {_filesystem(workdir)}: 'cold' reads will be warm; "
            "pass --workdir on a disk"
        )
    folder = workdir / "images"
    print(f"making {args.images} 640x480 JPEGs in {folder} ...", flush=True)
    names = sorted(p.name for p in folder.glob("*.jpg")) if folder.is_dir() else []
    if len(names) != args.images:
        names = make_images(folder, args.images)
    files = [folder / n for n in names]
    rng = random.Random(0)
    captions = []
    for _ in names:
        captions.append(describe(sample_scene(rng, 64), rng))
    caption_file = workdir / "captions.json"
    caption_file.write_text(
        json.dumps(
            {
                "images": [{"id": k, "file_name": n} for k, n in enumerate(names)],
                "annotations": [
                    {"image_id": k, "caption": c} for k, cs in enumerate(captions) for c in cs
                ],
            }
        )
    )
    out = workdir / "bench.lmdb"
    start = time.perf_counter()
    build_lmdb(caption_file, folder, out, workers=2, overwrite=True, progress=False)
    write_s = time.perf_counter() - start
    payload = sum(f.stat().st_size for f in files)
    print(
        f"LMDB written in {write_s:.1f} s ({len(files) / write_s:,.0f} records/s), "
        f"{out.stat().st_size / payload:.3f}x the JPEG bytes; mean JPEG "
        f"{payload / len(files) / 1024:.0f} KB",
        flush=True,
    )
    shard_dir = workdir / "shards"
    start = time.perf_counter()
    build_shards(
        caption_file, folder, shard_dir, shard_size=100, workers=2, overwrite=True, progress=False
    )
    write_s = time.perf_counter() - start
    print(f"shards written in {write_s:.1f} s ({len(files) / write_s:,.0f} records/s)", flush=True)
    tokenizer = CaptionTokenizer.train([c for cs in captions for c in cs], 1000)
    config = TransformConfig(image_size=224)

    sections = set(args.sections.split(","))
    if "reads" in sections:
        bench_reads(files, out)
    if "pipeline" in sections:
        bench_pipeline(args, folder, names, captions, files, out, shard_dir, tokenizer, config)
    if "decode" in sections:
        bench_decode(files)
    if "maxside" in sections:
        bench_max_side(files)
    if args.tokenizer:
        bench_tokenizer()
    if args.workdir is None and not args.keep:
        shutil.rmtree(workdir)
    else:
        print(f"\nfiles kept in {workdir} (delete when done)")


def bench_reads(files: list[Path], out: Path) -> None:
    """1. raw random reads, cold and warm."""
    rows = []
    for state in ("cold", "warm"):
        rates: dict[str, float] = {}
        for name in ("files", "lmdb readahead=False", "lmdb readahead=True"):
            if state == "cold":
                drop_from_cache([*files, out])
            else:
                warm_cache([*files, out])
            if name == "files":
                rates[name] = raw_reads(lambda i: files[i].read_bytes(), 600, len(files), 1)
            else:
                reader = LmdbReader(out, readahead=name.endswith("True"))
                rates[name] = raw_reads(reader.raw, 600, len(files), 1)
                reader.close()
        for name, rate in rates.items():
            rows.append([state, name, f"{rate:,.0f}", f"{rate / rates['files']:.2f}"])
    table(
        "Raw random reads of ~160 KB values (records/s)",
        ["cache", "source", "reads/s", "vs files"],
        rows,
    )


def bench_pipeline(
    args: argparse.Namespace,
    folder: Path,
    names: list[str],
    captions: list[list[str]],
    files: list[Path],
    out: Path,
    shard_dir: Path,
    tokenizer: CaptionTokenizer,
    config: TransformConfig,
) -> None:
    """2. full pipeline (folder, LMDB and shards interleaved, best of --repeats: the machine is
    shared)."""
    rows = []
    shards = sorted(shard_dir.glob("*.tar"))
    for state in ("warm", "cold"):
        for workers in (0, 1, 2):
            rates = {"folder": 0.0, "lmdb": 0.0, "shards": 0.0}
            for repeat in range(args.repeats):
                for name in ("folder", "lmdb", "shards"):
                    if name == "shards":
                        if state == "cold":
                            drop_from_cache(shards)
                        else:
                            warm_cache(shards)
                        streamed = build_shard_dataset(
                            [str(p) for p in shards],
                            "captioning",
                            tokenizer,
                            TrainTransform(config),
                            shuffle_buffer=256,
                            seed=workers + repeat,
                            rank=0,
                            world_size=1,
                        )
                        rate = shard_rate(streamed, workers, args.samples)
                        rates[name] = max(rates[name], rate)
                        continue
                    if name == "folder":
                        reader: object = FolderReader(folder, names, captions)
                    else:
                        reader = LmdbReader(out)
                    dataset = CaptioningDataset(reader, tokenizer, TrainTransform(config))  # type: ignore[arg-type]
                    if state == "cold":
                        drop_from_cache([*files, out])
                    else:
                        warm_cache([*files, out])
                    rate = pipeline_rate(dataset, workers, args.samples, seed=workers + repeat)
                    rates[name] = max(rates[name], rate)
                    if isinstance(reader, LmdbReader):
                        reader.close()
            rows.append(
                [
                    state,
                    str(workers),
                    f"{rates['folder']:.0f}",
                    f"{rates['lmdb']:.0f}",
                    f"{rates['lmdb'] / rates['folder']:.2f}",
                    f"{rates['shards']:.0f}",
                    f"{rates['shards'] / rates['folder']:.2f}",
                ]
            )
            print(f"  pipeline {state} workers={workers}: {rows[-1][2:]}", flush=True)
    table(
        "Training pipeline, batch 32, 224 px (samples/s)",
        ["cache", "workers", "folder", "lmdb", "lmdb/folder", "shards", "shards/folder"],
        rows,
    )


def bench_decode(files: list[Path]) -> None:
    """3. decoding (full and reduced interleaved, best of 3)."""
    datas = [f.read_bytes() for f in files[:40]]
    big = io.BytesIO()
    Image.open(io.BytesIO(datas[0])).resize((1280, 960)).save(big, format="JPEG", quality=90)

    def decode_only(data: bytes, reduced: bool) -> None:
        decode_rgb(data, (224, 224) if reduced else None).load()

    def shorter_side(data: bytes, reduced: bool) -> None:
        image = decode_rgb(data, (224, 224) if reduced else None)
        scale = 224 / min(image.size)
        size = (round(image.width * scale), round(image.height * scale))
        image.resize(size, Image.Resampling.BILINEAR)

    crops = {
        reduced: TrainTransform(
            TransformConfig(reduced_decode=reduced, color_jitter=None, hflip=0.0)
        )
        for reduced in (False, True)
    }

    def random_crop(data: bytes, reduced: bool) -> None:
        crops[reduced](data, "")

    rows = []
    operations = (
        ("decode only (draft to >= 224)", decode_only),
        ("decode + shorter side to 224", shorter_side),
        ("random resized crop 224 (covering)", random_crop),
    )
    for label, sample in (("640x480", datas), ("1280x960", [big.getvalue()] * 20)):
        for operation, run in operations:
            best = {False: float("inf"), True: float("inf")}
            for repeat in range(3):
                for reduced in (False, True):
                    torch.manual_seed(repeat)
                    start = time.perf_counter()
                    for data in sample:
                        run(data, reduced)
                    elapsed = (time.perf_counter() - start) / len(sample) * 1000
                    best[reduced] = min(best[reduced], elapsed)
            rows.append(
                [
                    label,
                    operation,
                    f"{best[False]:.2f}",
                    f"{best[True]:.2f}",
                    f"{best[False] / best[True]:.2f}",
                ]
            )
    table(
        "Decode to 224 px (ms/image, best of 3)",
        ["image", "operation", "full decode", "reduced decode", "speed-up"],
        rows,
    )


def bench_max_side(files: list[Path]) -> None:
    """4. what ``--max-side`` buys: record size, write cost, training-transform time."""
    sample = files[:40]
    transform = TrainTransform(TransformConfig(color_jitter=None))
    rows = []
    for max_side in (None, 512, 320):
        start = time.perf_counter()
        prepared = [prepare_image(f, max_side) for f in sample]
        write_ms = (time.perf_counter() - start) / len(sample) * 1000
        best = float("inf")
        for repeat in range(3):
            torch.manual_seed(repeat)
            start = time.perf_counter()
            for p in prepared:
                transform(p.data, "")
            best = min(best, (time.perf_counter() - start) / len(sample) * 1000)
        size = statistics.mean(len(p.data) for p in prepared) / 1024
        rows.append([str(max_side), f"{size:.0f}", f"{write_ms:.1f}", f"{best:.2f}"])
    table(
        "--max-side on 640x480 JPEGs (per image)",
        ["max side", "record KB", "prepare ms", "crop 224 ms"],
        rows,
    )


if __name__ == "__main__":
    main()
