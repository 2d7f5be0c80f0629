"""One prepared GPU benchmark: bf16 training at the largest batch, compile, data loading, captions.

On one CUDA device (written for an H100/H200; under 8 minutes there) it prints one table:

1. ``train bf16``: a training step (forward + backward + fused SGD, bf16 autocast,
   channels_last) of the paper's model - bicaptioning, ResNet-50 + 1-layer H2048 Transformer,
   vocabulary 10000, 224 px, 20-token captions - at the largest batch that fits (doubling from
   ``--start-batch`` until CUDA runs out of memory, OOM caught). img/s, MFU (model FLOPs
   counted with ``FlopCounterMode`` on one step, peak from ``virtex_train.throughput``), peak
   memory (``max_memory_allocated``);
2. ``train bf16 compile``: the same with the forward/backward through ``torch.compile``
   (``train.compile``), its compile time in the note; the speed-up vs row 1;
3. ``data CPU decode`` / ``data GPU decode``: images/s of the training data pipeline over
   generated 640 x 480 JPEGs (``DataLoader`` with ``--workers`` processes, batches moved to the
   device): PIL decode + augmentation in the workers (the baseline) vs ``data.gpu_decode``
   (nvJPEG batch decode + augmentation on the GPU); loader batches of 64 images;
4. ``caption beam-5``: ``generate`` (visual forward + beam 5 x 30 tokens, bf16 autocast) img/s.

Without CUDA (or with ``--dry-run``) it runs the same rows tiny, to check the script: ResNet-18,
64 px, 2 steps, batch search capped at 4, 16 JPEGs; compile with the ``eager`` backend
(TorchInductor's C++ build would take minutes on a CPU); "GPU decode" runs the device-side
decode code on the CPU. Dry-run numbers measure nothing.

    python benchmarks/gpu.py                 # on a GPU machine
    python benchmarks/gpu.py --dry-run       # anywhere, ~30 s
"""

from __future__ import annotations

import argparse
import functools
import gc
import io
import math
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
for package in ("virtex-data", "virtex-models", "virtex-train"):
    sys.path.insert(0, str(ROOT / "packages" / package / "src"))

from virtex_data import CaptionBatch, CaptionTokenizer  # noqa: E402
from virtex_data.datasets import CaptioningDataset  # noqa: E402
from virtex_data.gpu_decode import GpuDecodeCaptioningDataset  # noqa: E402
from virtex_data.transforms import TrainTransform, TransformConfig  # noqa: E402
from virtex_models import ModelConfig, VocabSpec  # noqa: E402
from virtex_models.compiling import CompiledOrEager  # noqa: E402
from virtex_train.optim import OptimConfig, build_optimizer  # noqa: E402
from virtex_train.throughput import count_flops, device_peak_flops, mfu  # noqa: E402

VOCAB = VocabSpec(size=10000, pad=0, unk=1, sos=2, eos=3, mask=4)
COLUMNS = ("row", "setting", "batch", "img/s", "vs baseline", "MFU", "peak GiB", "note")


@dataclass
class Setup:
    device: torch.device
    dry: bool
    backbone: str
    width: int
    size: int
    steps: int
    max_batch: int
    start_batch: int
    images: int
    workers: int
    backend: str | None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process peak RSS


def build_model(setup: Setup) -> torch.nn.Module:
    torch.manual_seed(0)
    width = setup.width
    config = ModelConfig.from_dict(
        {
            "kind": "bicaptioning",
            "visual": {"name": setup.backbone},
            "textual": {"layers": 1, "width": width, "heads": width // 64, "ffn": 4 * width},
        }
    )
    model = config.build(VOCAB).to(setup.device)
    return model.to(memory_format=torch.channels_last)


def make_batch(setup: Setup, batch: int) -> CaptionBatch:
    device = setup.device
    tokens = torch.randint(5, VOCAB.size, (batch, 20), device=device)
    tokens[:, 0], tokens[:, -1] = VOCAB.sos, VOCAB.eos
    images = torch.randn(batch, 3, setup.size, setup.size, device=device)
    return CaptionBatch(
        image_ids=torch.arange(batch, device=device),
        images=images.contiguous(memory_format=torch.channels_last),
        tokens=tokens,
        lengths=torch.full((batch,), 20, device=device),
    )


class TrainStep:
    """Forward + backward + fused SGD in bf16 autocast (compiled forward on request)."""

    def __init__(self, setup: Setup, compiled: bool) -> None:
        self.setup = setup
        self.model = build_model(setup).train()
        self.optimizer = build_optimizer(self.model, OptimConfig(kind="sgd", lr=1e-3))
        self.forward: Any = self.model
        if compiled:
            self.forward = CompiledOrEager(
                self.model, what="train.compile", device=setup.device, backend=setup.backend
            )

    def __call__(self, batch: CaptionBatch) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.setup.device.type, dtype=torch.bfloat16):
            loss = self.forward(batch).loss
        loss.backward()
        self.optimizer.step()


