"""configs/finetune/: the fine-tuning recipe loads, fits the main pretrained model, is gentler."""

from __future__ import annotations

from pathlib import Path

from virtex_models import VocabSpec
from virtex_train.config import load_config

ROOT = Path(__file__).resolve().parents[3]


def test_finetune_recipe_matches_the_main_model_with_lower_rates() -> None:
    tune = load_config(ROOT / "configs" / "finetune" / "captioning_R_50_L1_H2048.yaml")
    main = load_config(ROOT / "configs" / "pretrain" / "bicaptioning_R_50_L1_H2048.yaml")
    # Same architecture as the checkpoint it starts from (init_from is strict by default).
    assert tune.model == main.model
    assert tune.train.init_from and tune.train.init_strict
    assert tune.optim.cnn_lr <= main.optim.cnn_lr / 10 and tune.optim.lr <= main.optim.lr / 10
    assert tune.train.num_steps <= main.train.num_steps / 10
    assert tune.optim.schedule.warmup_steps < main.optim.schedule.warmup_steps
    assert tune.train.collapse_threshold > 0
    vocab = VocabSpec(size=100, pad=0, unk=1, sos=2, eos=3, mask=4)
    assert tune.model.build(vocab) is not None
