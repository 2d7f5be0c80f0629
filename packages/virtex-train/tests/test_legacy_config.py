from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _original_configs import ORIGINAL_BASE

from virtex_train.config import (
    ConfigError,
    ExperimentConfig,
    experiment_from_legacy,
    load_config,
    load_legacy_config,
)
from virtex_train.legacy_config import is_legacy_config, read_legacy_yaml


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return write(tmp_path / "configs" / "_base_bicaptioning_R_50_L1_H1024.yaml", ORIGINAL_BASE)


def child(tmp_path: Path, body: str, name: str = "child.yaml") -> Path:
    text = '_BASE_: "../_base_bicaptioning_R_50_L1_H1024.yaml"\n\n' + body
    return write(tmp_path / "configs" / "ablations" / name, text)


def test_base_file_maps_every_setting(base: Path) -> None:
    config = load_legacy_config(base)
    assert config.seed == 0
    assert config.model.kind == "bicaptioning"
    assert (config.model.visual.kind, config.model.visual.name) == ("torchvision", "resnet50")
    assert config.model.visual.frozen is False
    t = config.model.textual
    assert (t.layers, t.width, t.heads, t.ffn, t.norm_first) == (1, 1024, 16, 4096, False)
    assert (t.dropout, t.max_length) == (0.1, 30)
    assert (config.model.decoder.mode, config.model.decoder.beam_size) == ("beam", 5)
    o = config.optim
    assert (o.kind, o.momentum, o.weight_decay, o.cnn_lr, o.lr) == ("sgd", 0.9, 1e-4, 0.2, 0.001)
    assert (o.lookahead.enabled, o.lookahead.alpha, o.lookahead.steps) == (True, 0.5, 5)
    assert (o.schedule.kind, o.schedule.warmup_steps) == ("cosine", 10000)
    assert o.no_decay == ["norm", "bias"]
    assert o.clip_grad_norm == 10.0
    assert (config.train.num_steps, config.train.batch_size) == (500000, 256)
    assert config.train.precision == "auto"
    d = config.data
    assert d.train_lmdb == "datasets/coco/coco_train2017.lmdb"
    assert d.val_lmdb == "datasets/coco/coco_val2017.lmdb"
    assert d.tokenizer == "datasets/vocab/coco_10k.json"
    assert d.transform.image_size == 224 and d.transform.hflip == 0.5
    assert d.transform.color_jitter is not None
    assert d.max_caption_length == 30
    assert d.train_instances is None


def test_base_chain_and_textual_name_L1_H2048(tmp_path: Path, base: Path) -> None:
    path = child(
        tmp_path,
        'MODEL:\n  NAME: "bicaptioning"\n  TEXTUAL:\n'
        '    NAME: "transdec_postnorm::L1_H2048_A32_F8192"\n',
    )
    config = load_legacy_config(path)
    t = config.model.textual
    assert (t.layers, t.width, t.heads, t.ffn, t.norm_first) == (1, 2048, 32, 8192, False)
    assert config.model.kind == "bicaptioning"
    assert config.optim.cnn_lr == 0.2  # from the base file


def test_prenorm_and_depth(tmp_path: Path, base: Path) -> None:
    path = child(tmp_path, 'MODEL:\n  TEXTUAL:\n    NAME: "transdec_prenorm::L4_H768_A12_F3072"\n')
    t = load_legacy_config(path).model.textual
    assert (t.layers, t.width, t.heads, t.ffn, t.norm_first) == (4, 768, 12, 3072, True)
    assert t.final_norm is False  # the original pre-norm stack had no final LayerNorm


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("virtex", "bicaptioning"),
        ("bicaptioning", "bicaptioning"),
        ("captioning", "captioning"),
        ("masked_lm", "masked_lm"),
    ],
)
def test_model_names_map_to_objective_kinds(
    tmp_path: Path, base: Path, name: str, kind: str
) -> None:
    path = child(tmp_path, f'MODEL:\n  NAME: "{name}"\n')
    assert load_legacy_config(path).model.kind == kind