def fits(setup: Setup, batch: int) -> bool:
    step = None
    try:
        step = TrainStep(setup, compiled=False)
        data = make_batch(setup, batch)
        for _ in range(2):
            step(data)
        sync(setup.device)
        return True
    except torch.OutOfMemoryError:
        return False
    finally:
        del step
        reset_peak(setup.device)


def largest_batch(setup: Setup) -> int:
    batch = setup.start_batch
    if not fits(setup, batch):
        raise SystemExit(f"batch {batch} does not fit: lower --start-batch")
    while batch * 2 <= setup.max_batch and fits(setup, batch * 2):
        batch *= 2
    return batch


def flops_per_step(setup: Setup, batch: int) -> int:
    step = TrainStep(setup, compiled=False)
    data = make_batch(setup, batch)
    _, flops = count_flops(functools.partial(step, data))
    del step
    reset_peak(setup.device)
    return flops


def train_row(setup: Setup, batch: int, compiled: bool, flops: int, peak: float | None) -> dict:
    reset_peak(setup.device)
    step = TrainStep(setup, compiled)
    data = make_batch(setup, batch)
    sync(setup.device)
    start = time.perf_counter()
    step(data)  # compiles, or warms up the kernels
    sync(setup.device)
    first = time.perf_counter() - start
    step(data)
    times = []
    for _ in range(setup.steps):
        sync(setup.device)
        start = time.perf_counter()
        step(data)
        sync(setup.device)
        times.append(time.perf_counter() - start)
    seconds = min(times)
    note = f"first step {first:.1f} s"
    if compiled and isinstance(step.forward, CompiledOrEager):
        label = setup.backend or "inductor"
        note += f", backend {label}" if step.forward.compiled else f", EAGER: {step.forward.reason}"
    result = {
        "img_s": batch / seconds,
        "mfu": mfu(flops / seconds, peak) if peak else None,
        "peak": peak_gib(setup.device),
        "note": note,
    }
    del step, data
    reset_peak(setup.device)
    return result


# ------------------------------------------------------------------------------ data loading
@dataclass(frozen=True)
class Record:
    image_id: int
    image: bytes
    captions: tuple[str, ...]


class MemoryReader:
    """What the datasets need of an ``LmdbReader``: records by index, in memory."""

    def __init__(self, records: list[Record]) -> None:
        self.records = records
        self.path = Path("generated-jpegs")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Record:
        return self.records[index]


