"""Shared fixtures: a tiny built-in dataset, made once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from virtex_data.synth import generate


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 train / 12 val images of 32 px (PNG)."""
    root = tmp_path_factory.mktemp("synth")
    generate(root, train=40, val=12, size=32, seed=3, workers=1, progress=False)
    return root


@pytest.fixture(scope="session")
def synth_data(synth_root: Path) -> dict[str, Path]:
    """LMDB files and a tokenizer built from :func:`synth_root` with the public API."""
    from virtex_data.lmdb_writer import build_lmdb
    from virtex_data.sources import iter_captions
    from virtex_data.tokenizer import CaptionTokenizer

    ann = synth_root / "annotations"
    tokenizer = CaptionTokenizer.train(iter_captions([ann / "captions_train.json"]), 100)
    tokenizer.save(synth_root / "tokenizer.json")
    for split in ("train", "val"):
        build_lmdb(
            ann / f"captions_{split}.json",
            synth_root / split,
            synth_root / f"{split}.lmdb",
            progress=False,
        )
    return {
        "train": synth_root / "train.lmdb",
        "val": synth_root / "val.lmdb",
        "tokenizer": synth_root / "tokenizer.json",
        "train_instances": ann / "instances_train.json",
        "val_instances": ann / "instances_val.json",
    }
