"""``demo/quickstart_figure.py``: the README's picture, drawn from a (tiny) quickstart run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from virtex_train import quickstart
from virtex_train.cli import main as train_main

ROOT = Path(__file__).resolve().parents[1]

TINY = [
    "model.textual.width=32",
    "model.textual.ffn=64",
    "model.decoder.max_steps=6",
    "train.batch_size=4",
    "train.num_steps=2",
    "train.val_every=2",
    "train.val_batches=1",
    "train.checkpoint_every=2",
]


def _figure_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "quickstart_figure", ROOT / "demo/quickstart_figure.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_figure_shows_val_images_with_their_captions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(quickstart, "QUICKSTART_IMAGES", {"train": 12, "val": 6})
    trained = CliRunner().invoke(train_main, ["pretrain", *TINY, "--no-progress"])
    assert trained.exit_code == 0, trained.output
    output = tmp_path / "figure.png"
    module = _figure_module()
    args = ["--run", "runs/quickstart", "--data", "data/synth", "--output", str(output)]
    drawn = CliRunner().invoke(module.main, [*args, "--images", "5"])
    assert drawn.exit_code == 0, drawn.output
    with Image.open(output) as image:
        # 5 images, 4 a row: two rows of (tile + text) under four tiles
        assert image.format == "PNG"
        assert image.size == (4 * module.TILE, 2 * (module.TILE + module.TEXT))
        # the second row holds one image: its tile is not blank, the rest of the row is white
        row = module.TILE + module.TEXT
        first = image.crop((0, row, module.TILE, row + module.TILE)).convert("L")
        rest = image.crop((module.TILE, row, 4 * module.TILE, row + module.TILE)).convert("L")
        assert first.getextrema()[0] < 200 and rest.getextrema() == (255, 255)
    # the summary it prints covers every captioned val image
    assert "grounding on 6 val images" in drawn.output
    records = json.loads((tmp_path / "data/synth/annotations/attributes_val.json").read_text())
    assert len(records["images"]) == 6
