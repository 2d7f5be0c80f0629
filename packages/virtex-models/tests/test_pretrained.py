"""Self-contained checkpoints rebuild the same objective."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from models_testing import Batch, random_captions

from virtex_models import Captioning, ModelConfig, VocabSpec
from virtex_models.pretrained import ModelSpec, checkpoint_dict, load_objective

VOCAB = VocabSpec(size=30, pad=0, unk=1, sos=2, eos=3, mask=4)
CONFIG = ModelConfig.from_dict(
    {
        "kind": "bicaptioning",
        "visual": {"name": "resnet18"},
        "textual": {"layers": 1, "width": 32, "heads": 2, "ffn": 64, "max_length": 10},
        "decoder": {"beam_size": 2, "max_steps": 5},
    }
)


def test_checkpoint_file_rebuilds_the_same_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    spec = ModelSpec(config=CONFIG, vocab=VOCAB)
    model = spec.build().eval()
    path = tmp_path / "step_10.pt"
    torch.save({**checkpoint_dict(model, spec), "tokenizer": "{}", "step": 10}, path)
    loaded, loaded_spec = load_objective(path)
    assert loaded_spec == spec and not loaded.training
    assert isinstance(loaded, Captioning)
    tokens, lengths = random_captions([5, 3], 30, 2, 3, 0, first_word=5, seed=0)
    images = torch.randn(2, 3, 32, 32)
    batch = Batch(torch.arange(2), images, tokens, lengths)
    with torch.no_grad():
        assert torch.equal(loaded(batch).loss, model(batch).loss)
        assert torch.equal(loaded.generate(images), model.generate(images))
    assert loaded.textual.output.weight is loaded.textual.embedding.words.weight


def test_multilabel_spec_keeps_num_classes() -> None:
    config = ModelConfig.from_dict(
        {"kind": "multilabel_classification", "visual": {"name": "resnet18"}}
    )
    spec = ModelSpec(config=config, vocab=VOCAB, num_classes=80)
    model, again = load_objective(checkpoint_dict(spec.build(), spec))
    assert again.num_classes == 80 and model.textual.output.out_features == 80


def test_errors_name_file_and_key(tmp_path: Path) -> None:
    spec = ModelSpec(config=CONFIG, vocab=VOCAB)
    checkpoint = checkpoint_dict(spec.build(), spec)
    path = tmp_path / "bad.pt"
    torch.save({"model": checkpoint["model"]}, path)
    with pytest.raises(ValueError, match=r"bad\.pt: no 'model_spec' entry"):
        load_objective(path)
    broken = {**checkpoint, "model_spec": {**spec.to_dict(), "config": {"textual": {"depth": 2}}}}
    with pytest.raises(
        ValueError, match=r"unknown key checkpoint: model_spec\.config\.textual\.depth"
    ):
        load_objective(broken)
    weights = dict(checkpoint["model"])
    weights["textual.output.bias"] = torch.zeros(31)
    del weights["visual.conv1.weight"]
    with pytest.raises(
        ValueError, match=r"missing keys: visual\.conv1\.weight.*textual\.output\.bias"
    ):
        load_objective({**checkpoint, "model": weights})
    with pytest.raises(ValueError, match="format_version 7"):
        load_objective({**checkpoint, "format_version": 7})


def test_typed_checkpoint_round_trip_keeps_every_entry() -> None:
    from virtex_models.pretrained import ModelCheckpoint, Preprocessing, read_checkpoint

    spec = ModelSpec(config=CONFIG, vocab=VOCAB)
    model = spec.build()
    written = ModelCheckpoint(
        model=dict(model.state_dict()),
        spec=spec,
        preprocessing=Preprocessing(image_size=48, mean=(0.5, 0.5, 0.5), std=(0.2, 0.3, 0.4)),
        tokenizer="{}",
        extra={"step": 7, "config": "seed: 0\n"},
    ).to_dict()
    assert written["preprocessing"] == {
        "image_size": 48,
        "eval_resize": None,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.2, 0.3, 0.4],
    }
    again = read_checkpoint(written)
    assert again.preprocessing == Preprocessing(48, None, (0.5, 0.5, 0.5), (0.2, 0.3, 0.4))
    assert again.tokenizer == "{}" and again.extra == {"step": 7, "config": "seed: 0\n"}
    assert again.to_dict().keys() == written.keys()
    # Written before the entry existed: no preprocessing, not an error.
    assert read_checkpoint(checkpoint_dict(model, spec)).preprocessing is None
    with pytest.raises(ValueError, match=r"preprocessing.std must be 3 numbers"):
        read_checkpoint({**written, "preprocessing": {"std": [1.0, 2.0]}})
    with pytest.raises(ValueError, match=r"unknown key checkpoint: preprocessing.size"):
        read_checkpoint({**written, "preprocessing": {"size": 3}})
