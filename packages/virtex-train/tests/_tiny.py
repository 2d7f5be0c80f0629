"""Tiny data and models shared by this package's tests (imported by path, not a conftest)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from virtex_data import DataConfig, build_dataset
from virtex_data.lmdb_writer import build_lmdb
from virtex_data.sampler import ResumableSampler
from virtex_data.synth import generate
from virtex_data.tokenizer import CaptionTokenizer
from virtex_data.transforms import TransformConfig
from virtex_models import ModelConfig, VocabSpec


@dataclass
class TinyData:
    root: Path
    train_lmdb: Path
    val_lmdb: Path
    tokenizer: Path

    def data_config(self) -> DataConfig:
        return DataConfig(
            train_lmdb=str(self.train_lmdb),
            val_lmdb=str(self.val_lmdb),
            tokenizer=str(self.tokenizer),
            max_caption_length=20,
            transform=TransformConfig(image_size=32),
        )


def make_tiny_data(root: Path, train: int = 16, val: int = 8) -> TinyData:
    """Synth images (32 px), a BPE tokenizer trained on their captions, two LMDB files."""
    data = TinyData(root, root / "train.lmdb", root / "val.lmdb", root / "tokenizer.json")
    if data.val_lmdb.exists():
        return data
    generate(root, train=train, val=val, size=32, workers=1, progress=False)
    annotations = root / "annotations"
    captions = [
        a["caption"]
        for a in json.loads((annotations / "captions_train.json").read_text())["annotations"]
    ]
    tokenizer = CaptionTokenizer.train(captions, vocab_size=120)
    tokenizer.save(data.tokenizer)
    for split in ("train", "val"):
        build_lmdb(annotations / f"captions_{split}.json", root / split, root / f"{split}.lmdb")
    return data


def tiny_model_config(dropout: float = 0.1) -> ModelConfig:
    return ModelConfig.from_dict(
        {
            "kind": "bicaptioning",
            "visual": {"name": "resnet18"},
            "textual": {"layers": 1, "width": 32, "heads": 2, "ffn": 64, "dropout": dropout},
            "decoder": {"mode": "greedy", "max_steps": 8},
        }
    )


def train_loader(
    data: TinyData, batch_size: int = 4, seed: int = 0
) -> tuple[DataLoader, ResumableSampler, CaptionTokenizer]:
    tokenizer = CaptionTokenizer.from_file(data.tokenizer)
    dataset = build_dataset(data.data_config(), "train", "captioning", tokenizer)
    sampler = ResumableSampler(len(dataset), num_replicas=1, rank=0, seed=seed)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=dataset.collate,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )
    return loader, sampler, tokenizer


TOY_VOCAB = VocabSpec(size=50, pad=0, unk=1, sos=2, eos=3, mask=4)


class ToyCaptions(torch.utils.data.Dataset[int]):
    """``n`` random images (32 px) with random captions, in memory; items are indices.

    ``collate(indices)`` returns a :class:`virtex_data.CaptionBatch`, so a ``DataLoader`` over it
    behaves like one over the LMDB datasets without any file.
    """

    def __init__(self, n: int = 16, size: int = 32, seed: int = 0) -> None:
        from virtex_data import CaptionBatch

        self._batch = CaptionBatch
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, size, size, generator=g)
        self.lengths = torch.randint(4, 10, (n,), generator=g)
        self.tokens = torch.zeros(n, 10, dtype=torch.long)
        for i, length in enumerate(self.lengths.tolist()):
            self.tokens[i, 0] = TOY_VOCAB.sos
            self.tokens[i, 1 : length - 1] = torch.randint(
                5, TOY_VOCAB.size, (length - 2,), generator=g
            )
            self.tokens[i, length - 1] = TOY_VOCAB.eos

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> int:
        return index

    def collate(self, indices: list[int]) -> object:
        idx = torch.tensor(indices)
        longest = int(self.lengths[idx].max())
        return self._batch(
            image_ids=idx.clone(),
            images=self.images[idx].clone(),
            tokens=self.tokens[idx, :longest].clone(),
            lengths=self.lengths[idx].clone(),
        )


def toy_model(dropout: float = 0.0, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return tiny_model_config(dropout).build(TOY_VOCAB)
