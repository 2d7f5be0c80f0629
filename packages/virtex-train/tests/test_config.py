from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from virtex_train.config import (
    ConfigError,
    ExperimentConfig,
    TrainConfig,
    apply_overrides,
    load_config,
    parse_override,
    quickstart_config,
)
from virtex_train.optim import OptimConfig


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_the_papers_pretraining_setting() -> None:
    config = ExperimentConfig()
    assert config.model.kind == "bicaptioning"
    assert config.model.visual.name == "resnet50"
    textual = config.model.textual
    assert (textual.layers, textual.width, textual.heads, textual.ffn) == (1, 2048, 32, 8192)
    assert config.optim == OptimConfig()
    assert (config.optim.kind, config.optim.cnn_lr, config.optim.lr) == ("sgd", 0.2, 0.001)
    assert (config.optim.momentum, config.optim.weight_decay) == (0.9, 1e-4)
    assert config.optim.schedule.kind == "cosine"
    assert config.optim.schedule.warmup_steps == 10000
    assert (config.optim.lookahead.alpha, config.optim.lookahead.steps) == (0.5, 5)
    assert config.optim.clip_grad_norm == 10.0
    assert (config.train.num_steps, config.train.batch_size) == (500000, 256)


def test_none_loads_the_quickstart_config() -> None:
    config = load_config(None)
    assert config == quickstart_config()
    assert config.model.visual.name == "resnet18"
    assert config.data.transform.image_size == 32
    assert config.data.train_lmdb == "data/synth/train.lmdb"


def test_dict_and_yaml_round_trip() -> None:
    config = load_config(None, ["optim.kind=adamw", "train.val_batches=null"])
    assert ExperimentConfig.from_dict(config.to_dict()) == config
    text = config.to_yaml()
    assert ExperimentConfig.from_dict(yaml.safe_load(text)) == config
    assert list(yaml.safe_load(text)) == ["seed", "data", "model", "optim", "train"]
    assert "betas: [0.9, 0.999]" in text


def test_file_with_base_merges_nested_keys(tmp_path: Path) -> None:
    write(
        tmp_path / "base.yaml",
        "seed: 3\n"
        "model:\n  kind: captioning\n  textual: {layers: 2, width: 64, heads: 2, ffn: 256}\n"
        "optim:\n  cnn_lr: 0.1\n  schedule: {kind: linear, warmup_steps: 7}\n",
    )
    child = write(
        tmp_path / "sub" / "child.yaml",
        "base: ../base.yaml\n"
        "model:\n  textual: {width: 128}\n"
        "optim:\n  schedule: {warmup_steps: 9}\n",
    )
    config = load_config(child)
    assert config.seed == 3
    assert config.model.kind == "captioning"
    assert (config.model.textual.layers, config.model.textual.width) == (2, 128)
    assert config.model.textual.ffn == 256
    assert config.optim.cnn_lr == 0.1
    assert (config.optim.schedule.kind, config.optim.schedule.warmup_steps) == ("linear", 9)


