"""The data batches satisfy the input Protocols that virtex-models declares (structurally); the
objective and target registries agree; a new objective reaches both command lines."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

from virtex_data import (
    IGNORE_INDEX,
    CaptionBatch,
    MaskedLMBatch,
    MultilabelBatch,
    TokenClassificationBatch,
)
from virtex_models import (
    IGNORE_INDEX as MODELS_IGNORE_INDEX,
)
from virtex_models import (
    CaptionInputs,
    MaskedLMInputs,
    MultilabelInputs,
    TokenClassificationInputs,
)

ROOT = Path(__file__).resolve().parents[1]


def _fields() -> dict[str, torch.Tensor]:
    return {
        "image_ids": torch.arange(2),
        "images": torch.zeros(2, 3, 8, 8),
        "tokens": torch.ones(2, 4, dtype=torch.long),
        "lengths": torch.full((2,), 4),
    }


def test_both_packages_agree_on_the_ignored_label() -> None:
    assert IGNORE_INDEX == MODELS_IGNORE_INDEX


def test_batches_satisfy_model_input_protocols() -> None:
    caption = CaptionBatch(**_fields())
    masked = MaskedLMBatch(**_fields(), mlm_labels=torch.zeros(2, 4, dtype=torch.long))
    bag = TokenClassificationBatch(**_fields(), token_labels=torch.zeros(2, 10))
    multi = MultilabelBatch(**_fields(), multilabels=torch.zeros(2, 80))
    assert isinstance(caption, CaptionInputs)
    assert isinstance(masked, MaskedLMInputs)
    assert isinstance(bag, TokenClassificationInputs)
    assert isinstance(multi, MultilabelInputs)
    assert not isinstance(caption, MaskedLMInputs)
    # mypy checks the same wiring statically:
    inputs: CaptionInputs = caption
    masked_inputs: MaskedLMInputs = masked
    assert inputs is caption and masked_inputs is masked


def test_every_objective_names_a_data_target_whose_batches_it_reads() -> None:
    # virtex_models and virtex_data never import each other: the link is the target's name.
    from virtex_data.targets import TARGETS, get_target
    from virtex_models.registry import objectives

    inputs = {
        "captioning": CaptionInputs,
        "masked_lm": MaskedLMInputs,
        "token_classification": TokenClassificationInputs,
        "multilabel_classification": MultilabelInputs,
    }
    for name, info in objectives().items():
        assert info.target in TARGETS, (name, info.target, sorted(TARGETS))
        protocol = inputs[info.target]
        wanted = {
            member
            for klass in protocol.__mro__
            for member, value in vars(klass).items()
            if isinstance(value, property)
        }
        fields = {f.name for f in dataclasses.fields(get_target(info.target).batch)}
        assert wanted <= fields, (name, wanted - fields)
    # One spelling: the multilabel objective and its data target share the name.
    assert objectives()["multilabel_classification"].target == "multilabel_classification"


def test_cappa_trains_with_virtex_train_and_captions_with_virtex_eval(tmp_path: Path) -> None:
    """``virtex-train pretrain`` of a tiny CapPa (2 steps), then ``virtex-eval caption`` on its
    checkpoint: a new objective reaches both command lines through the registry alone."""
    from click.testing import CliRunner
    from PIL import Image

    from virtex_eval.cli import main as eval_main
    from virtex_models.objectives.cappa import CapPa
    from virtex_models.pretrained import load_objective
    from virtex_train.cli import main as train_main
    from virtex_train.config import load_config

    sys.path.insert(0, str(ROOT / "packages" / "virtex-train" / "tests"))
    from _tiny import make_tiny_data  # the train CLI tests' tiny data

    data = make_tiny_data(tmp_path / "data")
    config = tmp_path / "cappa.yaml"
    overrides = [
        f"data.train_lmdb={data.train_lmdb}",
        f"data.val_lmdb={data.val_lmdb}",
        f"data.tokenizer={data.tokenizer}",
        "data.transform.image_size=32",
        "data.max_caption_length=20",
        "model.kind=cappa",
        "model.options.parallel_fraction=0.75",
        "model.textual.width=32",
        "model.textual.heads=2",
        "model.textual.ffn=64",
        "model.decoder.beam_size=2",
        "model.decoder.max_steps=6",
        "train.batch_size=4",
        "train.num_workers=0",
        "train.val_every=2",
        "train.val_batches=1",
        "train.sample_captions=2",
        "train.num_steps=2",
    ]
    config.write_text(load_config(None, overrides).to_yaml())
    out = tmp_path / "run"
    result = CliRunner().invoke(
        train_main, ["pretrain", str(config), "-o", str(out), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    checkpoint = out / "checkpoints" / "final.pt"
    model, spec = load_objective(checkpoint)
    assert isinstance(model, CapPa) and spec.config.kind == "cappa"
    assert model.parallel_fraction == 0.75

    image = tmp_path / "scene.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(image)
    result = CliRunner().invoke(
        eval_main, ["caption", "--checkpoint", str(checkpoint), str(image), "--beam-size", "1"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{image}\t")
