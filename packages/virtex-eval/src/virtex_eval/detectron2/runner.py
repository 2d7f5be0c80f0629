"""Fine-tune and evaluate a detectron2 detector initialised with a VirTex backbone.

The flow of ``virtex-eval detectron2``:

1. the VirTex checkpoint's backbone is exported (``virtex_models.export``) to
   ``OUTPUT_DIR/backbone_detectron2.pth`` and becomes ``MODEL.WEIGHTS``; the matching
   ``MODEL.RESNETS`` settings (depth, ``STRIDE_IN_1X1=False``, ...) are merged after the config
   file and before the command-line overrides;
2. every process (one per GPU, through detectron2's distributed worker) registers the datasets,
   builds the config, trains with a ``DefaultTrainer`` (or only evaluates) and evaluates with
   detectron2's COCO / LVIS / VOC evaluators;
3. the main process writes ``OUTPUT_DIR/metrics_detectron2.json``.

No file runs code: the config and its ``_BASE_`` chain are parsed with a safe YAML loader
first (:func:`virtex_eval.detectron2.safe_loading.read_config_chain`) and detectron2 gets
``allow_unsafe=False``; every checkpointer reads ``.pkl`` weights through a restricted unpickler
(numpy arrays and plain containers only) and everything else with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from virtex_eval.detectron2 import METRICS_FILE, compat
from virtex_eval.detectron2.safe_loading import (
    detectron2_checkpoint,
    load_weights_file,
    read_config_chain,
    read_pickled_weights,
)
from virtex_models.atomic_file import atomic_write_text
from virtex_models.torchfile import load_weights_only

__all__ = ["Detectron2Run", "build_config", "metrics_summary", "run"]

logger = logging.getLogger(__name__)

#: File name of the exported backbone inside OUTPUT_DIR.
BACKBONE_FILE = "backbone_detectron2.pth"


@dataclass(kw_only=True)
class Detectron2Run:
    """One ``virtex-eval detectron2`` invocation.

    Attributes:
        d2_config: a detectron2 YAML (e.g. ``configs/detectron2/coco_segm_default_init_2x.yaml``).
        checkpoint: a VirTex checkpoint (its backbone is exported), or a detectron2 ``.pth``/
            ``.pkl`` used as ``MODEL.WEIGHTS`` as it is; ``None`` keeps the config's weights
            (random initialisation with the VirTex configs).
        opts: detectron2 ``KEY VALUE`` overrides, applied last.
        output_dir: overrides ``OUTPUT_DIR``.
        num_gpus: processes on this machine (one per GPU); 1 runs in this process.
        num_machines, machine_rank, dist_url: multi-machine training (detectron2's launch).
        resume: continue from ``OUTPUT_DIR/last_checkpoint`` when there is one.
        eval_only: evaluate ``checkpoint``, else OUTPUT_DIR's last checkpoint, else
            ``MODEL.WEIGHTS``.
        data_root: ``$DETECTRON2_DATASETS`` for the built-in COCO / LVIS / VOC names.
        synth: a built-in dataset folder (``virtex-data synth``), registered as
            ``virtex_synth_train`` / ``virtex_synth_val``.
        coco: extra COCO-format datasets as ``(name, json_file, image_root)``.
    """

    d2_config: Path
    checkpoint: Path | None = None
    opts: list[str] = field(default_factory=list)
    output_dir: Path | None = None
    num_gpus: int = 1
    num_machines: int = 1
    machine_rank: int = 0
    dist_url: str = "auto"
    resume: bool = False
    eval_only: bool = False
    data_root: Path | None = None
    synth: Path | None = None
    coco: list[tuple[str, str, str]] = field(default_factory=list)


def _is_virtex_checkpoint(path: Path) -> bool:
    if path.suffix == ".pkl":
        # detectron2 model-zoo pickles: checked now (restricted unpickler), so that a refused
        # file fails before any work; the checkpointers read it the same way later.
        detectron2_checkpoint(read_pickled_weights(path), str(path))
        return False
    loaded = load_weights_file(str(path))  # {"model": the file's dict} unless it has "model"
    inner = loaded["model"]
    return "model_spec" in loaded or (isinstance(inner, Mapping) and "model_spec" in inner)


def _make_safe(checkpointer: Any) -> Any:
    """Route a detectron2 checkpointer's file reading through :func:`load_weights_file`.

    detectron2 ``pickle.load``\\ s ``.pkl`` files and fvcore calls ``torch.load`` without
    ``weights_only``: the instance attribute shadows that method for every load (``--checkpoint``,
    ``MODEL.WEIGHTS``, ``OUTPUT_DIR/last_checkpoint``).
    """
    checkpointer._load_file = load_weights_file
    return checkpointer


def _backbone_opts(weights: Path) -> list[str]:
    """``MODEL.RESNETS.*`` KEY VALUE pairs stored in an exported backbone (else none)."""
    if weights.suffix == ".pkl" or not weights.is_file():
        return []
    checkpoint = load_weights_only(weights)
    options = checkpoint.get("resnet") if isinstance(checkpoint, Mapping) else None
    if not isinstance(options, Mapping):
        return []
    return [str(x) for item in options.items() for x in item]


def build_config(
    run: Detectron2Run, weights: str | None = None, backbone_opts: Sequence[str] = ()
) -> Any:
    """detectron2's frozen ``CfgNode``: file, then ``backbone_opts``, then ``run.opts``.

    ``MODEL.DEVICE`` falls back to ``cpu`` when CUDA is not available.
    """
    compat.apply()
    from detectron2.config import get_cfg

    if not run.d2_config.is_file():
        raise FileNotFoundError(f"detectron2 config {run.d2_config} does not exist")
    # Every file of the _BASE_ chain parsed safely before detectron2 opens any of them.
    read_config_chain(run.d2_config)
    if len(run.opts) % 2:
        raise ValueError(f"overrides come as KEY VALUE pairs, got an odd list: {run.opts}")
    cfg = get_cfg()
    # yacs reports an unknown key as KeyError / a wrong type as ValueError, without the source.
    try:
        # allow_unsafe=False: detectron2 would otherwise retry a file with yaml.unsafe_load.
        cfg.merge_from_file(str(run.d2_config), allow_unsafe=False)
    except (KeyError, ValueError, AssertionError, yaml.YAMLError) as error:
        raise ValueError(f"{run.d2_config}: {error}") from None
    cfg.merge_from_list(list(backbone_opts))
    try:
        cfg.merge_from_list(list(run.opts))
    except (KeyError, ValueError, AssertionError) as error:
        raise ValueError(f"command-line override: {error}") from None
    if weights is not None:
        cfg.MODEL.WEIGHTS = weights
    if run.output_dir is not None:
        cfg.OUTPUT_DIR = str(run.output_dir)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("CUDA is not available: running detectron2 on the CPU")
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def _register_datasets(run: Detectron2Run) -> None:
    from virtex_eval.detectron2.datasets import register_coco_folder, register_synth

    if run.synth is not None:
        register_synth(run.synth)
    for name, json_file, image_root in run.coco:
        register_coco_folder(name, json_file, image_root)


def _check_num_classes(cfg: Any) -> None:
    from detectron2.data import MetadataCatalog

    for name in cfg.DATASETS.TRAIN:
        classes = MetadataCatalog.get(name).get("thing_classes")
        if classes is not None and len(classes) != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
            raise ValueError(
                f"dataset {name!r} has {len(classes)} classes but MODEL.ROI_HEADS.NUM_CLASSES is "
                f"{cfg.MODEL.ROI_HEADS.NUM_CLASSES}: add `MODEL.ROI_HEADS.NUM_CLASSES "
                f"{len(classes)}` to the overrides"
            )


def _trainer_class() -> Any:
    from detectron2.data import MetadataCatalog
    from detectron2.engine import DefaultTrainer
    from detectron2.evaluation import COCOEvaluator, LVISEvaluator, PascalVOCDetectionEvaluator

    class VirtexDetectionTrainer(DefaultTrainer):
        """``DefaultTrainer`` with the evaluator chosen from the dataset's ``evaluator_type``
        and a checkpointer that runs no code from the files it reads."""

        def __init__(self, cfg: Any) -> None:
            super().__init__(cfg)
            _make_safe(self.checkpointer)

        @classmethod
        def build_evaluator(cls, cfg: Any, dataset_name: str, output_folder: Any = None) -> Any:
            output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
            kind = MetadataCatalog.get(dataset_name).get("evaluator_type")
            tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
            if kind == "coco":
                return COCOEvaluator(
                    dataset_name,
                    tasks,
                    output_dir=output_folder,
                    max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
                    # The C++ evaluator exists only in a detectron2 with compiled ops.
                    use_fast_impl=compat.compiled_ops_available(),
                )
            if kind == "lvis":
                return LVISEvaluator(
                    dataset_name,
                    tasks,
                    output_dir=output_folder,
                    max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
                )
            if kind == "pascal_voc":
                return PascalVOCDetectionEvaluator(dataset_name)
            raise ValueError(f"no evaluator for dataset {dataset_name!r} (type {kind!r})")

    return VirtexDetectionTrainer


def _clean(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN: AP of a category absent from the split
    if hasattr(value, "item"):
        return _clean(value.item())
    return value


def metrics_summary(results: Mapping[str, Any], test_datasets: Sequence[str]) -> dict[str, Any]:
    """``{"bbox": {"AP": ..}, "segm": {..}, "dataset": name}`` from detectron2's test results.

    detectron2 returns ``{dataset: {task: {metric: value}}}``, collapsed to ``{task: ...}`` when
    there is one test dataset. The first dataset's tasks are at the top; with several datasets
    all of them are under ``datasets``.
    """
    if test_datasets and set(results) <= set(test_datasets):
        per_dataset = {name: _clean(results[name]) for name in test_datasets if name in results}
    else:
        name = test_datasets[0] if test_datasets else "test"
        per_dataset = {name: _clean(results)}
    if not per_dataset:
        return {}
    first = next(iter(per_dataset))
    summary: dict[str, Any] = {**per_dataset[first], "dataset": first}
    if len(per_dataset) > 1:
        summary["datasets"] = per_dataset
    return summary


def _worker(run: Detectron2Run, weights: str | None, backbone_opts: list[str]) -> None:
    compat.apply()
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.engine import default_setup
    from detectron2.utils import comm

    from virtex_eval.detectron2.modeling import register_modeling

    register_modeling()
    _register_datasets(run)
    cfg = build_config(run, weights, backbone_opts)
    default_setup(cfg, argparse.Namespace(config_file=str(run.d2_config), eval_only=run.eval_only))
    _check_num_classes(cfg)
    trainer_class = _trainer_class()
    if run.eval_only:
        model = trainer_class.build_model(cfg)
        checkpointer = _make_safe(DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR))
        # --checkpoint wins; otherwise OUTPUT_DIR's last checkpoint (the fine-tuned detector).
        if (run.resume or run.checkpoint is None) and checkpointer.has_checkpoint():
            weights_used = checkpointer.get_checkpoint_file()
        else:
            weights_used = cfg.MODEL.WEIGHTS
        checkpointer.load(weights_used)
        results = trainer_class.test(cfg, model)
        iteration = None
    else:
        trainer = trainer_class(cfg)
        trainer.resume_or_load(resume=run.resume)
        trainer.train()
        results = getattr(trainer, "_last_eval_results", None) or {}
        iteration = trainer.iter  # detectron2 leaves it at MAX_ITER after the last step
        weights_used = cfg.MODEL.WEIGHTS
    if comm.is_main_process() and results:
        summary = metrics_summary(results, list(cfg.DATASETS.TEST))
        summary["iteration"] = iteration
        # Training: the initial weights; --eval-only: the evaluated checkpoint.
        summary["weights"] = weights_used
        path = Path(cfg.OUTPUT_DIR) / METRICS_FILE
        atomic_write_text(path, json.dumps(summary, indent=2) + "\n")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _spawned(
    local_rank: int,
    main: Callable[..., None],
    world_size: int,
    num_gpus: int,
    machine_rank: int,
    dist_url: str,
    args: tuple[Any, ...],
) -> None:
    # A spawned process imports detectron2's launch module to run its worker: the shims must be
    # in place first (detectron2.engine imports detectron2.data, which needs Image.LINEAR).
    compat.apply()
    from detectron2.engine.launch import _distributed_worker

    _distributed_worker(local_rank, main, world_size, num_gpus, machine_rank, dist_url, args)


def _launch(run: Detectron2Run, args: tuple[Any, ...]) -> None:
    world_size = run.num_gpus * run.num_machines
    if world_size <= 1:
        _worker(*args)
        return
    if torch.cuda.device_count() < run.num_gpus:
        raise ValueError(
            f"--num-gpus {run.num_gpus} but {torch.cuda.device_count()} CUDA devices are visible"
        )
    dist_url = run.dist_url
    if dist_url == "auto":
        if run.num_machines > 1:
            raise ValueError("--dist-url auto works on one machine only; give tcp://HOST:PORT")
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    torch.multiprocessing.spawn(
        _spawned,
        nprocs=run.num_gpus,
        args=(_worker, world_size, run.num_gpus, run.machine_rank, dist_url, args),
        daemon=False,
    )


def run(run: Detectron2Run) -> dict[str, Any]:
    """Export the backbone, train and/or evaluate; returns ``metrics_detectron2.json``'s content
    (empty when nothing was evaluated).

    Raises:
        FileNotFoundError: a missing config, checkpoint or dataset file, naming it.
        ValueError: inconsistent options (odd overrides, class count, GPU count).
    """
    compat.apply()
    if run.data_root is not None:
        from virtex_eval.detectron2.datasets import set_data_root

        set_data_root(run.data_root)
    from virtex_models.export import save_detectron2

    cfg = build_config(run)
    output_dir = Path(cfg.OUTPUT_DIR)
    output_dir.mkdir(parents=True, exist_ok=True)
    weights: str | None = None
    backbone_opts: list[str] = []
    exported = output_dir / BACKBONE_FILE
    if run.checkpoint is not None:
        if not run.checkpoint.is_file():
            raise FileNotFoundError(f"checkpoint {run.checkpoint} does not exist")
        if _is_virtex_checkpoint(run.checkpoint):
            save_detectron2(run.checkpoint, exported)
            weights = str(exported)
        else:
            weights = str(run.checkpoint)
    elif (run.resume or run.eval_only) and exported.is_file():
        # Resuming / evaluating a run started from a VirTex backbone: the same architecture.
        weights = str(exported)
    if weights is not None:
        backbone_opts = _backbone_opts(Path(weights))
    metrics = output_dir / METRICS_FILE
    if metrics.exists():
        metrics.unlink()
    _launch(run, (run, weights, backbone_opts))
    if metrics.is_file():
        result: dict[str, Any] = json.loads(metrics.read_text(encoding="utf-8"))
        return result
    return {}
