"""The experiment files under ``configs/``: they load, build, and hold the paper's settings."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from virtex_models import TextualConfig, VocabSpec

sys.path.insert(0, str(Path(__file__).parent))

from _original_configs import ORIGINAL_BASE

from virtex_models.registry import get_objective
from virtex_train.config import (
    ExperimentConfig,
    load_config,
    load_legacy_config,
    quickstart_config,
)

ROOT = Path(__file__).resolve().parents[3]
PRETRAIN = ROOT / "configs" / "pretrain"
FILES = sorted(PRETRAIN.rglob("*.yaml"))
NAMES = [str(path.relative_to(PRETRAIN)) for path in FILES]

#: Trainable parameters of the torchvision ResNets without their ``fc`` layer: the published
#: totals (torchvision model docs: 25,557,032 / 68,883,240 / 44,549,160) minus 2048 * 1000 + 1000.
BACKBONES = {
    "R_50": ("resnet50", 25_557_032 - 2_049_000),
    "R_50W2X": ("wide_resnet50_2", 68_883_240 - 2_049_000),
    "R_101": ("resnet101", 44_549_160 - 2_049_000),
}
VOCAB = VocabSpec(size=10000, pad=0, unk=1, sos=2, eos=3, mask=4)


def test_every_config_of_the_paper_is_there() -> None:
    assert set(NAMES) == {
        "_base_bicaptioning_R_50_L1_H1024.yaml",
        "bicaptioning_R_50_L1_H2048.yaml",
        "task_ablations/bicaptioning_R_50_L1_H2048.yaml",
        "task_ablations/captioning_R_50_L1_H2048.yaml",
        "task_ablations/masked_lm_R_50_L1_H2048.yaml",
        "task_ablations/token_classification_R_50.yaml",
        "task_ablations/multilabel_classification_R_50.yaml",
        # Not the paper's: CapPa (Tschannen et al., 2023), the proof of the objective registry.
        "task_ablations/cappa_R_50_L1_H2048.yaml",
        *(f"width_ablations/bicaptioning_R_50_L1_H{h}.yaml" for h in (512, 768, 1024, 2048)),
        *(f"depth_ablations/bicaptioning_R_50_L{n}_H1024.yaml" for n in (1, 2, 3, 4)),
        *(f"backbone_ablations/bicaptioning_{r}_L1_H1024.yaml" for r in BACKBONES),
    }


def expected_from_name(name: str) -> tuple[str, str, int | None, int | None]:
    """(objective kind, backbone key, layers, width) spelled in the file name."""
    stem = Path(name).stem.removeprefix("_base_")
    for kind in ("bicaptioning", "captioning", "masked_lm", "token_classification", "cappa"):
        if stem.startswith(kind + "_R_"):
            break
    else:
        kind = "multilabel_classification"
    rest = stem.removeprefix(kind + "_").split("_L")
    backbone = rest[0]
    if len(rest) == 1:
        return kind, backbone, None, None
    layers, width = rest[1].split("_H")
    return kind, backbone, int(layers), int(width)


@pytest.mark.parametrize("name", NAMES)
def test_config_file_loads_builds_and_matches_its_name(name: str) -> None:
    config = load_config(PRETRAIN / name)
    kind, backbone, layers, width = expected_from_name(name)
    assert config.model.kind == kind
    visual_name, visual_params = BACKBONES[backbone]
    assert config.model.visual.name == visual_name
    if layers is not None and width is not None:
        t = config.model.textual
        # The paper's heads: A = H / 64, F = 4 H, post-norm.
        assert (t.layers, t.width, t.heads, t.ffn) == (layers, width, width // 64, 4 * width)
        assert t.norm_first is False and t.dropout == 0.1
    # Build on the meta device: the real module structure without allocating weights.
    num_classes = 80 if kind == "multilabel_classification" else None
    with torch.device("meta"):
        objective = config.model.build(VOCAB, num_classes=num_classes)
    visual = objective.visual
    assert isinstance(visual, torch.nn.Module)
    assert sum(p.numel() for p in visual.parameters()) == visual_params
    assert ExperimentConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("name", NAMES)
def test_paper_hyper_parameters(name: str) -> None:
    config = load_config(PRETRAIN / name)
    o, t = config.optim, config.train
    assert (o.kind, o.momentum, o.nesterov, o.weight_decay) == ("sgd", 0.9, False, 1e-4)
    assert (o.cnn_lr, o.lr) == (0.2, 0.001)
    assert (t.batch_size, t.num_steps) == (256, 500_000)
    assert (o.schedule.kind, o.schedule.warmup_steps) == ("cosine", 10_000)
    assert (o.lookahead.enabled, o.lookahead.alpha, o.lookahead.steps) == (True, 0.5, 5)
    assert o.clip_grad_norm == 10.0
    assert config.data.max_caption_length == 30
    assert config.data.transform.image_size == 224
    assert config.data.transform.crop_scale == (0.2, 1.0)
    classification = config.model.kind in ("token_classification", "multilabel_classification")
    assert o.no_decay == ([] if classification else ["norm", "bias"])
    # The original's ResNet init, classification loss and masking procedure.
    assert config.model.visual.zero_init_residual is True
    assert config.model.classification_loss == "softmax"
    assert config.data.masking.procedure == "original"
    if config.model.kind == "multilabel_classification":
        assert config.data.train_instances and config.data.val_instances


# The original's files (kdexd/virtex configs/; the base in _original_configs.py), written out
# here in its format: each of ours must import to exactly the config we ship.


def _textual(name: str) -> str:
    return f'MODEL:\n  TEXTUAL:\n    NAME: "transdec_postnorm::{name}"\n'


_CLASSIFIER = '  TEXTUAL:\n    NAME: "none"\nOPTIM:\n  NO_DECAY: "none"\n'
ORIGINAL_CHILDREN = {
    "bicaptioning_R_50_L1_H2048.yaml": _textual("L1_H2048_A32_F8192"),
    "task_ablations/bicaptioning_R_50_L1_H2048.yaml": _textual("L1_H2048_A32_F8192"),
    "task_ablations/captioning_R_50_L1_H2048.yaml": 'MODEL:\n  NAME: "captioning"\n'
    '  TEXTUAL:\n    NAME: "transdec_postnorm::L1_H2048_A32_F8192"\n',
    "task_ablations/masked_lm_R_50_L1_H2048.yaml": 'MODEL:\n  NAME: "masked_lm"\n'
    '  TEXTUAL:\n    NAME: "transdec_postnorm::L1_H2048_A32_F8192"\n',
    "task_ablations/token_classification_R_50.yaml": 'MODEL:\n  NAME: "token_classification"\n'
    + _CLASSIFIER,
    "task_ablations/multilabel_classification_R_50.yaml": "DATA:\n  VOCAB_SIZE: 81\n"
    'MODEL:\n  NAME: "multilabel_classification"\n' + _CLASSIFIER,
    "width_ablations/bicaptioning_R_50_L1_H512.yaml": _textual("L1_H512_A8_F2048"),
    "width_ablations/bicaptioning_R_50_L1_H768.yaml": _textual("L1_H768_A12_F3072"),
    "width_ablations/bicaptioning_R_50_L1_H1024.yaml": "",
    "width_ablations/bicaptioning_R_50_L1_H2048.yaml": _textual("L1_H2048_A32_F8192"),
    "depth_ablations/bicaptioning_R_50_L1_H1024.yaml": "",
    "depth_ablations/bicaptioning_R_50_L2_H1024.yaml": _textual("L2_H1024_A16_F4096"),
    "depth_ablations/bicaptioning_R_50_L3_H1024.yaml": _textual("L3_H1024_A16_F4096"),
    "depth_ablations/bicaptioning_R_50_L4_H1024.yaml": _textual("L4_H1024_A16_F4096"),
    "backbone_ablations/bicaptioning_R_50_L1_H1024.yaml": "",
    "backbone_ablations/bicaptioning_R_50W2X_L1_H1024.yaml": "MODEL:\n  VISUAL:\n    NAME: "
    '"torchvision::wide_resnet50_2"\n',
    "backbone_ablations/bicaptioning_R_101_L1_H1024.yaml": "MODEL:\n  VISUAL:\n    NAME: "
    '"torchvision::resnet101"\n',
}


@pytest.mark.parametrize("name", NAMES)
def test_ours_equal_the_imported_original(tmp_path: Path, name: str) -> None:
    base = tmp_path / "_base_bicaptioning_R_50_L1_H1024.yaml"
    base.write_text(ORIGINAL_BASE, encoding="utf-8")
    original = base
    if name in ORIGINAL_CHILDREN:
        original = tmp_path / name
        original.parent.mkdir(parents=True, exist_ok=True)
        parent = "../" if "/" in name else ""
        original.write_text(
            f'_BASE_: "{parent}_base_bicaptioning_R_50_L1_H1024.yaml"\n' + ORIGINAL_CHILDREN[name],
            encoding="utf-8",
        )
    if not get_objective(load_config(PRETRAIN / name).model.kind).original_names:
        pytest.skip("an objective the original does not have")
    imported, ours = load_legacy_config(original), load_config(PRETRAIN / name)
    if ours.model.kind in ("token_classification", "multilabel_classification"):
        # No Transformer: the textual section is unused (the original says NAME "none").
        for config in (imported, ours):
            config.model.textual = TextualConfig()
    assert imported == ours


def test_quickstart_file_is_small_and_uses_the_built_in_data() -> None:
    config = load_config(ROOT / "configs" / "quickstart.yaml")
    assert config == quickstart_config()
    assert config.data.train_lmdb.startswith("data/synth/")
    assert config.model.visual.name == "resnet18"
    assert config.data.transform.image_size == 32 and config.data.transform.color_jitter is None
    assert config.model.textual.width <= 256 and config.model.textual.layers == 1
