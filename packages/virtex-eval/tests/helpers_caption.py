"""Tiny captioning checkpoints and images for the captioning, zero-shot and report tests."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from virtex_data.tokenizer import CaptionTokenizer
from virtex_eval.images import eval_transform
from virtex_models import ModelConfig, VocabSpec
from virtex_models.pretrained import ModelSpec, checkpoint_dict

#: Solid-colour images and the one caption each is trained on.
SCENES = {
    "red.png": ((220, 30, 30), "a red square on the grass"),
    "blue.png": ((30, 40, 220), "two blue circles in the sky"),
    "green.png": ((30, 200, 40), "a green tree near a house"),
}
IMAGE_SIZE = 32


@dataclass
class Batch:
    image_ids: Tensor
    images: Tensor
    tokens: Tensor
    lengths: Tensor


def write_images(folder: Path) -> list[Path]:
    """The :data:`SCENES` images (48x40 px, so resize + crop does something) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, (colour, _) in SCENES.items():
        path = folder / name
        Image.new("RGB", (48, 40), colour).save(path)
        paths.append(path)
    return paths


def tokenizer() -> CaptionTokenizer:
    captions = [caption for _, caption in SCENES.values()]
    captions += ["a photo of a red square", "a photo of a blue circle", "a photo of a green tree"]
    return CaptionTokenizer.train(captions * 4, vocab_size=80, min_frequency=1)


def vocab_of(tok: CaptionTokenizer, size: int | None = None) -> VocabSpec:
    s = tok.special
    return VocabSpec(
        size=size or tok.vocab_size, pad=s.pad, unk=s.unk, sos=s.sos, eos=s.eos, mask=s.mask
    )


def model_config(kind: str = "bicaptioning", max_length: int = 16) -> ModelConfig:
    return ModelConfig.from_dict(
        {
            "kind": kind,
            "visual": {"kind": "torchvision", "name": "resnet18", "frozen": True},
            "textual": {
                "layers": 1,
                "width": 32,
                "heads": 2,
                "ffn": 64,
                "dropout": 0.0,
                "max_length": max_length,
            },
            "decoder": {"mode": "beam", "beam_size": 2, "max_steps": 12},
        }
    )


def encode(tok: CaptionTokenizer, captions: list[str]) -> tuple[Tensor, Tensor]:
    s = tok.special
    rows = [[s.sos, *tok.encode(c), s.eos] for c in captions]
    width = max(len(r) for r in rows)
    tokens = torch.full((len(rows), width), s.pad, dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row)
    return tokens, torch.tensor([len(r) for r in rows])


def scene_tensors(folder: Path) -> tuple[Tensor, list[str]]:
    """Preprocessed :data:`SCENES` images and their captions."""
    transform = eval_transform(IMAGE_SIZE)
    images = []
    for name in SCENES:
        images.append(transform.image(Image.open(folder / name)))
    return torch.stack(images), [caption for _, caption in SCENES.values()]


def train_objective(
    kind: str, tok: CaptionTokenizer, images: Tensor, captions: list[str], steps: int
) -> torch.nn.Module:
    """A tiny objective overfitted to one caption per image (Adam, full batch)."""
    torch.manual_seed(0)
    objective = model_config(kind).build(vocab_of(tok))
    objective.train()
    tokens, lengths = encode(tok, captions)
    batch = Batch(torch.arange(len(captions)), images, tokens, lengths)
    optimizer = torch.optim.Adam(objective.parameters(), lr=3e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        objective(batch).loss.backward()
        optimizer.step()
    return objective.eval()


def checkpoint(
    objective: torch.nn.Module,
    tok: CaptionTokenizer,
    kind: str = "bicaptioning",
    *,
    num_classes: int | None = None,
    with_config: bool = True,
) -> dict[str, Any]:
    spec = ModelSpec(config=model_config(kind), vocab=vocab_of(tok), num_classes=num_classes)
    data = checkpoint_dict(objective, spec)
    data["tokenizer"] = tok.to_json()
    if with_config:
        data["config"] = f"seed: 0\ndata:\n  transform:\n    image_size: {IMAGE_SIZE}\n"
    return data


@functools.cache
def trained(kind: str = "bicaptioning") -> tuple[dict[str, Any], CaptionTokenizer]:
    """A checkpoint overfitted to :data:`SCENES` (cached per process: ~3 s to train)."""
    import tempfile

    tok = tokenizer()
    with tempfile.TemporaryDirectory() as folder:
        write_images(Path(folder))
        images, captions = scene_tensors(Path(folder))
    objective = train_objective(kind, tok, images, captions, steps=100)
    return checkpoint(objective, tok, kind), tok
