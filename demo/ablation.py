"""The paper's task ablation in miniature, on the built-in data, on a CPU.

From nothing: generate the built-in captioned shapes dataset (``virtex_data.synth``), build its
vocabulary and LMDB files, pretrain the same small backbone (ResNet-18) with each objective
(bicaptioning, forward captioning, token classification, multilabel classification, masked LM,
and CapPa, added after the paper) for the same number of images seen, then transfer each
frozen backbone (and a randomly initialised one) to held-out downstream tasks defined by the
scene attributes:

- linear probes (``virtex_eval.linear.train_on_features``: logistic regression on pooled
  ``layer4`` features) for ``num_objects``, ``largest_colour``, ``leftmost_colour``,
  ``largest_shape`` and ``background``;
- the VOC07 SVM protocol (``virtex_eval.voc07.train_test_svms``: per-class linear SVMs with a
  cost sweep, mAP) on "which colours are present" (8 classes; multilabel pretraining sees shapes
  only);
- captioning CIDEr (``virtex_eval.metrics``) of the captioning objectives (those the objective
  registry says can caption) on the val split.

The random backbone (``random_init``) gets its BatchNorm statistics from the probe's train images
(:func:`calibrate_batchnorm`), as every pretrained backbone has statistics of its pretraining
images; the same weights with their initial statistics are probed too and reported in the last
table row (``meta.random_init_uncalibrated``).

Writes ``ablation.md``, ``ablation.json``, ``pretraining_curves.png``, ``probe_accuracies.png``,
the per-run ``virtex-eval report`` pages (``runs/<objective>/report.html``) and prints the table.

Usage::

    python demo/ablation.py --preset fast --output-dir runs/ablation-fast     # <= 5 min, 2 cores
    python demo/ablation.py --preset default --output-dir runs/ablation       # <= 30 min

Pretraining runs ``python -m virtex_train.cli pretrain`` in subprocesses, two at a time with one
torch thread each (on 2 cores that is faster than one run at a time with two threads); the last
run, which ends alone, gets ``parallel`` threads.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
from torch.optim.swa_utils import update_bn

from virtex_data import DataConfig
from virtex_data.builder import build_dataset
from virtex_data.synth import ATTRIBUTE_CLASSES, COLOURS, SHAPES
from virtex_data.synth_grounding import grounding
from virtex_data.transforms import EvalTransform, TransformConfig
from virtex_eval.captioner import Captioner, DecodeSettings, load_captioner
from virtex_eval.features import FeatureSet, extract_features
from virtex_eval.images import load_image_tensor
from virtex_eval.linear import train_on_features
from virtex_eval.metrics import evaluate_captions
from virtex_eval.report import write_report
from virtex_eval.voc07 import SvmConfig, l2_normalize, train_test_svms
from virtex_eval.weights import load_backbone
from virtex_models.registry import get_objective
from virtex_train.config import load_config
from virtex_train.quickstart import ensure_builtin_data

OBJECTIVES: tuple[str, ...] = (
    "bicaptioning",
    "captioning",
    "token_classification",
    "multilabel_classification",
    "masked_lm",
    # Not in the paper: CapPa (Tschannen et al., 2023), captioning with parallel prediction.
    "cappa",
)
ROWS: tuple[str, ...] = (*OBJECTIVES, "random_init")
#: Table label of the random backbone probed with its initial BatchNorm statistics (mean 0,
#: variance 1: no normalisation); ``random_init`` has statistics from the probe's train images.
UNCALIBRATED = "random_init (BN stats at init)"
#: Pretraining order: the objectives with a Transformer head (slower) first, so that two lanes
#: finish together.
SCHEDULE: tuple[str, ...] = tuple(
    sorted(OBJECTIVES, key=lambda name: not get_objective(name).textual)
)
#: The objectives that caption (CIDEr and the grounding checks).
CAPTIONING: tuple[str, ...] = tuple(o for o in OBJECTIVES if get_objective(o).captions)
#: Single-label probe tasks (attribute -> linear probe accuracy).
PROBE_TASKS: tuple[str, ...] = (
    "num_objects",
    "largest_colour",
    "leftmost_colour",
    "largest_shape",
    "background",
)
#: The multi-label VOC07-style SVM task.
SVM_TASK = "colours_present"
TASKS: tuple[str, ...] = (*PROBE_TASKS, SVM_TASK)


@dataclass(frozen=True)
class Preset:
    """Sizes of one ablation run (every objective sees ``steps * batch`` images)."""

    image_size: int
    train_images: int
    val_images: int
    steps: int
    batch: int
    lr: float
    warmup: int
    schedule: str
    textual_width: int
    probe_train: int
    caption_images: int
    beam_size: int


PRESETS: dict[str, Preset] = {
    "fast": Preset(
        image_size=32,
        train_images=4000,
        val_images=2000,
        steps=600,
        batch=16,
        lr=0.05,
        warmup=60,
        schedule="cosine",
        textual_width=128,
        probe_train=3000,
        caption_images=500,
        beam_size=1,
    ),
    "default": Preset(
        image_size=48,
        train_images=10000,
        val_images=1000,
        steps=1500,
        batch=16,
        lr=0.05,
        warmup=150,
        schedule="cosine",
        textual_width=128,
        probe_train=3000,
        caption_images=1000,
        beam_size=1,
    ),
}


def echo(message: str) -> None:
    click.echo(message, err=False)


# ------------------------------------------------------------------------------------ data
def data_config(root: Path, size: int) -> DataConfig:
    return DataConfig(
        train_lmdb=str(root / "train.lmdb"),
        val_lmdb=str(root / "val.lmdb"),
        tokenizer=str(root / "tokenizer.json"),
        train_instances=str(root / "annotations" / "instances_train.json"),
        val_instances=str(root / "annotations" / "instances_val.json"),
        transform=TransformConfig(image_size=size, eval_resize=size),
    )


def build_data(root: Path, preset: Preset, seed: int = 0) -> DataConfig:
    data = data_config(root, preset.image_size)
    ensure_builtin_data(
        data,
        images={"train": preset.train_images, "val": preset.val_images},
        size=preset.image_size,
        workers=min(2, os.cpu_count() or 1),
        seed=seed,
        # Objects named in random order, as when the tables were measured (the quickstart
        # names the largest first).
        caption_order="random",
        echo=echo,
    )
    return data


# ------------------------------------------------------------------------------ pretraining
def overrides(objective: str, data: DataConfig, preset: Preset, seed: int = 0) -> list[str]:
    """Dotted overrides of the quickstart config for one objective."""
    width = preset.textual_width
    values = {
        "seed": seed,
        "data.train_lmdb": data.train_lmdb,
        "data.val_lmdb": data.val_lmdb,
        "data.tokenizer": data.tokenizer,
        "data.train_instances": data.train_instances,
        "data.val_instances": data.val_instances,
        "data.transform.image_size": preset.image_size,
        "data.transform.eval_resize": preset.image_size,
        # Colours and counts are what the captions talk about: no colour jitter, mild crops.
        "data.transform.color_jitter": "null",
        "data.transform.crop_scale": "[0.8,1.0]",
        "model.kind": objective,
        "model.textual.width": width,
        "model.textual.heads": max(1, width // 64),
        "model.textual.ffn": 4 * width,
        # The quickstart dropped these for speed; the ablation's tables were measured with them.
        "model.textual.dropout": 0.1,
        "optim.fused": "false",
        "optim.cnn_lr": preset.lr,
        "optim.lr": preset.lr,
        "optim.schedule.warmup_steps": preset.warmup,
        "optim.schedule.kind": preset.schedule,
        # Lookahead (alpha 0.5) halves the progress of such short runs: off (measured: val loss
        # 2.74 without, 3.07 with, after 150 steps of bicaptioning in the fast preset).
        "optim.lookahead.enabled": "false",
        "train.num_steps": preset.steps,
        "train.batch_size": preset.batch,
        "train.num_workers": 0,
        "train.log_every": max(1, preset.steps // 30),
        "train.checkpoint_every": 0,
        "train.keep_last": 1,
        "train.val_every": 0,
        "train.val_batches": 2,
        "train.sample_captions": 4,
    }
    return [f"{key}={value}" for key, value in values.items()]


def pretrain_all(
    runs: Path, data: DataConfig, preset: Preset, parallel: int, seed: int = 0
) -> dict[str, float]:
    """Pretrain every objective (``parallel`` subprocesses at a time); returns seconds per run."""
    pending = [o for o in SCHEDULE if o in OBJECTIVES]
    running: dict[str, tuple[subprocess.Popen[bytes], float, Any]] = {}
    seconds: dict[str, float] = {}
    while pending or running:
        while pending and len(running) < parallel:
            objective = pending.pop(0)
            out = runs / objective
            if (out / "checkpoints" / "final.pt").is_file():
                echo(f"  {objective}: already pretrained, reusing {out}")
                continue
            out.mkdir(parents=True, exist_ok=True)
            config = load_config(None, overrides(objective, data, preset, seed))
            (out / "experiment.yaml").write_text(config.to_yaml(), encoding="utf-8")
            log = (out / "train.log").open("wb")
            command = [
                sys.executable,
                "-m",
                "virtex_train.cli",
                "pretrain",
                str(out / "experiment.yaml"),
                "--output-dir",
                str(out),
                "--no-progress",
                "--device",
                "cpu",
            ]
            echo(f"  pretraining {objective} ({preset.steps} steps x {preset.batch} images)")
            # The last run ends alone: give it every lane's thread (it shares the cores with the
            # other lane's tail for a while; measured on the fast preset: 35 s instead of 53 s).
            threads = str(parallel if not pending else 1)
            env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            running[objective] = (process, time.perf_counter(), log)
        for objective, (process, start, log) in list(running.items()):
            if process.poll() is None:
                continue
            log.close()
            del running[objective]
            if process.returncode != 0:
                tail = (runs / objective / "train.log").read_text(errors="replace")[-3000:]
                raise click.ClickException(
                    f"pretraining {objective} failed (exit {process.returncode}); "
                    f"log {runs / objective / 'train.log'}:\n{tail}"
                )
            seconds[objective] = time.perf_counter() - start
            echo(f"  {objective}: done in {seconds[objective]:.0f} s")
        time.sleep(0.2)
    return seconds


# ----------------------------------------------------------------------------------- probes
def read_attributes(root: Path, split: str) -> list[dict[str, Any]]:
    payload = json.loads((root / "annotations" / f"attributes_{split}.json").read_text())
    return sorted(payload["images"], key=lambda record: int(record["image_id"]))


def image_paths(root: Path, split: str) -> dict[int, Path]:
    payload = json.loads((root / "annotations" / f"captions_{split}.json").read_text())
    return {int(image["id"]): root / split / image["file_name"] for image in payload["images"]}


def load_images(root: Path, split: str, ids: Sequence[int], size: int) -> torch.Tensor:
    """``(N, 3, S, S)`` normalised images, whole (resize to S, no crop)."""
    paths = image_paths(root, split)
    transform = EvalTransform(TransformConfig(image_size=size, eval_resize=size))
    return torch.stack([load_image_tensor(paths[i], transform) for i in ids])


class _Indexed(torch.utils.data.Dataset[tuple[torch.Tensor, int]]):
    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], index


def labels(records: Sequence[dict[str, Any]], task: str) -> torch.Tensor:
    classes = ATTRIBUTE_CLASSES[task]
    return torch.tensor([classes.index(r[task]) for r in records], dtype=torch.int64)


def colours_present(records: Sequence[dict[str, Any]]) -> np.ndarray:
    return np.array(
        [[float(r["colour_counts"][c] > 0) for c in COLOURS] for r in records], dtype=np.float64
    )


def calibrate_batchnorm(backbone: torch.nn.Module, images: torch.Tensor) -> None:
    """Replace the BatchNorm running statistics with those of ``images`` (weights untouched).

    A pretrained backbone's statistics come from its pretraining images; a freshly initialised
    one has mean 0 and variance 1 in every layer, i.e. no normalisation at all. Calibrating the
    random backbone on the same images gives it the same treatment, so that the comparison with
    the pretrained rows measures the learned weights alone (``torch.optim.swa_utils.update_bn``:
    a cumulative average over one pass, then eval mode again).
    """
    batches = [images[start : start + 100] for start in range(0, len(images), 100)]
    with torch.no_grad():
        update_bn(batches, backbone)
    backbone.eval()


def probe_backbone(
    weights: str,
    images: dict[str, torch.Tensor],
    records: dict[str, list[dict[str, Any]]],
    *,
    calibrate: bool = False,
) -> dict[str, float]:
    """Linear-probe accuracies and the colour SVM mAP of one frozen backbone (``calibrate``:
    BatchNorm statistics from the probe's train images first, see :func:`calibrate_batchnorm`)."""
    backbone = load_backbone(weights).backbone
    if calibrate:
        calibrate_batchnorm(backbone, images["train"])
    feats = {
        split: extract_features(
            backbone,
            _Indexed(images[split]),
            batch_size=100,
            num_workers=0,
            channels_last=False,
            progress=False,
            desc=split,
        ).features["layer4"]
        for split in ("train", "val")
    }
    result: dict[str, float] = {}
    for task in PROBE_TASKS:
        sets = {
            split: FeatureSet(
                features={"layer4": feats[split]},
                targets=[labels(records[split], task)],
                meta={"classes": [str(c) for c in ATTRIBUTE_CLASSES[task]]},
            )
            for split in ("train", "val")
        }
        result[task] = float(train_on_features(sets["train"], sets["val"])["top1"]) / 100.0
    train_x = l2_normalize(feats["train"].double().numpy())
    val_x = l2_normalize(feats["val"].double().numpy())
    train_y, val_y = colours_present(records["train"]), colours_present(records["val"])
    svm = train_test_svms(
        train_x,
        train_y,
        np.zeros_like(train_y, dtype=bool),
        val_x,
        val_y,
        np.zeros_like(val_y, dtype=bool),
        classes=list(COLOURS),
        config=SvmConfig(dual=False),
        jobs=min(2, os.cpu_count() or 1),
        progress=False,
    )
    result[SVM_TASK] = float(svm.mean_ap)  # AP is a fraction in [0, 1]
    return result


# ------------------------------------------------------------------------------- captioning
_WORDS = re.compile(r"[a-z]+")


def mentioned(caption: str) -> tuple[set[str], set[str]]:
    words = set(_WORDS.findall(caption.lower()))
    plural = {s + "s" if not s.endswith("x") else s + "es": s for s in SHAPES}
    shapes = {s for s in SHAPES if s in words} | {plural[w] for w in words if w in plural}
    return shapes, {c for c in COLOURS if c in words}


def grounded(caption: str, record: dict[str, Any]) -> bool:
    """The caption names at least one shape or colour that is in the image."""
    shapes, colours = mentioned(caption)
    present_shapes = {s for s, k in record["shape_counts"].items() if k > 0}
    present_colours = {c for c, k in record["colour_counts"].items() if k > 0}
    return bool(shapes & present_shapes or colours & present_colours)


def all_named_present(caption: str, record: dict[str, Any]) -> bool:
    """Every shape and colour word named is present (no hallucinated attribute)."""
    shapes, colours = mentioned(caption)
    present_shapes = {s for s, k in record["shape_counts"].items() if k > 0}
    present_colours = {c for c, k in record["colour_counts"].items() if k > 0}
    return bool(shapes or colours) and shapes <= present_shapes and colours <= present_colours


def image_conditioning(captioner: Captioner, data: DataConfig) -> dict[str, float]:
    """Val loss (first caption per image) with each image, and with the images of the batch
    rolled by one, so every caption is scored against another image. The gap is how much the
    model's predictions depend on the image (0 = a pure language model)."""
    dataset = build_dataset(data, "val", "captioning", captioner.tokenizer)
    loader = torch.utils.data.DataLoader(dataset, batch_size=100, collate_fn=dataset.collate)
    totals, count = [0.0, 0.0], 0
    with torch.inference_mode():
        for batch in loader:
            rolled = dataclasses.replace(batch, images=batch.images.roll(1, dims=0))
            totals[0] += float(captioner.objective(batch).loss) * len(batch.image_ids)
            totals[1] += float(captioner.objective(rolled).loss) * len(batch.image_ids)
            count += len(batch.image_ids)
    return {"val_loss": totals[0] / count, "val_loss_shuffled_images": totals[1] / count}


def caption_eval(
    checkpoint: Path,
    data: DataConfig,
    images: torch.Tensor,
    records: Sequence[dict[str, Any]],
    references: dict[int, list[str]],
    beam_size: int,
) -> dict[str, Any]:
    captioner = load_captioner(checkpoint)
    conditioning = image_conditioning(captioner, data)
    settings = DecodeSettings(beam_size=beam_size)
    captions: list[str] = []
    with torch.inference_mode():
        for start in range(0, len(images), 100):
            captions += captioner.caption_tensors(images[start : start + 100], settings)
    ids = [int(r["image_id"]) for r in records]
    predictions = dict(zip(ids, captions, strict=True))
    scores = evaluate_captions(predictions, {i: references[i] for i in ids}).corpus
    shuffled = captions[1:] + captions[:1]  # every caption scored against another image
    return {
        **conditioning,
        "CIDEr": scores["CIDEr"],
        "BLEU-4": scores["BLEU-4"],
        "grounded": float(np.mean([grounded(c, r) for c, r in zip(captions, records)])),
        "grounded_shuffled": float(np.mean([grounded(c, r) for c, r in zip(shuffled, records)])),
        "all_correct": float(np.mean([all_named_present(c, r) for c, r in zip(captions, records)])),
        "all_correct_shuffled": float(
            np.mean([all_named_present(c, r) for c, r in zip(shuffled, records)])
        ),
        # The quickstart's checks (virtex_data.synth_grounding): the largest object's colour
        # and shape named, the stated count right, each beside the shuffled captions' rate.
        **_synth_grounding(predictions, records),
        "examples": [
            {"image_id": i, "caption": c, "references": references[i][:2]}
            for i, c in list(zip(ids, captions))[:8]
        ],
    }


def _synth_grounding(
    predictions: dict[int, str], records: Sequence[dict[str, Any]]
) -> dict[str, float]:
    checked = grounding(predictions, records)
    result = {"distinct_captions": float(checked.distinct)}
    names = {"colour": "largest_colour", "shape": "largest_shape", "count": "count"}
    for field, key in names.items():
        result[key] = getattr(checked.captions, field)
        result[f"{key}_shuffled"] = getattr(checked.shuffled, field)
    result["counted"] = checked.captions.counted
    return result


# --------------------------------------------------------------------------------- outputs
def table_rows(results: dict[str, Any]) -> list[tuple[str, dict[str, float]]]:
    """``(label, task values)`` per objective (``ROWS``), then the uncalibrated random init
    when it was probed (``meta.random_init_uncalibrated``)."""
    rows = [(row, results[row]) for row in ROWS]
    extra = results.get("meta", {}).get("random_init_uncalibrated")
    return rows + [(UNCALIBRATED, extra)] if extra else rows


def markdown_table(results: dict[str, Any]) -> str:
    """The table of :func:`table_rows`, with the mean over tasks and CIDEr."""
    head = ["objective", *TASKS, "mean", "CIDEr"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, values in table_rows(results):
        cells = [f"{values[t]:.3f}" for t in TASKS]
        cells.append(f"{np.mean([values[t] for t in TASKS]):.3f}")
        cider = results["cider"].get(row)
        cells.append(f"{cider:.3f}" if cider is not None else "-")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curves(runs: Path, target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 3.8), dpi=90)
    for objective in OBJECTIVES:
        path = runs / objective / "metrics.jsonl"
        if not path.is_file():
            continue
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        train = [r for r in records if r.get("split") == "train" and "loss" in r]
        if not train:
            continue
        first = train[0]["loss"]
        axis.plot(
            [r["step"] for r in train],
            [r["loss"] / first for r in train],
            label=f"{objective} (first {first:.2f})",
        )
    axis.set_xlabel("step")
    axis.set_ylabel("train loss / first logged loss")
    axis.set_title("pretraining curves")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(target)
    plt.close(figure)


def plot_probes(results: dict[str, Any], target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table_rows(results)
    figure, axis = plt.subplots(figsize=(7.5, 3.8), dpi=90)
    width = 0.8 / len(rows)
    x = np.arange(len(TASKS))
    for k, (row, values) in enumerate(rows):
        axis.bar(
            x + k * width,
            [values[t] for t in TASKS],
            width,
            label=row,
            hatch="//" if row == UNCALIBRATED else None,
        )
    axis.set_xticks(x + 0.4 - width / 2, TASKS, fontsize=8)
    axis.set_ylabel("accuracy (SVM: mAP)")
    axis.set_ylim(0, 1)
    axis.set_title("frozen-backbone probes on held-out val images")
    axis.legend(fontsize=7, ncol=3)
    figure.tight_layout()
    figure.savefig(target)
    plt.close(figure)


# ------------------------------------------------------------------------------------ main
def run_ablation(
    preset_name: str, output_dir: Path, parallel: int = 2, seed: int = 0
) -> dict[str, Any]:
    """Everything: data, pretraining, probes, captioning, outputs. Returns ``ablation.json``.

    ``seed`` picks the built-in data's scenes and the pretraining seed (the random-init
    backbone stays seed 0).
    """
    preset = PRESETS[preset_name]
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    start = time.perf_counter()
    output_dir.mkdir(parents=True, exist_ok=True)
    root = output_dir / "data"
    runs = output_dir / "runs"
    echo(f"[1/4] built-in data ({preset.train_images} + {preset.val_images} images) in {root}")
    data = build_data(root, preset, seed)
    timings: dict[str, float] = {"data_s": time.perf_counter() - start}

    echo(f"[2/4] pretraining {len(OBJECTIVES)} objectives, {parallel} at a time")
    pretrain_s = pretrain_all(runs, data, preset, parallel, seed)
    timings["pretraining_s"] = time.perf_counter() - start - timings["data_s"]

    echo("[3/4] probes on frozen backbones (linear probes + colour SVMs)")
    t0 = time.perf_counter()
    records = {"train": read_attributes(root, "train")[: preset.probe_train]}
    records["val"] = read_attributes(root, "val")
    images = {
        split: load_images(
            root, split, [int(r["image_id"]) for r in records[split]], preset.image_size
        )
        for split in ("train", "val")
    }
    weights = {o: str(runs / o / "checkpoints" / "final.pt") for o in OBJECTIVES}
    weights["random_init"] = "random:resnet18"
    results: dict[str, Any] = {}
    for row in ROWS:
        results[row] = probe_backbone(weights[row], images, records, calibrate=row == "random_init")
        echo(f"  {row}: " + ", ".join(f"{t} {v:.3f}" for t, v in results[row].items()))
    # The same random weights with the BatchNorm statistics they are initialised with (no
    # normalisation): reported next to the table, not a row of ablation.json's schema.
    uncalibrated = probe_backbone(weights["random_init"], images, records)
    echo(f"  {UNCALIBRATED}: " + ", ".join(f"{t} {v:.3f}" for t, v in uncalibrated.items()))
    timings["probes_s"] = time.perf_counter() - t0

    echo("[4/4] captioning on the val split")
    t0 = time.perf_counter()
    captions_json = json.loads((root / "annotations" / "captions_val.json").read_text())
    references: dict[int, list[str]] = {}
    for entry in captions_json["annotations"]:
        references.setdefault(int(entry["image_id"]), []).append(entry["caption"])
    caption_records = records["val"][: preset.caption_images]
    captioning: dict[str, Any] = {}
    for objective in CAPTIONING:
        captioning[objective] = caption_eval(
            Path(weights[objective]),
            data,
            images["val"][: preset.caption_images],
            caption_records,
            references,
            preset.beam_size,
        )
        summary = {k: round(v, 3) for k, v in captioning[objective].items() if k != "examples"}
        echo(f"  {objective}: {summary}")
    timings["captioning_s"] = time.perf_counter() - t0
    results["cider"] = {o: captioning[o]["CIDEr"] for o in CAPTIONING}
    timings["total_s"] = time.perf_counter() - start
    results["meta"] = {
        "preset": preset_name,
        "seed": seed,
        "settings": asdict(preset),
        "tasks": {
            **{
                t: f"linear probe accuracy ({len(ATTRIBUTE_CLASSES[t])} classes)"
                for t in PROBE_TASKS
            },
            SVM_TASK: "VOC07-protocol SVM mAP over the 8 colours (multi-label)",
        },
        "captioning": captioning,
        "random_init_uncalibrated": uncalibrated,
        "pretraining_seconds": pretrain_s,
        "timings": timings,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "torch": torch.__version__,
        "command": f"python demo/ablation.py --preset {preset_name} --output-dir {output_dir}"
        + (f" --seed {seed}" if seed else ""),
    }

    table = markdown_table(results)
    (output_dir / "ablation.json").write_text(json.dumps(results, indent=1) + "\n")
    plot_curves(runs, output_dir / "pretraining_curves.png")
    plot_probes(results, output_dir / "probe_accuracies.png")
    reports = [write_report(runs / o, images=root / "val", samples=8) for o in OBJECTIVES]
    lines = [
        f"# Task ablation in miniature (preset `{preset_name}`)",
        "",
        f"Command: `{results['meta']['command']}`; {results['meta']['machine']}; "
        f"total {timings['total_s']:.0f} s.",
        "",
        "Downstream tasks on the val split (frozen ResNet-18 `layer4`, global average pooled):"
        " linear-probe accuracy, `colours_present` = VOC07-protocol SVM mAP; CIDEr of greedy"
        " captions for the captioning objectives. `random_init`: random weights, BatchNorm"
        " statistics from the probe's train images; last row: the same weights with their"
        " initial statistics (no normalisation).",
        "",
        table,
        "",
        "![pretraining curves](pretraining_curves.png)",
        "![probe accuracies](probe_accuracies.png)",
        "",
        "Reports: " + ", ".join(f"[{p.parent.name}]({p.relative_to(output_dir)})" for p in reports),
        "",
    ]
    (output_dir / "ablation.md").write_text("\n".join(lines))
    echo("")
    echo(table)
    echo(
        f"\nwrote {output_dir / 'ablation.md'}, ablation.json and plots "
        f"in {timings['total_s']:.0f} s"
    )
    return results


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--preset",
    type=click.Choice(sorted(PRESETS)),
    default="default",
    show_default=True,
    help="; ".join(
        f"{name}: {p.image_size} px, {p.steps} steps x {p.batch} images"
        for name, p in PRESETS.items()
    )
    + " (fast: <= 5 min on 2 cores, run by the tests; default: <= 30 min).",
)
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs/ablation"),
    show_default=True,
    help="Where the data, the runs, the table and the plots go (existing runs are reused).",
)
@click.option(
    "--parallel", type=int, default=2, show_default=True, help="Pretraining runs at a time."
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the built-in data's scenes and of pretraining (to measure the spread).",
)
def main(preset: str, output_dir: Path, parallel: int, seed: int) -> None:
    """Pretrain every VirTex objective on the built-in data and compare them on probes."""
    run_ablation(preset, output_dir, parallel, seed)


if __name__ == "__main__":
    main()