def test_classification_configs_of_the_paper(tmp_path: Path, base: Path) -> None:
    token = child(
        tmp_path,
        'MODEL:\n  NAME: "token_classification"\n  TEXTUAL:\n    NAME: "none"\n\n'
        'OPTIM:\n  NO_DECAY: "none"\n',
        "token.yaml",
    )
    config = load_legacy_config(token)
    assert config.model.kind == "token_classification"
    assert config.optim.no_decay == []
    multilabel = child(
        tmp_path,
        'DATA:\n  VOCAB_SIZE: 81\n\nMODEL:\n  NAME: "multilabel_classification"\n'
        '  TEXTUAL:\n    NAME: "none"\n\nOPTIM:\n  NO_DECAY: "none"\n',
        "multilabel.yaml",
    )
    config = load_legacy_config(multilabel)
    assert config.model.kind == "multilabel_classification"
    assert config.data.train_instances == "datasets/coco/annotations/instances_train2017.json"
    assert config.data.val_instances == "datasets/coco/annotations/instances_val2017.json"


def test_optimiser_schedule_and_precision_settings(tmp_path: Path, base: Path) -> None:
    path = child(
        tmp_path,
        "AMP: false\nRANDOM_SEED: 7\n"
        "DATA:\n  IMAGE_CROP_SIZE: 192\n  MAX_CAPTION_LENGTH: 20\n"
        "  IMAGE_TRANSFORM_TRAIN: [random_resized_crop, normalize]\n"
        "  MASKED_LM: {MASK_PROPORTION: 0.2, MASK_PROBABILITY: 0.8, REPLACE_PROBABILITY: 0.1}\n"
        "MODEL:\n  VISUAL: {NAME: 'torchvision::wide_resnet50_2', FROZEN: true}\n"
        "  DECODER: {NAME: nucleus_sampling, NUCLEUS_SIZE: 0.8, MAX_DECODING_STEPS: 18}\n"
        "OPTIM:\n  OPTIMIZER_NAME: adamw\n  LR_DECAY_NAME: multistep\n"
        "  LR_STEPS: [1000, 2000]\n  LR_GAMMA: 0.5\n  LOOKAHEAD: {USE: false}\n"
        "  CLIP_GRAD_NORM: 1\n  WEIGHT_DECAY: 1e-2\n  BATCH_SIZE: 64\n  NUM_ITERATIONS: 3000\n",
    )
    config = load_legacy_config(path)
    assert config.seed == 7
    assert config.train.precision == "fp32"
    assert config.data.transform.image_size == 192
    assert config.data.transform.hflip == 0.0 and config.data.transform.color_jitter is None
    assert config.data.max_caption_length == config.model.textual.max_length == 20
    m = config.data.masking
    assert (m.proportion, m.mask, m.random) == (0.2, 0.8, 0.1)
    assert m.keep == pytest.approx(0.1)
    assert config.model.visual.name == "wide_resnet50_2" and config.model.visual.frozen
    d = config.model.decoder
    assert (d.mode, d.top_p, d.max_steps) == ("nucleus", 0.8, 18)
    o = config.optim
    assert o.kind == "adamw" and o.lookahead.enabled is False
    assert (o.schedule.kind, o.schedule.milestones, o.schedule.gamma) == (
        "multistep",
        [1000, 2000],
        0.5,
    )
    assert o.clip_grad_norm == 1.0 and o.weight_decay == 0.01
    assert (config.train.batch_size, config.train.num_steps) == (64, 3000)


def test_no_lr_decay_is_constant_schedule() -> None:
    config = experiment_from_legacy({"OPTIM": {"LR_DECAY_NAME": "none"}})
    assert config.optim.schedule.kind == "constant"


def test_empty_original_config_is_the_original_defaults() -> None:
    config = experiment_from_legacy({})
    t = config.model.textual
    assert (t.layers, t.width, t.heads, t.ffn) == (1, 2048, 32, 8192)
    assert config.optim.no_decay == ["norm", "bias"]


