"""The quickstart: built-in data (generated once), then a small CPU pretraining run.

``virtex-train pretrain`` without a CONFIG runs :func:`run_quickstart`: it writes the synthetic
shapes dataset (``virtex_data.synth``) where the quickstart config expects it (``data/synth/``
under the working directory), trains its BPE vocabulary, converts both splits to LMDB, and
pretrains bicaptioning with ResNet-18 on 64 px images and a 1-layer, 128-wide head.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from virtex_data import CaptionTokenizer, DataConfig
from virtex_data.lmdb_writer import build_lmdb
from virtex_data.synth import generate

__all__ = ["QUICKSTART_IMAGES", "ensure_builtin_data"]

#: Images per split of the quickstart's built-in dataset.
QUICKSTART_IMAGES = {"train": 5000, "val": 500}


def ensure_builtin_data(
    data: DataConfig,
    *,
    images: dict[str, int] | None = None,
    size: int = 64,
    workers: int | None = None,
    seed: int = 0,
    echo: Callable[[str], None] = print,
) -> bool:
    """Create the built-in dataset behind ``data`` unless its three files exist.

    The images and COCO-style annotations go into the folder of ``data.train_lmdb``; then the
    tokenizer (BPE, at most 10000 tokens; the synthetic captions support ~220) and the two LMDB
    files are written to the paths ``data`` names.

    Args:
        seed: the scenes are a function of ``seed`` (``virtex_data.synth.generate``).

    Returns:
        Whether anything was built.
    """
    if data.train_lmdb is None:  # a streaming config: the built-in data is an LMDB file
        raise ValueError("the built-in data is built as data.train_lmdb, which is not set")
    targets = [Path(data.tokenizer), Path(data.train_lmdb), Path(data.val_lmdb)]
    if all(path.exists() for path in targets):
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
