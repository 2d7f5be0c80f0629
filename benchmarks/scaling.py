"""How cost grows: decode time against caption length and beam size, training img/s against batch.

Three curves, each measured in one run on one model (captioning, R-18 + L1 H512, vocabulary
10000, 224 px images for decoding so that the grid is 7 x 7 as in the paper's setting):

1. decode seconds per image against caption length (beam 5), KV-cached
   (``virtex_models.decoding.beam_search``) vs naive (the original's strategy: re-run the whole
   Transformer over the whole prefix, image grid copied per beam; ``naive_beam`` of
   ``benchmarks/decoding.py``). [EOS] is suppressed so that every step runs;
2. the same against beam size at a fixed length;
3. training images/s (forward + backward + SGD step) against batch size.

The naive decoder's step cost grows with the prefix (total ~ T^2), the cached one's stays
flat (total ~ T): the gap widens with length. Both decoders must return the same captions.

    python benchmarks/scaling.py                 # the README's run (a few minutes, 1 thread)
    python benchmarks/scaling.py --quick         # a smoke test (seconds)

Writes ``benchmarks/scaling.png`` (``--png``) and prints the tables in Markdown.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
for package in ("virtex-data", "virtex-models"):
    sys.path.insert(0, str(HERE.parent / "packages" / package / "src"))

from decoding import VOCAB, naive_beam  # noqa: E402  (benchmarks/decoding.py)

from virtex_data import CaptionBatch  # noqa: E402
from virtex_models import Captioning, ModelConfig  # noqa: E402
from virtex_models.decoding import beam_search  # noqa: E402


def best_of(function: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Least disturbed wall time of ``repeats`` calls (the machine is shared) and the result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def build(width: int, max_length: int) -> Captioning:
    torch.manual_seed(0)
    config = ModelConfig.from_dict(
        {
            "kind": "captioning",
            "visual": {"name": "resnet18"},
            "textual": {
                "layers": 1,
                "width": width,
                "heads": max(1, width // 64),
                "ffn": 4 * width,
                "max_length": max_length,
            },
        }
    )
    model = config.build(VOCAB)
    assert isinstance(model, Captioning)
    return model


def decode_point(
    model: Captioning, grid: Tensor, beams: int, length: int, repeats: int
) -> tuple[float, float, bool]:
    """(naive s/img, cached s/img, same captions) for one (beam, length)."""
    head = model.textual
    images = grid.shape[0]
    with torch.no_grad():
        naive_s, naive = best_of(lambda: naive_beam(head, grid, beams, length), repeats)
        cached_s, cached = best_of(
            lambda: beam_search(
                head,
                head.start(grid, beams=beams),
                sos=VOCAB.sos,
                eos=VOCAB.eos,
                pad=VOCAB.pad,
                max_steps=length,
                min_length=length,
            ),
            repeats,
        )
    return naive_s / images, cached_s / images, bool(torch.equal(naive, cached))


def train_point(model: Captioning, batch: int, size: int, steps: int) -> float:
    """Images/s of forward + backward + SGD step at one batch size (best step after 1 warm-up)."""
    tokens = torch.randint(5, VOCAB.size, (batch, 20))
    tokens[:, 0], tokens[:, -1] = VOCAB.sos, VOCAB.eos
    data = CaptionBatch(
        image_ids=torch.arange(batch),
        images=torch.randn(batch, 3, size, size),
        tokens=tokens,
        lengths=torch.full((batch,), 20),
    )
    model = copy.deepcopy(model).train()  # the caller's model stays in eval mode, unchanged
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(data).loss.backward()
        optimizer.step()

    step()  # warm-up
    seconds, _ = best_of(step, steps)
    return batch / seconds


def plot(path: Path, length_rows: list[Any], beam_rows: list[Any], train_rows: list[Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    lengths = [r[0] for r in length_rows]
    axes[0].plot(lengths, [r[1] * 1e3 for r in length_rows], "o-", label="naive (recompute)")
    axes[0].plot(lengths, [r[2] * 1e3 for r in length_rows], "s-", label="KV-cached")
    axes[0].set(xlabel="caption length (tokens)", ylabel="decode ms / image", title="beam 5")
    beams = [r[0] for r in beam_rows]
    axes[1].plot(beams, [r[1] * 1e3 for r in beam_rows], "o-", label="naive (recompute)")
    axes[1].plot(beams, [r[2] * 1e3 for r in beam_rows], "s-", label="KV-cached")
    axes[1].set(xlabel="beam size", ylabel="decode ms / image", title=f"{beam_rows[0][3]} tokens")
    axes[1].set_xscale("log", base=2)
    axes[1].set_xticks(beams, [str(b) for b in beams])
    batches = [r[0] for r in train_rows]
    axes[2].plot(batches, [r[1] for r in train_rows], "o-")
    axes[2].set(xlabel="batch size", ylabel="images / s", title="training step (fwd+bwd+SGD)")
    axes[2].set_xscale("log", base=2)
    axes[2].set_xticks(batches, [str(b) for b in batches])
    for ax in axes[:2]:
        ax.legend()
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=4, help="images decoded per point")
    parser.add_argument("--width", type=int, default=512, help="decoder width H")
    parser.add_argument("--lengths", default="5,10,20,30", help="caption lengths (beam 5)")
    parser.add_argument("--beams", default="1,2,5,10", help="beam sizes (at --beam-length)")
    parser.add_argument("--beam-length", type=int, default=20)
    parser.add_argument("--batches", default="1,2,4,8,16", help="training batch sizes")
    parser.add_argument("--train-size", type=int, default=128, help="training image side")
    parser.add_argument("--repeats", type=int, default=2, help="best of N per point and round")
    parser.add_argument("--rounds", type=int, default=2, help="sweeps, best kept (default 2)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--png", type=Path, default=HERE / "scaling.png")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    args = parser.parse_args()
    if args.quick:
        args.images, args.width, args.lengths, args.beams = 1, 64, "2,4", "1,2"
        args.beam_length, args.batches, args.train_size, args.repeats = 4, "2,4", 64, 1
        args.rounds = 1
    torch.set_num_threads(args.threads)
    lengths = [int(x) for x in args.lengths.split(",")]
    beam_sizes = [int(x) for x in args.beams.split(",")]
    batches = [int(x) for x in args.batches.split(",")]
    model = build(args.width, max([*lengths, args.beam_length, 20]) + 1).eval()
    with torch.no_grad():
        grid = model.visual(torch.randn(args.images, 3, 224, 224))
    print(
        f"captioning R-18 + L1 H{args.width}, vocab {VOCAB.size}, {args.images} images of 224 px "
        f"(grid {grid.shape[2]}x{grid.shape[3]}), {args.threads} thread(s), best of "
        f"{args.repeats} x {args.rounds} rounds; [EOS] suppressed"
    )
    # Rounds repeat the whole sweep and keep each point's best: a burst of load from other jobs
    # on a shared machine then spoils one round of a point, not the curve.
    decode: dict[tuple[int, int], tuple[float, float, bool]] = {}
    points = [(5, length) for length in lengths] + [(b, args.beam_length) for b in beam_sizes]
    speeds: dict[int, float] = {}
    for _ in range(args.rounds):
        for beams, length in dict.fromkeys(points):
            naive, cached, same = decode_point(model, grid, beams, length, args.repeats)
            old = decode.get((beams, length), (naive, cached, same))
            decode[(beams, length)] = (min(old[0], naive), min(old[1], cached), same and old[2])
        for batch in batches:
            speed = train_point(model, batch, args.train_size, args.repeats + 1)
            speeds[batch] = max(speeds.get(batch, 0.0), speed)
    print("\n| beam | tokens | naive ms/img | KV-cached ms/img | speed-up |")
    print("|---|---|---|---|---|")
    for beams, length in dict.fromkeys(points):
        naive, cached, same = decode[(beams, length)]
        flag = "" if same else " (captions differ!)"
        print(
            f"| {beams} | {length} | {naive * 1e3:.1f} | {cached * 1e3:.1f} | "
            f"{naive / cached:.1f}x{flag} |"
        )
    length_rows = [(length, *decode[(5, length)][:2]) for length in lengths]
    beam_rows = [(b, *decode[(b, args.beam_length)][:2], args.beam_length) for b in beam_sizes]
    print(f"\ntraining step, R-18 + L1 H{args.width}, {args.train_size} px, 20-token captions")
    print(f"| batch | img/s | vs batch {batches[0]} |")
    print("|---|---|---|")
    train_rows = [(batch, speeds[batch]) for batch in batches]
    for batch, throughput in train_rows:
        print(f"| {batch} | {throughput:.2f} | {throughput / train_rows[0][1]:.2f}x |")
    try:
        plot(args.png, length_rows, beam_rows, train_rows)
        print(f"\nplot: {args.png}")
    except ImportError:
        print("\nno plot: matplotlib is not installed (pip install matplotlib)")


if __name__ == "__main__":
    main()