def test_unknown_key_names_key_and_the_file_holding_it(tmp_path: Path, base: Path) -> None:
    path = child(tmp_path, "OPTIM:\n  LOOKAHEAD:\n    ALHPA: 0.5\n")
    with pytest.raises(ConfigError) as info:
        load_legacy_config(path)
    assert "OPTIM.LOOKAHEAD.ALHPA" in str(info.value) and str(path) in str(info.value)

    broken_base = write(tmp_path / "other" / "base.yaml", "MODEL:\n  VISAUL: {}\n")
    path = write(tmp_path / "other" / "sub" / "c.yaml", "_BASE_: ../base.yaml\nRANDOM_SEED: 1\n")
    with pytest.raises(ConfigError) as info:
        load_legacy_config(path)
    assert "MODEL.VISAUL" in str(info.value) and str(broken_base) in str(info.value)


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ("OPTIM:\n  CNN_LR: fast\n", "OPTIM.CNN_LR"),
        ("OPTIM:\n  NUM_ITERATIONS: 1.5\n", "OPTIM.NUM_ITERATIONS"),
        ("AMP: 1\n", "AMP"),
        ("MODEL: 3\n", "MODEL"),
        ("MODEL:\n  NAME: clip\n", "MODEL.NAME"),
        ("MODEL:\n  TEXTUAL:\n    NAME: transdec_postnorm::L1_H2048\n", "MODEL.TEXTUAL.NAME"),
        ("MODEL:\n  TEXTUAL:\n    NAME: lstm::L1\n", "MODEL.TEXTUAL.NAME"),
        ("MODEL:\n  VISUAL:\n    NAME: timm::resnet50\n", "MODEL.VISUAL.NAME"),
        ("MODEL:\n  VISUAL:\n    PRETRAINED: true\n", "MODEL.VISUAL.PRETRAINED"),
        ("MODEL:\n  DECODER:\n    NAME: greedy\n", "MODEL.DECODER.NAME"),
        ("DATA:\n  USE_PERCENTAGE: 10.0\n", "DATA.USE_PERCENTAGE"),
        ("DATA:\n  USE_SINGLE_CAPTION: true\n", "DATA.USE_SINGLE_CAPTION"),
        ("DATA:\n  IMAGE_TRANSFORM_TRAIN: [random_crop, normalize]\n", "IMAGE_TRANSFORM_TRAIN"),
        ("OPTIM:\n  NO_DECAY: '.*bias'\n", "OPTIM.NO_DECAY"),
        ("OPTIM:\n  LR_DECAY_NAME: step\n", "OPTIM.LR_DECAY_NAME"),
        ("OPTIM:\n  OPTIMIZER_NAME: lamb\n", "OPTIM.OPTIMIZER_NAME"),
    ],
)
def test_bad_or_unsupported_values_name_key_and_file(
    tmp_path: Path, base: Path, body: str, key: str
) -> None:
    path = child(tmp_path, body)
    with pytest.raises(ConfigError) as info:
        load_legacy_config(path)
    assert key in str(info.value)
    assert str(path) in str(info.value)


def test_base_cycle_is_an_error(tmp_path: Path) -> None:
    a = write(tmp_path / "a.yaml", "_BASE_: b.yaml\n")
    write(tmp_path / "b.yaml", "_BASE_: a.yaml\n")
    with pytest.raises(ConfigError, match="deeper than 8"):
        read_legacy_yaml(a)


def test_load_config_detects_original_files_and_applies_overrides(
    tmp_path: Path, base: Path
) -> None:
    path = child(tmp_path, 'MODEL:\n  TEXTUAL:\n    NAME: "transdec_postnorm::L2_H512_A8_F2048"\n')
    config = load_config(path, ["train.num_steps=10", "optim.cnn_lr=0.05"])
    assert config.model.textual.layers == 2 and config.model.textual.width == 512
    assert config.train.num_steps == 10 and config.optim.cnn_lr == 0.05
    assert config == load_legacy_config(path, ["train.num_steps=10", "optim.cnn_lr=0.05"])
    with pytest.raises(ConfigError) as info:
        load_config(path, ["optim.lrr=1"])
    assert "optim.lrr" in str(info.value)


def test_imported_config_round_trips_through_our_yaml(tmp_path: Path, base: Path) -> None:
    config = load_legacy_config(base)
    ours = write(tmp_path / "ours.yaml", config.to_yaml())
    assert load_config(ours) == config
    assert ExperimentConfig.from_dict(config.to_dict()) == config


def test_is_legacy_config() -> None:
    assert is_legacy_config({"_BASE_": "x.yaml"})
    assert is_legacy_config({"OPTIM": {}, "RANDOM_SEED": 0})
    assert not is_legacy_config({"optim": {}})
    assert not is_legacy_config({})
    assert not is_legacy_config({"OPTIM": {}, "seed": 0})
