"""virtex-train: pretraining VirTex objectives from a laptop CPU to a SLURM GPU cluster.

The main names are importable from here; they load on first use, so ``virtex-train --help``
does not pay for importing torch and the models.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Trainer": "virtex_train.trainer",
    "Hook": "virtex_train.trainer",
    "StepResult": "virtex_train.trainer",
    "NonFiniteLossError": "virtex_train.trainer",
    "run_pretraining": "virtex_train.pretrain",
    "pretrain": "virtex_train.pretrain",
    "PretrainError": "virtex_train.pretrain",
    "RunResult": "virtex_train.pretrain",
    "CheckpointManager": "virtex_train.checkpoint",
    "CheckpointError": "virtex_train.checkpoint",
    "load_checkpoint": "virtex_train.checkpoint",
    "DistEnv": "virtex_train.distributed",
    "detect_env": "virtex_train.distributed",
    "ExperimentConfig": "virtex_train.config",
    "TrainConfig": "virtex_train.config",
    "load_config": "virtex_train.config",
    "OptimConfig": "virtex_train.optim",
    "build_optimizer": "virtex_train.optim",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'virtex_train' has no attribute {name!r}")
