"""Captioning throughput of ``virtex-eval caption``: beam search (5 beams) vs greedy decoding.

End to end through ``virtex_eval.captioner.Captioner.caption_files``, as the command runs it:
JPEG files (640x480) are read and preprocessed (shorter side 256, centre crop 224, ImageNet
normalisation), the visual backbone runs once per batch, then the KV-cached decoder. The model
is a randomly initialised R-50 + L1 H512 (8 heads, FFN 2048) bicaptioning model with a 10,000-token
BPE vocabulary. A random model hardly ever emits [EOS], so every caption runs all ``--max-steps``
steps: the figures are the worst case of a trained model's.

    python benchmarks/eval_caption.py               # 32 images, batch 8, 30 steps, best of 2
    python benchmarks/eval_caption.py --quick       # 4 images, 10 steps, 1 round (smoke test)
    python benchmarks/eval_caption.py --device cuda
    python benchmarks/eval_caption.py --metrics     # metrics: ours vs pycocoevalcap, 5000 x 5 refs

Prints images/s for the "preprocess + visual forward" baseline, greedy and beam 5.
"""

from __future__ import annotations

import argparse
import random
import string
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
for package in ("virtex-data", "virtex-models", "virtex-eval"):
    sys.path.insert(0, str(ROOT / "packages" / package / "src"))

from virtex_data.tokenizer import CaptionTokenizer  # noqa: E402
from virtex_eval.captioner import Captioner, DecodeSettings  # noqa: E402
from virtex_eval.images import ImageFileDataset, eval_transform  # noqa: E402
from virtex_models import Captioning, ModelConfig, VocabSpec  # noqa: E402

VOCAB_SIZE = 10000


def make_tokenizer(size: int) -> CaptionTokenizer:
    """A BPE vocabulary of exactly ``size`` tokens from random words (the size is what costs)."""
    rng = random.Random(0)
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 9))) for _ in range(6000)]
    captions = [" ".join(rng.choices(words, k=10)) for _ in range(4000)]
    tokenizer = CaptionTokenizer.train(captions, vocab_size=size, min_frequency=1)
    if tokenizer.vocab_size != size:
        raise RuntimeError(f"tokenizer stopped at {tokenizer.vocab_size} tokens, wanted {size}")
    return tokenizer