def generated_jpegs(count: int) -> list[Record]:
    """Distinct 640 x 480 photographs-like JPEGs (smooth gradients plus noise), quality 90."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:480, 0:640].astype(np.float32)
    records = []
    for index in range(count):
        phase = rng.uniform(0, 2 * math.pi, 3)
        channels = [127 + 100 * np.sin(x / (40 + 9 * c) + y / 70 + phase[c]) for c in range(3)]
        pixels = np.stack(channels, -1) + rng.normal(0, 12, (480, 640, 3))
        out = io.BytesIO()
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
        records.append(Record(index, out.getvalue(), (f"a picture number {index} on the left",)))
    return records


def data_rows(setup: Setup, batch: int) -> list[dict]:
    # A loader batch of at most 64 images: with the training batch (hundreds) the few batches
    # of one epoch would keep only a few of the workers busy.
    batch = min(batch, 64)
    records = generated_jpegs(setup.images)
    captions = [c for r in records for c in r.captions]
    tokenizer = CaptionTokenizer.train(captions, vocab_size=60)
    config = TransformConfig(image_size=setup.size)
    reader: Any = MemoryReader(records)
    datasets = {
        "CPU decode": CaptioningDataset(reader, tokenizer, TrainTransform(config)),
        "GPU decode": GpuDecodeCaptioningDataset(reader, tokenizer, transform_config=config),
    }
    rows = []
    for label, dataset in datasets.items():
        loader = DataLoader(
            dataset,
            batch_size=batch,
            shuffle=True,
            num_workers=setup.workers,
            collate_fn=dataset.collate,
            pin_memory=setup.device.type == "cuda",
            drop_last=True,
            persistent_workers=setup.workers > 0,
        )
        images, seconds = 0, 0.0
        for epoch in range(2):  # the first epoch starts the workers: not timed
            sync(setup.device)
            start = time.perf_counter()
            count = 0
            for item in loader:
                moved = item.to(setup.device, non_blocking=True)
                count += len(moved)
            sync(setup.device)
            if epoch == 1:
                images, seconds = count, time.perf_counter() - start
        note = f"{setup.images} JPEGs 640x480, {setup.workers} workers"
        if label == "GPU decode" and setup.device.type != "cuda":
            note += ", device code on the CPU"
        rows.append({"label": label, "img_s": images / seconds, "note": note, "batch": batch})
    return rows


def caption_row(setup: Setup, batch: int) -> dict:
    reset_peak(setup.device)
    model: Any = build_model(setup).eval()
    images = torch.randn(batch, 3, setup.size, setup.size, device=setup.device)
    images = images.contiguous(memory_format=torch.channels_last)

    def run() -> torch.Tensor:
        with torch.autocast(setup.device.type, dtype=torch.bfloat16):
            return model.generate(images, mode="beam", beam_size=5, max_steps=30)

    run()  # warm-up
    sync(setup.device)
    start = time.perf_counter()
    tokens = run()
    sync(setup.device)
    seconds = time.perf_counter() - start
    note = f"beam 5, {tokens.shape[1]} tokens, random weights"
    return {"img_s": batch / seconds, "peak": peak_gib(setup.device), "note": note}


def fmt(value: float | None, pattern: str) -> str:
    return "" if value is None else format(value, pattern)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes (automatic on CPU)")
    parser.add_argument("--start-batch", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (best kept)")
    parser.add_argument("--jpegs", type=int, default=1024, help="generated JPEGs")
    parser.add_argument("--workers", type=int, default=8, help="DataLoader workers")
    parser.add_argument("--caption-batch", type=int, default=64)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    dry = args.dry_run or not cuda
    device = torch.device("cuda" if cuda and not dry else "cpu")
    if dry:
        setup = Setup(device, True, "resnet18", 64, 64, 2, 4, 2, 16, 1, "eager")
        caption_batch = 2
    else:
        setup = Setup(
            device, False, "resnet50", 2048, 224, args.steps, args.max_batch,
            args.start_batch, args.jpegs, args.workers, None,
        )  # fmt: skip
        caption_batch = args.caption_batch
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peak, source = device_peak_flops(device, "bf16")
    model = f"bicaptioning {setup.backbone} + L1 H{setup.width}, vocab {VOCAB.size}"
    print(f"{'DRY RUN (numbers measure nothing): ' if dry else ''}{name}; {model}, {setup.size} px")
    print(f"peak for MFU: {fmt(peak and peak / 1e12, '.1f')} TFLOP/s ({source})")
    start = time.perf_counter()
    batch = largest_batch(setup)
    flops = flops_per_step(setup, batch)
    print(f"largest batch: {batch}; model FLOPs per step {flops / 1e12:.3f} TFLOP (fwd+bwd)")
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    eager = train_row(setup, batch, False, flops, peak)
    compiled = train_row(setup, batch, True, flops, peak)
    for label, row in (("eager", eager), ("compile", compiled)):
        ratio = row["img_s"] / eager["img_s"]
        cells = ["train bf16" + ("" if label == "eager" else " compile"), label, str(batch)]
        cells += [f"{row['img_s']:.1f}", f"{ratio:.2f}x", fmt(row["mfu"], ".1%")]
        cells += [f"{row['peak']:.2f}", row["note"]]
        print("| " + " | ".join(cells) + " |", flush=True)
    loading = data_rows(setup, batch)
    for row in loading:
        ratio = row["img_s"] / loading[0]["img_s"]
        cells = [f"data {row['label']}", row["label"], str(row["batch"]), f"{row['img_s']:.1f}"]
        cells += [f"{ratio:.2f}x", "", "", row["note"]]
        print("| " + " | ".join(cells) + " |", flush=True)
    caption = caption_row(setup, caption_batch)
    cells = ["caption beam-5", "bf16 generate", str(caption_batch), f"{caption['img_s']:.1f}"]
    cells += ["", "", f"{caption['peak']:.2f}", caption["note"]]
    print("| " + " | ".join(cells) + " |")
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
