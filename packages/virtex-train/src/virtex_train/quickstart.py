"""The quickstart: built-in data (generated once), then a small CPU pretraining run.

``virtex-train pretrain`` without a CONFIG first calls :func:`ensure_builtin_data`: it writes
the synthetic shapes dataset (``virtex_data.synth``) where the quickstart config expects it
(``data/synth/`` under the working directory), trains its BPE vocabulary and converts both
splits to LMDB; then it pretrains bicaptioning (ResNet-18, 32 px images, a 1-layer head) and
:func:`val_grounding` checks the model's greedy val captions against the scenes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from virtex_data import CaptionTokenizer, DataConfig, build_dataset
from virtex_data.lmdb_writer import build_lmdb
from virtex_data.synth import built_caption_order, generate
from virtex_data.synth_grounding import Grounding, grounding
from virtex_models.pretrained import load_objective
from virtex_models.registry import get_objective

__all__ = [
    "QUICKSTART_CAPTION_ORDER",
    "QUICKSTART_IMAGES",
    "ensure_builtin_data",
    "greedy_val_captions",
    "val_grounding",
]

#: Images per split of the quickstart's built-in dataset.
QUICKSTART_IMAGES = {"train": 5000, "val": 500}
#: The quickstart's captions name the largest object first (``virtex_data.synth.describe``).
#: Greedy decoding follows the most common way to start a caption; with objects named in a
#: random order that is "a small ..." about whichever object, and the largest object's colour
#: was named for 57-67% of val images; in salience order, 64-80% (configs/quickstart.yaml).
QUICKSTART_CAPTION_ORDER = "salience"


def ensure_builtin_data(
    data: DataConfig,
    *,
    images: dict[str, int] | None = None,
    size: int = 64,
    workers: int | None = None,
    seed: int = 0,
    caption_order: str = QUICKSTART_CAPTION_ORDER,
    echo: Callable[[str], None] = print,
) -> bool:
    """Create the built-in dataset behind ``data`` unless its three files exist.

    The images and COCO-style annotations go into the folder of ``data.train_lmdb``; then the
    tokenizer (BPE, at most 10000 tokens; the synthetic captions support ~220) and the two LMDB
    files are written to the paths ``data`` names.

    Args:
        seed: the scenes are a function of ``seed`` (``virtex_data.synth.generate``).
        caption_order: which object the captions name first (``virtex_data.synth.describe``):
            the quickstart's ``"salience"`` (largest first) or ``"random"`` (the task ablation's).

    Returns:
        Whether anything was built.
    """
    if data.train_lmdb is None:  # a streaming config: the built-in data is an LMDB file
        raise ValueError("the built-in data is built as data.train_lmdb, which is not set")
    targets = [Path(data.tokenizer), Path(data.train_lmdb), Path(data.val_lmdb)]
    if all(path.exists() for path in targets):
        built = built_caption_order(Path(data.val_lmdb).parent)
        if built not in (None, caption_order):
            echo(
                f"note: {Path(data.val_lmdb).parent} was built with captions in {built} order, "
                f"not {caption_order}; delete the folder to rebuild it (the quickstart's data "
                "names the largest object first since this release)"
            )
        return False
    counts = images or QUICKSTART_IMAGES
    root = Path(data.train_lmdb).parent
    annotations = root / "annotations"
    start = time.perf_counter()
    if not (annotations / "captions_val.json").is_file():
        echo(
            f"generating the built-in dataset ({counts['train']} + {counts['val']} images) "
            f"in {root}"
        )
        generate(
            root,
            train=counts["train"],
            val=counts["val"],
            size=size,
            seed=seed,
            workers=workers,
            caption_order=caption_order,
        )
    tokenizer_path = Path(data.tokenizer)
    if not tokenizer_path.is_file():
        captions = _captions(annotations / "captions_train.json")
        tokenizer = CaptionTokenizer.train(captions, vocab_size=10000)
        tokenizer.save(tokenizer_path)
        echo(f"vocabulary of {tokenizer.vocab_size} tokens -> {tokenizer_path}")
    sha = CaptionTokenizer.from_file(tokenizer_path).sha256
    for split, output in (("train", data.train_lmdb), ("val", data.val_lmdb)):
        if not Path(output).exists():
            build_lmdb(
                annotations / f"captions_{split}.json",
                root / split,
                output,
                workers=workers or 1,
                tokenizer_sha256=sha,
            )
    echo(f"built-in data ready in {time.perf_counter() - start:.0f} s")
    return True


def _captions(path: Path) -> Sequence[str]:
    return [entry["caption"] for entry in json.loads(path.read_text())["annotations"]]


def greedy_val_captions(
    checkpoint: str | os.PathLike[str],
    data: DataConfig,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 100,
) -> dict[int, str] | None:
    """Greedy captions (image id -> text) of every image of ``data``'s val LMDB, or ``None``
    when the checkpoint's objective does not caption."""
    objective, spec = load_objective(checkpoint, map_location=device)
    generate = getattr(objective, "generate", None)
    if generate is None:
        return None
    tokenizer = CaptionTokenizer.from_file(data.tokenizer)
    dataset = build_dataset(data, "val", get_objective(spec.config.kind).target, tokenizer)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=dataset.collate)
    captions: dict[int, str] = {}
    with torch.inference_mode():
        for batch in loader:
            tokens = generate(batch.images.to(device), mode="greedy")
            for image_id, row in zip(batch.image_ids.tolist(), tokens.tolist(), strict=True):
                captions[int(image_id)] = tokenizer.decode(row)
    return captions


def val_grounding(
    checkpoint: str | os.PathLike[str],
    data: DataConfig,
    *,
    device: str | torch.device = "cpu",
) -> Grounding | None:
    """:func:`greedy_val_captions` checked against the built-in scenes' attributes
    (:mod:`virtex_data.synth_grounding`).

    Returns ``None`` when ``data`` is not the built-in dataset (no ``attributes_val.json`` in
    ``annotations/`` next to the val LMDB) or the checkpoint's objective does not caption.
    """
    attributes = Path(data.val_lmdb).parent / "annotations" / "attributes_val.json"
    if not attributes.is_file():
        return None
    captions = greedy_val_captions(checkpoint, data, device=device)
    if captions is None:
        return None
    records = json.loads(attributes.read_text())["images"]
    return grounding(captions, records)