def make_images(folder: Path, count: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        base = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
        image = Image.fromarray(base).resize((640, 480), Image.Resampling.BICUBIC)
        path = folder / f"{index:012d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def build(tokenizer: CaptionTokenizer, max_steps: int, device: str) -> Captioner:
    torch.manual_seed(0)
    special = tokenizer.special
    vocab = VocabSpec(
        size=tokenizer.vocab_size,
        pad=special.pad,
        unk=special.unk,
        sos=special.sos,
        eos=special.eos,
        mask=special.mask,
    )
    config = ModelConfig.from_dict(
        {
            "kind": "bicaptioning",
            "visual": {"name": "resnet50"},
            "textual": {"layers": 1, "width": 512, "heads": 8, "ffn": 2048, "max_length": 30},
            "decoder": {"mode": "beam", "beam_size": 5, "max_steps": max_steps},
        }
    )
    objective = config.build(vocab)
    assert isinstance(objective, Captioning)
    return Captioner(objective, tokenizer, eval_transform(224), device)


def visual_only(captioner: Captioner, paths: list[Path], batch_size: int) -> None:
    dataset = ImageFileDataset(paths, captioner.transform)
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            images = torch.stack(
                [dataset[i][1] for i in range(start, min(start + batch_size, len(dataset)))]
            )
            captioner.objective.visual(images.to(captioner.device))
    if captioner.device.type == "cuda":
        torch.cuda.synchronize()


def best_time(function: object, rounds: int, device: torch.device) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        function()  # type: ignore[operator]
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def metrics_speed(images: int) -> None:
    """Time our metrics against pycocoevalcap (when installed) on a random corpus."""
    from virtex_eval.metrics import evaluate_captions

    rng = random.Random(0)
    words = [
        "a",
        "the",
        "dog",
        "cat",
        "man",
        "woman",
        "on",
        "in",
        "of",
        "with",
        "sitting",
        "standing",
        "red",
        "blue",
        "table",
        "street",
        "two",
        "people",
        "is",
        "are",
        "next",
        "to",
        "near",
        "large",
        "small",
        "white",
        "black",
        "plate",
        "food",
        "pizza",
        "bus",
        "train",
    ]

    def sentence() -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(6, 14)))

    predictions = {i: sentence() for i in range(images)}
    references = {i: [sentence() for _ in range(5)] for i in range(images)}
    start = time.perf_counter()
    ours = evaluate_captions(predictions, references, tokenized=True)
    rows = [("virtex_eval.metrics, pre-tokenised", time.perf_counter() - start)]
    start = time.perf_counter()
    evaluate_captions(predictions, references)
    rows.append(("virtex_eval.metrics + Python PTB tokenisation", time.perf_counter() - start))
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError:
        print("(pycocoevalcap not installed: no comparison)", file=sys.stderr)
    else:
        results = {key: [value] for key, value in predictions.items()}
        start = time.perf_counter()
        cider, _ = Cider().compute_score(references, results)
        Bleu(4).compute_score(references, results, verbose=0)
        Rouge().compute_score(references, results)
        rows.append(
            ("pycocoevalcap Cider + Bleu + Rouge, pre-tokenised", time.perf_counter() - start)
        )
        print(f"CIDEr ours {ours.corpus['CIDEr']:.12f} pycocoevalcap {cider:.12f}", file=sys.stderr)
    print(f"\nCIDEr-D + BLEU-1..4 + ROUGE-L, {images} images x 5 references\n")
    print("| implementation | seconds |")
    print("|---|---|")
    for label, seconds in rows:
        print(f"| {label} | {seconds:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds (best is reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="4 images, 10 steps, 1 round")
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="time the caption metrics (5000 images x 5 refs) against pycocoevalcap instead",
    )
    args = parser.parse_args()
    if args.metrics:
        metrics_speed(500 if args.quick else 5000)
        return
    if args.quick:
        args.images, args.max_steps, args.rounds, args.batch_size = 4, 10, 1, 4
    if args.threads:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    tokenizer = make_tokenizer(VOCAB_SIZE)
    captioner = build(tokenizer, args.max_steps, args.device)
    print(f"setup (tokenizer + model) {time.perf_counter() - start:.1f} s", file=sys.stderr)
    device = captioner.device
    with tempfile.TemporaryDirectory(prefix="virtex-bench-") as folder:
        paths = make_images(Path(folder), args.images)
        # Warm-up (allocator, kernels) on one batch of each kind.
        captioner.caption_files(paths[: args.batch_size], DecodeSettings(beam_size=5, max_steps=2))
        rows = []
        visual = best_time(
            lambda: visual_only(captioner, paths, args.batch_size), args.rounds, device
        )
        rows.append(("preprocess + visual forward (no decoding)", visual))
        captions: dict[str, list[str]] = {}
        for label, settings in (
            ("greedy", DecodeSettings(beam_size=1, max_steps=args.max_steps)),
            ("beam 5", DecodeSettings(beam_size=5, max_steps=args.max_steps)),
        ):

            def run(settings: DecodeSettings = settings, label: str = label) -> None:
                captions[label] = captioner.caption_files(
                    paths, settings, batch_size=args.batch_size
                )

            rows.append((label, best_time(run, args.rounds, device)))
    steps = {label: max(len(c.split()) for c in caps) for label, caps in captions.items()}
    threads = torch.get_num_threads() if device.type == "cpu" else "-"
    print(
        f"\nR-50 + L1 H512 bicaptioning, vocab {VOCAB_SIZE}, 224 px, {args.images} JPEGs 640x480, "
        f"batch {args.batch_size}, {args.max_steps} steps, device {device}, threads {threads}, "
        f"best of {args.rounds}\n"
    )
    print("| decoding | images/s | s/image | vs greedy |")
    print("|---|---|---|---|")
    greedy = dict(rows)["greedy"]
    for label, seconds in rows:
        ratio = f"{greedy / seconds:.2f}x" if label != rows[0][0] else "-"
        print(f"| {label} | {args.images / seconds:.2f} | {seconds / args.images:.3f} | {ratio} |")
    print(f"\n(words in the longest caption: {steps})", file=sys.stderr)


if __name__ == "__main__":
    main()
