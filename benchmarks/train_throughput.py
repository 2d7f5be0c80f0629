"""Training throughput: the ``virtex_train`` loop vs a minimal plain PyTorch loop.

Same model, same data (an in-memory dataset of random images and 20-token captions, vocabulary
10000, through a ``DataLoader`` with ``num_workers=0``), same optimiser (SGD, momentum 0.9,
weight decay 1e-4, gradient clipping at 10) in the same run. Each row runs in a fresh
subprocess so that its peak memory (peak RSS on CPU, ``max_memory_allocated`` on CUDA) is its
own; rounds interleave the rows so that load from other jobs does not hit one row only.

Rows per model:

- ``plain fp32``: ``for batch in loader: zero_grad; loss = model(batch).loss; backward; clip;
  step`` (the baseline).
- ``virtex_train fp32``: ``Trainer`` with the same settings plus what a real run has: LR
  schedule, sampler bookkeeping, the loss read back every step (NaN check, logging),
  ``LoggingHook`` writing metrics.jsonl / TensorBoard every 20 steps.
- ``virtex_train best``: ``channels_last`` + bf16 autocast + ``foreach`` SGD.

    python benchmarks/train_throughput.py           # R-50 L1 H2048 b8 224; R-18 H512 b16 128
    python benchmarks/train_throughput.py --quick       # tiny settings (a smoke test)
    python benchmarks/train_throughput.py --threads 1 --rounds 2 --steps 4
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
for package in ("virtex-data", "virtex-models", "virtex-train"):
    sys.path.insert(0, str(ROOT / "packages" / package / "src"))

from torch.utils.data import DataLoader, Dataset  # noqa: E402

from virtex_data import CaptionBatch  # noqa: E402
from virtex_data.sampler import ResumableSampler  # noqa: E402
from virtex_models import ModelConfig, VocabSpec  # noqa: E402

VOCAB = VocabSpec(size=10000, pad=0, unk=1, sos=2, eos=3, mask=4)
MODELS: dict[str, dict[str, Any]] = {
    "R-50 L1 H2048": {
        "backbone": "resnet50",
        "textual": {"layers": 1, "width": 2048, "heads": 32, "ffn": 8192},
        "batch": 8,
        "size": 224,
    },
    "R-18 L1 H512": {
        "backbone": "resnet18",
        "textual": {"layers": 1, "width": 512, "heads": 8, "ffn": 2048},
        "batch": 16,
        "size": 128,
    },
}
QUICK: dict[str, dict[str, Any]] = {
    "R-18 L1 H64 (quick)": {
        "backbone": "resnet18",
        "textual": {"layers": 1, "width": 64, "heads": 2, "ffn": 128},
        "batch": 4,
        "size": 64,
    }
}
ROWS = ("plain fp32", "virtex_train fp32", "virtex_train best")


class RandomCaptions(Dataset[int]):
    """``pool`` random images with 20-token captions; items are indices, collated on demand."""

    def __init__(self, length: int, size: int, pool: int = 32) -> None:
        g = torch.Generator().manual_seed(0)
        self.length = length
        self.images = torch.randn(pool, 3, size, size, generator=g)
        self.tokens = torch.randint(5, VOCAB.size, (pool, 20), generator=g)
        self.tokens[:, 0], self.tokens[:, -1] = VOCAB.sos, VOCAB.eos

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> int:
        return index % len(self.images)

    def collate(self, indices: list[int]) -> CaptionBatch:
        idx = torch.tensor(indices)
        return CaptionBatch(
            image_ids=idx,
            images=self.images[idx],
            tokens=self.tokens[idx],
            lengths=torch.full((len(indices),), 20),
        )


def _peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def worker(args: argparse.Namespace) -> None:
    """Run one row and print one JSON line."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    spec = {**MODELS, **QUICK}[args.model]
    best = args.row == "virtex_train best"
    config = ModelConfig.from_dict(
        {
            "kind": "bicaptioning",
            "visual": {"name": spec["backbone"]},
            "textual": {**spec["textual"], "max_length": 30},
        }
    )
    model = config.build(VOCAB).to(device).train()
    if best:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4, foreach=best
    )
    steps = args.warmup + args.steps
    dataset = RandomCaptions(steps * spec["batch"], spec["size"])
    sampler = ResumableSampler(len(dataset), num_replicas=1, rank=0)
    loader = DataLoader(
        dataset,
        batch_size=spec["batch"],
        sampler=sampler,
        collate_fn=dataset.collate,
        drop_last=True,
        pin_memory=device.type == "cuda",
    )
    stamps: list[float] = []

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    if args.row == "plain fp32":
        stamps.append(time.perf_counter())
        for batch in loader:
            batch = batch.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = model(batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
            sync()
            stamps.append(time.perf_counter())
    else:
        from virtex_train.hooks import LoggingHook, RunLog
        from virtex_train.trainer import Hook, StepResult, Trainer

        class Stamp(Hook):
            def before_train(self, trainer: Trainer) -> None:
                stamps.append(time.perf_counter())

            def after_step(self, trainer: Trainer, result: StepResult) -> None:
                sync()
                stamps.append(time.perf_counter())

        with tempfile.TemporaryDirectory() as logs:
            trainer = Trainer(
                model,
                optimizer,
                loader,
                num_steps=steps,
                device=device,
                sampler=sampler,
                lr_factor=lambda step: 1.0 - step / (2 * steps),
                clip_grad_norm=10.0,
                precision="bf16" if best else "fp32",
                channels_last=best,
                hooks=[LoggingHook(RunLog(logs), every=20, progress=False), Stamp()],
                handle_signals=False,
            )
            trainer.train()
    times = [b - a for a, b in zip(stamps, stamps[1:])][args.warmup :]
    print(json.dumps({"seconds": min(times), "all": times, "peak_gib": _peak_gib(device)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per process")
    parser.add_argument("--rounds", type=int, default=2, help="processes per row, interleaved")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated model rows")
    parser.add_argument("--quick", action="store_true", help="tiny model, 1 round of 2 steps")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--row", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    models = list(QUICK) if args.quick else args.models.split(",")
    if args.quick:
        args.warmup, args.steps, args.rounds = 1, 2, 1
    print(
        f"training loop throughput on {args.device}, {args.threads} thread(s); best step of "
        f"{args.rounds} interleaved round(s) x {args.steps} steps (after {args.warmup} warm-up), "
        "data loading and optimiser included"
    )
    print("| model | batch | px | loop | s/step | img/s | vs plain fp32 | peak memory GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for name in models:
        spec = {**MODELS, **QUICK}[name]
        results: dict[str, list[dict[str, float]]] = {row: [] for row in ROWS}
        failures: dict[str, str] = {}
        for _ in range(args.rounds):
            for row in ROWS:
                command = [
                    sys.executable,
                    __file__,
                    "--worker",
                    f"--model={name}",
                    f"--row={row}",
                    f"--warmup={args.warmup}",
                    f"--steps={args.steps}",
                    f"--device={args.device}",
                    f"--threads={args.threads}",
                ]
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    failures[row] = (done.stderr.strip().splitlines() or ["?"])[-1]
                    continue
                results[row].append(json.loads(done.stdout.strip().splitlines()[-1]))
        baseline = None
        for row, runs in results.items():
            prefix = f"| {name} | {spec['batch']} | {spec['size']} | {row} |"
            if not runs:
                print(f"{prefix} failed: {failures.get(row, '?')} ||||")
                continue
            seconds = min(run["seconds"] for run in runs)
            throughput = spec["batch"] / seconds
            baseline = baseline or throughput
            peak = max(run["peak_gib"] for run in runs)
            print(
                f"{prefix} {seconds:.3f} | {throughput:.2f} | {throughput / baseline:.3f}x | "
                f"{peak:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
