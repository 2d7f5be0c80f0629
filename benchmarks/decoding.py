"""Beam-search decoding: KV-cached (virtex_models.decoding) vs naive full recompute.

The naive decoder is what the original VirTex did: at every step it repeats the image grid per
beam, re-projects it and re-runs the whole Transformer over the whole prefix. Ours projects the
image once per image, computes cross-attention keys/values once, and runs one token per step
through a self-attention key/value cache. [EOS] is suppressed so that every step runs.

    python benchmarks/decoding.py            # R-50/H1024 and R-18/H512, 8 images, beam 5, 30 tokens
    python benchmarks/decoding.py --quick    # 1 image, 10 tokens (a smoke test)
    python benchmarks/decoding.py --end-to-end --repeats 5   # generate(): precisions x modes
    python benchmarks/decoding.py --profile greedy   # torch.profiler: where a decode step goes

Prints seconds per image (decoding only; the shared visual forward is reported apart) and the
speed-up of the cached decoder; both decoders must return the same captions.

``--end-to-end`` times ``Captioning.generate`` (visual forward + decoding) of the R-50/H1024
bicaptioning model on 8 images for beam 5, ``legacy`` (beam 5) and greedy, in fp32 (the code
path of the previous release: its captions are bit-identical), with the visual forward in bf16
(``visual_bf16``) and with the decoder's products in bf16 too (``decoder_bf16``). Runs alternate
between settings and the median is reported, with the ratio to this run's fp32 and to the
original VirTex v1.4's figures measured on the reference machine (given constants).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "packages" / "virtex-models" / "src"))

from virtex_models import Captioning, ModelConfig, TransformerTextualHead, VocabSpec
from virtex_models.decoding import DecoderConfig, beam_search

VOCAB = VocabSpec(size=10000, pad=0, unk=1, sos=2, eos=3, mask=4)
SETTINGS = {
    "R-50 / L1 H1024": ("resnet50", 1024, 16, 4096),
    "R-18 / L1 H512": ("resnet18", 512, 8, 2048),
}


@torch.no_grad()
def naive_beam(head: TransformerTextualHead, grid: Tensor, beams: int, steps: int) -> Tensor:
    """Beam search that recomputes everything at every step (the original's strategy)."""
    images = grid.shape[0]
    rows = images * beams
    expanded = grid.repeat_interleave(beams, dim=0)  # the image grid copied per beam
    scores = torch.zeros(images, beams)
    scores[:, 1:] = float("-inf")
    sequences = torch.full((rows, 1), VOCAB.sos, dtype=torch.long)
    offsets = (torch.arange(images) * beams)[:, None]
    for _ in range(steps):
        lengths = torch.full((rows,), sequences.shape[1])
        logits = head(expanded, sequences, lengths)[:, -1]
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        log_probs[:, VOCAB.eos] = float("-inf")
        vocab = log_probs.shape[-1]
        candidates = (scores.reshape(rows, 1) + log_probs).reshape(images, beams * vocab)
        scores, chosen = candidates.topk(beams, dim=-1)
        parents = (offsets + chosen // vocab).reshape(rows)
        sequences = torch.cat([sequences[parents], (chosen % vocab).reshape(rows, 1)], dim=1)
    best = offsets[:, 0] + scores.argmax(dim=-1)
    return sequences[best, 1:]


def timed(function: Callable[[], Tensor], repeats: int) -> tuple[float, Tensor]:
    best, result = float("inf"), torch.empty(0)
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def run_setting(
    label: str, backbone: str, width: int, heads: int, ffn: int, args: argparse.Namespace
) -> str:
    """One table row: time the visual forward, the naive and the cached decoder."""
    torch.manual_seed(0)
    config = ModelConfig.from_dict(
        {
            "kind": "captioning",
            "visual": {"name": backbone},
            "textual": {
                "layers": 1,
                "width": width,
                "heads": heads,
                "ffn": ffn,
                "max_length": max(30, args.steps),
            },
        }
    )
    model = config.build(VOCAB).eval()
    assert isinstance(model, Captioning)
    head = model.textual
    images = torch.randn(args.images, 3, args.size, args.size)
    with torch.no_grad():
        visual_s, grid = timed(lambda: model.visual(images), args.repeats)
        naive_s, naive = timed(lambda: naive_beam(head, grid, args.beams, args.steps), args.repeats)
        cached_s, cached = timed(
            lambda: beam_search(
                head,
                head.start(grid, beams=args.beams),
                sos=VOCAB.sos,
                eos=VOCAB.eos,
                pad=VOCAB.pad,
                max_steps=args.steps,
                min_length=args.steps,
            ),
            args.repeats,
        )
    same = torch.equal(naive, cached)
    n = args.images
    return (
        f"| {label} | {visual_s / n:.3f} | {naive_s / n:.3f} | {cached_s / n:.3f} | "
        f"{naive_s / cached_s:.1f}x{'' if same else ' (captions differ!)'} |"
    )


#: The original VirTex v1.4 (same model, 8 images, 30 tokens, 2-core AMD Zen 4, torch 2.14.1),
#: visual forward + decoding, seconds: measured once by hand (it cannot be a dependency).
ORIGINAL_SECONDS = {"beam": 11.19, "legacy": 11.19, "greedy": 3.69}
PRECISIONS = {
    "fp32 (= before)": {"visual_bf16": "off", "decoder_bf16": False},
    "bf16 visual": {"visual_bf16": "on", "decoder_bf16": False},
    "bf16 visual + decoder": {"visual_bf16": "on", "decoder_bf16": True},
}


def end_to_end(args: argparse.Namespace) -> None:
    """Table of ``generate`` seconds for 8 images: modes x precisions, medians of alternating
    runs, ratios vs this run's fp32 and vs the original's given figures."""
    torch.manual_seed(0)
    config = ModelConfig.from_dict(
        {
            "kind": "bicaptioning",
            "visual": {"name": "resnet50"},
            "textual": {"layers": 1, "width": 1024, "heads": 16, "ffn": 4096, "max_length": 30},
        }
    )
    model = config.build(VOCAB).eval()
    assert isinstance(model, Captioning)
    images = torch.randn(args.images, 3, args.size, args.size)
    modes = {
        # [EOS] suppressed so that every step runs; legacy has no min_length (a random model
        # hardly ever emits [EOS]; the steps actually run are printed).
        "beam": {"mode": "beam", "beam_size": args.beams, "min_length": args.steps},
        "legacy": {"mode": "legacy", "beam_size": args.beams},
        "greedy": {"mode": "greedy", "min_length": args.steps},
    }
    times: dict[tuple[str, str], list[float]] = {}
    steps_run: dict[str, int] = {}
    with torch.no_grad():
        for mode in modes.values():  # warm-up (oneDNN primitive caches, autocast)
            for precision in PRECISIONS.values():
                model.generate(images[:1], max_steps=2, **mode, **precision)  # type: ignore[arg-type]
        for _ in range(args.repeats):
            for name, mode in modes.items():
                for label, precision in PRECISIONS.items():
                    start = time.perf_counter()
                    out = model.generate(images, max_steps=args.steps, **mode, **precision)  # type: ignore[arg-type]
                    times.setdefault((name, label), []).append(time.perf_counter() - start)
                    steps_run[name] = int(out.shape[1])
    print(
        f"generate(): R-50 + L1 H1024 bicaptioning, vocab {VOCAB.size}, {args.images} images of "
        f"{args.size} px, {args.steps} tokens, {args.threads} threads, median of {args.repeats} "
        f"alternating runs; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    comparable = (args.images, args.steps, args.size, args.beams) == (8, 30, 224, 5)
    print(
        f"| mode | precision | steps | s / {args.images} images | vs fp32 (this run) "
        "| original (given) | vs original |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in modes:
        base = statistics.median(times[(name, next(iter(PRECISIONS)))])
        for label in PRECISIONS:
            seconds = statistics.median(times[(name, label)])
            original = ORIGINAL_SECONDS[name]
            versus = f"{original:.2f} | {original / seconds:.1f}x" if comparable else "n/a | n/a"
            print(
                f"| {name} | {label} | {steps_run[name]} | {seconds:.3f} | {base / seconds:.2f}x | "
                f"{versus} |"
            )


def profile_decoding(args: argparse.Namespace) -> None:
    """torch.profiler table of one fp32 decode (``--profile greedy|beam|legacy``, 8 images)."""
    from torch.profiler import profile

    torch.manual_seed(0)
    config = ModelConfig.from_dict(
        {
            "kind": "bicaptioning",
            "visual": {"name": "resnet50"},
            "textual": {"layers": 1, "width": 1024, "heads": 16, "ffn": 4096, "max_length": 30},
        }
    )
    model = config.build(VOCAB).eval()
    assert isinstance(model, Captioning)
    kwargs = {"min_length": args.steps} if args.profile != "legacy" else {}
    with torch.no_grad():
        grid = model.visual(torch.randn(args.images, 3, args.size, args.size))
        model._decode(grid, DecoderConfig(mode=args.profile, max_steps=2), None)  # warm-up
        settings = DecoderConfig(mode=args.profile, max_steps=args.steps, **kwargs)
        with profile() as profiler:
            model._decode(grid, settings, None)
    print(f"{args.profile}: {args.images} images, {args.steps} steps, fp32, {args.threads} threads")
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=8, help="images per run (default 8)")
    parser.add_argument("--steps", type=int, default=30, help="tokens per caption (default 30)")
    parser.add_argument("--beams", type=int, default=5)
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--repeats", type=int, default=2, help="best of N runs (default 2)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: robust on a shared CPU)"
    )
    parser.add_argument("--quick", action="store_true", help="1 image, 10 tokens, 1 repeat")
    parser.add_argument(
        "--end-to-end", action="store_true", help="generate(): modes x fp32/bf16 (see above)"
    )
    parser.add_argument(
        "--profile", choices=["greedy", "beam", "legacy"], help="torch.profiler table of a decode"
    )
    args = parser.parse_args()
    if args.quick:
        args.images, args.steps, args.repeats = 1, 10, 1
    torch.set_num_threads(args.threads)
    if args.end_to_end:
        end_to_end(args)
        return
    if args.profile:
        profile_decoding(args)
        return
    print(
        f"beam {args.beams}, {args.steps} tokens ([EOS] suppressed), {args.images} images of "
        f"{args.size} px, vocab {VOCAB.size}, {args.threads} threads, best of {args.repeats}"
    )
    header = "| model | visual fwd s/img | naive decode s/img | KV-cached decode s/img | speed-up |"
    print(header)
    print("|---|---|---|---|---|")
    for label, sizes in SETTINGS.items():
        print(run_setting(label, *sizes, args))


if __name__ == "__main__":
    main()
