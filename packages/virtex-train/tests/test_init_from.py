"""``train.init_from``: weights only, exact copies, vocabulary changes, strictness, resume."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).parent))

from _tiny import make_tiny_data, tiny_model_config

from virtex_data.tokenizer import CaptionTokenizer
from virtex_models.pretrained import ModelSpec, checkpoint_dict
from virtex_train.init_from import InitFromError, apply_init, init_from_config, read_init_source
from virtex_train.pretrain import vocab_spec

#: The vocabulary-sized tensors of a bicaptioning model, written out by hand.
VOCAB_LAYERS = sorted(
    f"{head}.{name}"
    for head in ("textual", "backward_textual")
    for name in ("embedding.words.weight", "output.weight", "output.bias")
)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_tiny_data(tmp_path_factory.mktemp("tiny"))


def _model(tokenizer: CaptionTokenizer, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return tiny_model_config(dropout=0.0).build(vocab_spec(tokenizer))


def _randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every tensor of the state, buffers included, to distinct random values (a fresh model's
    BatchNorm statistics are all 0 / 1, the same in source and target)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.copy_(torch.rand(value.shape, generator=generator) + 0.5)
            else:
                value.fill_(int(torch.randint(1, 1000, (), generator=generator)))
    return model


def _save_ours(model: torch.nn.Module, tokenizer: CaptionTokenizer, path: Path) -> Path:
    spec = ModelSpec(tiny_model_config(dropout=0.0), vocab_spec(tokenizer))
    checkpoint = checkpoint_dict(model, spec)
    checkpoint["tokenizer"] = tokenizer.to_json()
    checkpoint["step"] = 123  # never read: weights only
    torch.save(checkpoint, path)
    return path


def _states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], keys: Any) -> bool:
    return all(torch.equal(a[k], b[k]) for k in keys)


def test_our_checkpoint_is_reproduced_exactly(data: Any, tmp_path: Path) -> None:
    tokenizer = CaptionTokenizer.from_file(data.tokenizer)
    source = _randomise(_model(tokenizer, seed=1), 11)
    path = _save_ours(source, tokenizer, tmp_path / "src.pt")
    target = _model(tokenizer, seed=2)
    report = init_from_config(str(path), target, tiny_model_config(), tokenizer)
    expected = source.state_dict()
    got = target.state_dict()
    assert set(got) == set(expected)
    assert _states_equal(got, expected, expected)
    assert report.loaded == sorted(expected) and not report.missing and not report.unexpected
    assert not report.reinitialised and not report.vocabulary_changed


def test_torchvision_state_dict_initialises_the_backbone_only(data: Any, tmp_path: Path) -> None:
    tokenizer = CaptionTokenizer.from_file(data.tokenizer)
    torch.manual_seed(5)
    resnet = _randomise(torchvision.models.resnet18(), 15)
    # DataParallel names and the ImageNet example's {"state_dict": ...} wrapper, fc included.
    state = {f"module.{k}": v for k, v in resnet.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 90}, tmp_path / "r18.pth")
    target = _model(tokenizer, seed=2)
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    report = init_from_config(
        f"torchvision:{tmp_path / 'r18.pth'},resnet18", target, tiny_model_config(), tokenizer
    )
    got = target.state_dict()
    backbone = {k: v for k, v in resnet.state_dict().items() if not k.startswith("fc.")}
    assert all(torch.equal(got["visual." + k], v) for k, v in backbone.items())
    heads = [k for k in got if not k.startswith("visual.")]
    assert heads and _states_equal(got, fresh, heads)  # textual heads untouched
    assert len(report.loaded) == len(backbone) and not report.missing
    assert report.unexpected == []  # fc.* dropped, module. stripped


def test_torchvision_arch_must_match_the_config(data: Any, tmp_path: Path) -> None:
    tokenizer = CaptionTokenizer.from_file(data.tokenizer)
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r.pth")
    with pytest.raises(InitFromError, match="resnet50 state dict for a resnet18 model"):
        read_init_source(f"torchvision:{tmp_path / 'r.pth'},resnet50", tiny_model_config())
    del tokenizer


def test_original_checkpoint_is_reproduced_exactly(data: Any, tmp_path: Path) -> None:
    tokenizer = CaptionTokenizer.from_file(data.tokenizer)
    source = _randomise(_model(tokenizer, seed=3), 13)
    # The original's layout: the torchvision backbone under visual.cnn., plus its unused fc.
    state = {
        ("visual.cnn." + k[len("visual.") :] if k.startswith("visual.") else k): v
        for k, v in source.state_dict().items()
    }
    state["visual.cnn.fc.weight"] = torch.zeros(1000, 512)
    torch.save({"model": state, "optimizer": {}, "iteration": 500}, tmp_path / "o.pth")
    s = tokenizer.special
    (tmp_path / "o.yaml").write_text(
        f"DATA:\n  VOCAB_SIZE: {tokenizer.vocab_size}\n  UNK_INDEX: {s.unk}\n"
        f"  SOS_INDEX: {s.sos}\n  EOS_INDEX: {s.eos}\n  MASK_INDEX: {s.mask}\n"
        f"  PAD_INDEX: {s.pad}\n  MAX_CAPTION_LENGTH: 30\n"
        "MODEL:\n  NAME: virtex\n  VISUAL:\n    NAME: torchvision::resnet18\n"
        "  TEXTUAL:\n    NAME: transdec_postnorm::L1_H32_A2_F64\n    DROPOUT: 0.0\n"
    )
    target = _model(tokenizer, seed=4)
    text = f"original:{tmp_path / 'o.pth'},{tmp_path / 'o.yaml'}"
    report = init_from_config(text, target, tiny_model_config(), tokenizer)
    expected = source.state_dict()
    assert _states_equal(target.state_dict(), expected, expected)
    assert not report.missing and not report.unexpected and not report.reinitialised


@pytest.mark.parametrize("vocab_size", [100, None])  # another size; same size, other merges
def test_new_vocabulary_reinitialises_exactly_the_named_layers(
    data: Any, tmp_path: Path, vocab_size: int | None
) -> None:
    old = CaptionTokenizer.from_file(data.tokenizer)
    source = _randomise(_model(old, seed=1), 11)
    path = _save_ours(source, old, tmp_path / "src.pt")
    if vocab_size is None:
        # The same captions with their letters rotated: as many tokens, other ones.
        import codecs
        import json

        annotations = json.loads((data.root / "annotations" / "captions_train.json").read_text())
        captions = [codecs.encode(a["caption"], "rot13") for a in annotations["annotations"]]
        new = CaptionTokenizer.train(captions, vocab_size=old.vocab_size)
        assert new.vocab_size == old.vocab_size and new.sha256 != old.sha256
    else:
        new = CaptionTokenizer.train(
            ["other words in another vocabulary"] * 8, vocab_size=vocab_size
        )
        assert new.vocab_size != old.vocab_size
    fresh = {k: v.clone() for k, v in _model(new, seed=2).state_dict().items()}
    target = _model(new, seed=2)
    report = init_from_config(str(path), target, tiny_model_config(), new)
    got, expected = target.state_dict(), source.state_dict()
    assert report.vocabulary_changed
    assert report.reinitialised == VOCAB_LAYERS
    assert _states_equal(got, fresh, VOCAB_LAYERS)  # the fresh initialisation, not the source's
    others = [k for k in got if k not in VOCAB_LAYERS]
    assert _states_equal(got, expected, others)
    assert sorted(report.loaded) == sorted(others)
    assert any("new vocabulary" in line for line in report.lines())


def test_other_shape_mismatch_names_the_parameter(data: Any, tmp_path: Path) -> None:
    tokenizer = CaptionTokenizer.from_file(data.tokenizer)
    source = _model(tokenizer, seed=1)
    spec = ModelSpec(tiny_model_config(dropout=0.0), vocab_spec(tokenizer))
    checkpoint = checkpoint_dict(source, spec)
    checkpoint["model"]["textual.embedding.positions.weight"] = torch.zeros(12, 32)
    torch.save(checkpoint, tmp_path / "src.pt")
    target = _model(tokenizer, seed=2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(InitFromError, match=r"textual\.embedding\.positions\.weight: source"):
        init_from_config(str(tmp_path / "src.pt"), target, tiny_model_config(), tokenizer)
    assert _states_equal(target.state_dict(), before, before)  # nothing half-loaded


def test_strict_by_default_and_reported_when_not(data: Any, tmp_path: Path) -> None:
    tokenizer = CaptionTokenizer.from_file(data.tokenizer)
    source = _model(tokenizer, seed=1)
    spec = ModelSpec(tiny_model_config(dropout=0.0), vocab_spec(tokenizer))
    checkpoint = checkpoint_dict(source, spec)
    missing = sorted(k for k in source.state_dict() if k.endswith("linear1.bias"))[0]
    del checkpoint["model"][missing]
    checkpoint["model"]["extra.weight"] = torch.zeros(2)
    torch.save(checkpoint, tmp_path / "src.pt")
    target = _model(tokenizer, seed=2)
    fresh = target.state_dict()[missing].clone()
    with pytest.raises(InitFromError, match=f"missing from the source: {missing}.*extra.weight"):
        init_from_config(str(tmp_path / "src.pt"), target, tiny_model_config(), tokenizer)
    source_state = read_init_source(str(tmp_path / "src.pt"), tiny_model_config())
    report = apply_init(target, source_state, tokenizer, strict=False)
    assert report.missing == [missing] and report.unexpected == ["extra.weight"]
    assert torch.equal(target.state_dict()[missing], fresh)


def _config(data: Any, *extra: str) -> Any:
    from virtex_train.config import load_config

    return load_config(
        None,
        [
            f"data.train_lmdb={data.train_lmdb}",
            f"data.val_lmdb={data.val_lmdb}",
            f"data.tokenizer={data.tokenizer}",
            "data.transform.image_size=32",
            "model.textual.width=32",
            "model.textual.ffn=64",
            "model.decoder.beam_size=2",
            "model.decoder.max_steps=5",
            "train.batch_size=4",
            "train.num_workers=0",
            "train.log_every=1",
            "train.val_every=100",
            "train.val_batches=1",
            "train.sample_captions=0",
            "train.checkpoint_every=100",
            *extra,
        ],
    )


def test_pretrain_init_from_is_weights_only_frozen_and_not_reapplied_on_resume(
    data: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from virtex_train import hooks
    from virtex_train import pretrain as pretrain_module
    from virtex_train.checkpoint import load_checkpoint
    from virtex_train.pretrain import pretrain
    from virtex_train.trainer import StepResult, Trainer

    source = pretrain(_config(data, "train.num_steps=2"), tmp_path / "src", progress=False)
    tuned = _config(
        data,
        "train.num_steps=3",
        f"train.init_from={source.checkpoint}",
        "model.visual.frozen=true",
    )
    straight = pretrain(tuned, tmp_path / "a", progress=False)
    assert straight.step == 3  # step, optimiser, schedule fresh: 3 steps, not 2 + 3
    assert "init_from" in capsys.readouterr().out
    # The captioning validation decodes greedily and logs CIDEr and the distinct fraction.
    import json

    val = [
        json.loads(line)
        for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
        if '"val"' in line
    ]
    assert val and all("cider" in r and "distinct_captions" in r for r in val)
    assert val[-1]["decoded_images"] == 4  # val_batches=1 batch of 4
    src = load_checkpoint(source.checkpoint)["model"]
    final = load_checkpoint(straight.checkpoint)
    # The frozen backbone keeps the source weights (and BatchNorm statistics) exactly.
    visual = [k for k in src if k.startswith("visual.")]
    assert _states_equal(final["model"], src, visual)
    assert not _states_equal(final["model"], src, [k for k in src if k.startswith("textual.")])

    original = hooks.LoggingHook.after_step

    def stop_at_1(self: Any, trainer: Trainer, result: StepResult) -> None:
        original(self, trainer, result)
        if result.step == 1:
            trainer.request_stop("test")

    monkeypatch.setattr(hooks.LoggingHook, "after_step", stop_at_1)
    stopped = pretrain(tuned, tmp_path / "b", progress=False)
    monkeypatch.undo()
    assert stopped.step == 1

    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("init_from re-applied on resume")

    monkeypatch.setattr(pretrain_module, "init_from_config", never)
    resumed = pretrain(tuned, tmp_path / "b", resume=True, progress=False)
    assert resumed.step == 3
    assert "not re-applied" in capsys.readouterr().out
    # Resumed = straight run (resume is exact); re-initialising at step 1 would differ.
    resumed_model = load_checkpoint(resumed.checkpoint)["model"]
    for key, value in final["model"].items():
        assert torch.allclose(resumed_model[key].float(), value.float(), atol=1e-6), key


def test_bad_init_from_is_one_clear_error(data: Any, tmp_path: Path) -> None:
    from virtex_train.pretrain import PretrainError, pretrain

    config = _config(data, "train.num_steps=1", f"train.init_from={tmp_path / 'nope.pt'}")
    with pytest.raises(PretrainError, match="train.init_from .*nope.pt: no such file"):
        pretrain(config, tmp_path / "run", progress=False)


def test_fine_tune_from_pretrained_beats_scratch_on_a_new_caption_set(
    data: Any, tmp_path: Path
) -> None:
    """Pretrained on the built-in data, fine-tuned on the built-in data of another seed (new
    images and captions, same grammar and tokenizer): lower validation loss than the same
    steps from random weights."""
    from virtex_data.lmdb_writer import build_lmdb
    from virtex_data.synth import generate
    from virtex_train.pretrain import pretrain

    new = tmp_path / "new"
    generate(new, train=16, val=8, size=32, seed=7, workers=1, progress=False)
    for split in ("train", "val"):
        build_lmdb(
            new / "annotations" / f"captions_{split}.json", new / split, new / f"{split}.lmdb"
        )
    source = pretrain(
        _config(data, "train.num_steps=40", "optim.schedule.warmup_steps=2"),
        tmp_path / "src",
        progress=False,
    )
    common = [
        f"data.train_lmdb={new / 'train.lmdb'}",
        f"data.val_lmdb={new / 'val.lmdb'}",
        "train.num_steps=8",
        "train.val_batches=null",
        "optim.schedule.warmup_steps=2",
    ]
    tuned = pretrain(
        _config(data, *common, f"train.init_from={source.checkpoint}"),
        tmp_path / "tuned",
        progress=False,
    )
    scratch = pretrain(_config(data, *common), tmp_path / "scratch", progress=False)
    assert tuned.val_loss is not None and scratch.val_loss is not None
    print(f"val loss: fine-tuned {tuned.val_loss:.3f}, scratch {scratch.val_loss:.3f}")
    assert tuned.val_loss < scratch.val_loss - 0.5