def test_only_one_level_of_base(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "seed: 1\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    c = write(tmp_path / "c.yaml", "base: b.yaml\n")
    with pytest.raises(ConfigError, match=r"b\.yaml.*one level"):
        load_config(c)


def test_overrides_apply_after_files_and_parse_yaml_scalars(tmp_path: Path) -> None:
    path = write(tmp_path / "exp.yaml", "optim:\n  cnn_lr: 0.3\n")
    config = load_config(
        path,
        [
            "optim.cnn_lr=0.1",
            "train.num_steps=10",
            "model.textual.width=64",
            "model.textual.heads=2",
            "optim.weight_decay=1e-5",
            "optim.schedule.milestones=[5, 8]",
            "optim.clip_grad_norm=null",
            "optim.lookahead.enabled=false",
            "data.transform.color_jitter=null",
        ],
    )
    assert config.optim.cnn_lr == 0.1
    assert config.train.num_steps == 10
    assert (config.model.textual.width, config.model.textual.heads) == (64, 2)
    assert config.optim.weight_decay == 1e-5
    assert config.optim.schedule.milestones == [5, 8]
    assert config.optim.clip_grad_norm is None
    assert config.optim.lookahead.enabled is False
    assert config.data.transform.color_jitter is None


def test_exponent_floats_in_files_are_numbers(tmp_path: Path) -> None:
    # Plain PyYAML reads 1e-4 as the string "1e-4"; our loader follows YAML 1.2.
    path = write(tmp_path / "exp.yaml", "optim:\n  weight_decay: 1e-4\n  lr: 5.0e-4\n")
    config = load_config(path)
    assert config.optim.weight_decay == 1e-4
    assert config.optim.lr == 5e-4


def test_empty_sections_mean_defaults(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", "optim:\n  cnn_lr: 0.5\n")
    path = write(tmp_path / "exp.yaml", "base: base.yaml\noptim:\ntrain:\n")
    config = load_config(path)
    assert config.optim.cnn_lr == 0.5
    assert config.train == TrainConfig()


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("optimm:\n  lr: 0.1\n", "optimm"),
        ("optim:\n  lrr: 0.1\n", "optim.lrr"),
        ("model:\n  textual:\n    widht: 64\n", "model.textual.widht"),
        ("optim:\n  schedule: {kind: cosine, warmup: 5}\n", "optim.schedule.warmup"),
        ("data:\n  transform: {imagesize: 32}\n", "data.transform.imagesize"),
        ("train:\n  steps: 5\n", "train.steps"),
    ],
)
def test_unknown_keys_name_key_and_file(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert key in str(info.value)
    assert str(path) in str(info.value)


def test_unknown_key_in_base_names_the_base_file(tmp_path: Path) -> None:
    base = write(tmp_path / "base.yaml", "optim:\n  momentun: 0.5\n")
    child = write(tmp_path / "child.yaml", "base: base.yaml\n")
    with pytest.raises(ConfigError) as info:
        load_config(child)
    assert "optim.momentun" in str(info.value) and str(base) in str(info.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("optim:\n  lr: fast\n", "optim.lr"),
        ("optim:\n  kind: adam\n", "optim.kind"),
        ("train:\n  num_steps: 1.5\n", "train.num_steps"),
        ("train:\n  precision: half\n", "train.precision"),
        ("optim:\n  no_decay: [norm, biases]\n", "optim.no_decay"),
        ("model:\n  kind: clip\n", "model.kind"),
        ("model:\n  textual: {width: many}\n", "model.textual.width"),
        ("data:\n  max_caption_length: long\n", "data.max_caption_length"),
        ("seed: zero\n", "seed"),
        ("optim: 3\n", "optim"),
    ],
)
def test_bad_values_name_key_and_file(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert key in str(info.value)
    assert str(path) in str(info.value)


def test_dataclass_validation_errors_name_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.yaml", "model:\n  textual: {width: 100, heads: 3}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*divisible"):
        load_config(path)
    path = write(tmp_path / "bad2.yaml", "train: {batch_size: 10, grad_accumulation: 4}\n")
    with pytest.raises(ConfigError, match=r"bad2\.yaml.*grad_accumulation"):
        load_config(path)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=0.1", "optim.lrr"),
        ("optimm.lr=0.1", "optimm"),
        ("model.textual.widht=3", "model.textual.widht"),
        ("optim.lr", "dotted.key=value"),
        ("=3", "dotted.key=value"),
        ("optim..lr=3", "empty component"),
        ("optim.lr=[1, 2", "not valid YAML"),
    ],
)
def test_bad_overrides_name_the_override(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value)
    assert override in str(info.value)


def test_bad_override_value_names_key_and_override(tmp_path: Path) -> None:
    path = write(tmp_path / "exp.yaml", "seed: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["optim.lr=fast"])
    assert "optim.lr" in str(info.value) and "optim.lr=fast" in str(info.value)
    assert str(path) in str(info.value)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")
    path = write(tmp_path / "list.yaml", "- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"list\.yaml.*mapping"):
        load_config(path)
    path = write(tmp_path / "broken.yaml", "optim: {lr: [\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml.*YAML"):
        load_config(path)
    missing_base = write(tmp_path / "child.yaml", "base: nope.yaml\n")
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(missing_base)


def test_parse_and_apply_override_helpers() -> None:
    assert parse_override("a.b=1") == (["a", "b"], 1)
    assert parse_override("a=x=y") == (["a"], "x=y")
    assert parse_override("a=") == (["a"], None)
    merged = apply_overrides({"optim": {"lr": 1.0, "kind": "sgd"}}, ["optim.lr=2"])
    assert merged == {"optim": {"lr": 2, "kind": "sgd"}}


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (
            ["model.textual.max_length=20"],
            "data.max_caption_length=30 and model.decoder.max_steps=30",
        ),
        (
            ["model.textual.max_length=30", "model.decoder.max_steps=31"],
            "data.max_caption_length=30 and model.decoder.max_steps=31",
        ),
        (
            ["model.kind=masked_lm", "data.max_caption_length=31"],
            "data.max_caption_length=31 must",  # no decoding: max_steps is not named
        ),
    ],
)
def test_caption_lengths_are_checked_across_sections(overrides: list[str], named: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides)
    message = str(error.value)
    assert "\n" not in message
    assert f"caption lengths disagree: {named}" in message
    assert "model.textual.max_length=" in message


def test_consistent_or_unchecked_caption_lengths_load() -> None:
    # Shorter training captions and decodes than the head's positions are fine.
    load_config(None, ["data.max_caption_length=12", "model.decoder.max_steps=20"])
    # A masked-LM run never decodes: its max_steps is not checked.
    load_config(None, ["model.kind=masked_lm", "model.decoder.max_steps=99"])
    # Classification heads have no positions: model.textual is unused.
    load_config(None, ["model.kind=token_classification", "model.textual.max_length=5"])
