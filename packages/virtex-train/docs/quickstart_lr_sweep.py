"""Loss after a short quickstart-sized run, for choosing the quickstart's learning rates.

Renders 1024 + 128 scenes of the built-in dataset in memory (virtex_data.synth), trains a BPE
vocabulary on their captions, then trains the quickstart model (``load_config(None)`` plus the
overrides given) on full 64 px images (no augmentation) with the package's optimiser and
schedule, one thread. Prints the mean training loss of the first and last 10 steps and the loss
on the 128 held-out images. Used for docs/CONFIGS.md::

    PYTHONPATH=packages/virtex-data/src:packages/virtex-models/src:packages/virtex-train/src \\
        python packages/virtex-train/docs/quickstart_lr_sweep.py 120 optim.lr=0.001
"""

from __future__ import annotations

import random
import sys
import time

import torch
import torchvision.transforms.v2.functional as F

from virtex_data import CaptionBatch, CaptionTokenizer
from virtex_data.synth import describe, render, sample_scene
from virtex_train.config import load_config
from virtex_train.optim import build_optimizer, clip_grad_norm, lr_factor
from virtex_train.pretrain import vocab_spec

TRAIN, VAL = 1024, 128


def main(steps: int, overrides: list[str]) -> None:
    torch.set_num_threads(1)
    rng = random.Random(0)
    scenes = [sample_scene(rng, 64) for _ in range(TRAIN + VAL)]
    captions = [describe(scene, rng, 5) for scene in scenes]
    tokenizer = CaptionTokenizer.train([c for cs in captions[:TRAIN] for c in cs], 10000)
    special = tokenizer.special
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    images = torch.stack(
        [
            (F.to_dtype(F.to_image(render(s)), torch.float32, scale=True) - mean) / std
            for s in scenes
        ]
    )

    def batch(indices: list[int], pick: random.Random) -> CaptionBatch:
        rows = [
            [special.sos, *tokenizer.encode(captions[i][pick.randrange(5)])[:28], special.eos]
            for i in indices
        ]
        tokens = torch.full((len(rows), max(map(len, rows))), special.pad)
        for j, row in enumerate(rows):
            tokens[j, : len(row)] = torch.tensor(row)
        return CaptionBatch(
            image_ids=torch.tensor(indices),
            images=images[indices],
            tokens=tokens,
            lengths=torch.tensor([len(row) for row in rows]),
        )

    vocab = vocab_spec(tokenizer)
    config = load_config(None, [*overrides, f"train.num_steps={steps}"])
    torch.manual_seed(0)
    objective = config.model.build(vocab)
    optimizer = build_optimizer(objective, config.optim)
    pick = random.Random(1)
    losses = []
    start = time.perf_counter()
    for step in range(steps):
        factor = lr_factor(step, config.optim.schedule, steps)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        objective.train()
        optimizer.zero_grad()
        output = objective(batch(pick.sample(range(TRAIN), config.train.batch_size), pick))
        output.loss.backward()
        clip_grad_norm(objective.parameters(), config.optim.clip_grad_norm)
        optimizer.step()
        losses.append(output.loss.item())
    seconds = time.perf_counter() - start
    objective.eval()
    with torch.no_grad():
        val = [
            objective(batch(list(range(TRAIN + k, TRAIN + k + 32)), random.Random(k))).loss.item()
            for k in range(0, VAL, 32)
        ]
    first, last = losses[:10], losses[-10:]
    print(
        f"{' '.join(overrides) or '(quickstart)'} | vocab {tokenizer.vocab_size} | "
        f"{seconds:.0f} s, {seconds / steps:.2f} s/step | first {sum(first) / len(first):.2f} "
        f"last {sum(last) / len(last):.2f} val {sum(val) / len(val):.2f}"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2:])
