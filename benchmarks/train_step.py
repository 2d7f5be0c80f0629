"""Training step (forward + backward) of bicaptioning R-50 + L1 H2048: memory format and bf16.

Compares, in the same run, four settings of the same model and batch (8 images of 224 px,
captions of 20 tokens, vocabulary 10000): fp32 NCHW (the baseline), ``channels_last``, bf16
autocast, and both. Each setting runs in a fresh subprocess so that its peak memory is its own
(peak RSS on CPU, ``torch.cuda.max_memory_allocated`` on CUDA).

    python benchmarks/train_step.py            # batch 8, 224 px, 2 rounds x (1 warm-up + 3 steps)
    python benchmarks/train_step.py --quick    # batch 2, 128 px, 1 + 1 steps (a smoke test)
    python benchmarks/train_step.py --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "packages" / "virtex-models" / "src"))

from virtex_models import ModelConfig, VocabSpec

VOCAB = VocabSpec(size=10000, pad=0, unk=1, sos=2, eos=3, mask=4)
SETTINGS = {
    "fp32 NCHW (baseline)": (False, False),
    "fp32 channels_last": (True, False),
    "bf16 autocast NCHW": (False, True),
    "bf16 autocast channels_last": (True, True),
}


@dataclass
class Batch:
    image_ids: torch.Tensor
    images: torch.Tensor
    tokens: torch.Tensor
    lengths: torch.Tensor


def worker(args: argparse.Namespace) -> None:
    """Run one setting and print one JSON line."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    config = ModelConfig.from_dict(
        {
            "kind": "bicaptioning",
            "visual": {"name": "resnet50", "channels_last": args.channels_last},
            "textual": {"layers": 1, "width": 2048, "heads": 32, "ffn": 8192, "max_length": 30},
        }
    )
    model = config.build(VOCAB).to(device).train()
    tokens = torch.randint(5, VOCAB.size, (args.batch, 20), device=device)
    tokens[:, 0], tokens[:, -1] = VOCAB.sos, VOCAB.eos
    batch = Batch(
        image_ids=torch.arange(args.batch, device=device),
        images=torch.randn(args.batch, 3, args.size, args.size, device=device),
        tokens=tokens,
        lengths=torch.full((args.batch,), 20, device=device),
    )
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()
    )
    times = []
    loss = float("nan")
    for step in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        model.zero_grad(set_to_none=True)
        with autocast:
            output = model(batch)
        output.loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
        loss = float(output.loss.detach())
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    seconds = min(times)  # the least disturbed step: other jobs share this machine
    print(json.dumps({"seconds": seconds, "peak_gib": peak, "loss": loss}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per process (best kept)")
    parser.add_argument(
        "--rounds", type=int, default=2, help="processes per setting, interleaved (default 2)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quick", action="store_true", help="batch 2, 128 px, 1 + 1 steps")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--channels-last", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.batch, args.size, args.warmup, args.steps, args.rounds = 2, 128, 1, 1, 1
    if args.worker:
        worker(args)
        return
    print(
        f"bicaptioning R-50 + L1 H2048, batch {args.batch}, {args.size} px, forward + backward, "
        f"{args.device}, {args.threads} threads, best step of {args.rounds} interleaved rounds x "
        f"{args.steps} steps (after {args.warmup} warm-up)"
    )
    print("| setting | s/step | img/s | vs baseline | peak memory GiB | loss |")
    print("|---|---|---|---|---|---|")
    results: dict[str, list[dict[str, float]]] = {label: [] for label in SETTINGS}
    failures: dict[str, str] = {}
    # Rounds interleave the settings so that a burst of load from other jobs does not hit one
    # setting only; the best step of all rounds is reported.
    for _ in range(args.rounds):
        for label, (channels_last, bf16) in SETTINGS.items():
            command = [
                sys.executable,
                __file__,
                "--worker",
                f"--batch={args.batch}",
                f"--size={args.size}",
                f"--warmup={args.warmup}",
                f"--steps={args.steps}",
                f"--device={args.device}",
                f"--threads={args.threads}",
            ]
            command += ["--channels-last"] * channels_last + ["--bf16"] * bf16
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                failures[label] = (done.stderr.strip().splitlines() or ["?"])[-1]
                continue
            results[label].append(json.loads(done.stdout.strip().splitlines()[-1]))
    baseline = None
    for label, runs in results.items():
        if not runs:
            print(f"| {label} | failed: {failures.get(label, '?')} |||||")
            continue
        seconds = min(run["seconds"] for run in runs)
        peak = max(run["peak_gib"] for run in runs)
        throughput = args.batch / seconds
        baseline = baseline or throughput
        print(
            f"| {label} | {seconds:.2f} | {throughput:.2f} | {throughput / baseline:.2f}x | "
            f"{peak:.2f} | {runs[0]['loss']:.3f} |"
        )


if __name__ == "__main__":
    main()
