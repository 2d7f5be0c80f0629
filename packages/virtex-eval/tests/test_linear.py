"""Linear classification: recipes, schedule, top-k, frozen BatchNorm, training, feature probe."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from sklearn.linear_model import LogisticRegression

from virtex_eval.cli.features import features_command
from virtex_eval.cli.linear import linear_command
from virtex_eval.features import FeatureSet
from virtex_eval.linear import (
    RECIPES,
    LinearClassifier,
    lr_factor,
    topk_correct,
    train_linear,
    train_on_features,
)
from virtex_models.visual import TorchvisionBackbone


def make_class_folder(root: Path, classes: int = 3, per_class: int = 4, seed: int = 0) -> Path:
    """JPEGs whose class is their dominant colour (red, green, blue)."""
    rng = np.random.default_rng(seed)
    for label in range(classes):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True)
        for n in range(per_class):
            pixels = rng.integers(0, 50, (40, 48, 3))
            pixels[..., label % 3] += 200
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{n}.jpg")
    return root


def test_recipes_are_the_originals() -> None:
    imagenet, inat = RECIPES["imagenet"], RECIPES["inaturalist"]
    assert (imagenet.lr, imagenet.weight_decay, imagenet.batch_size, imagenet.epochs) == (
        0.3, 0.0, 256, 100,
    )  # fmt: skip
    assert imagenet.frozen and imagenet.schedule == "cosine" and imagenet.crop_scale == (0.08, 1)
    assert (inat.lr, inat.weight_decay, inat.frozen, inat.milestones) == (
        0.025, 1e-4, False, (0.7, 0.9),
    )  # fmt: skip


def test_schedules_by_hand() -> None:
    cosine = RECIPES["imagenet"]
    assert lr_factor(0, 100, cosine) == 1.0
    assert lr_factor(50, 100, cosine) == pytest.approx(0.5)
    assert lr_factor(25, 100, cosine) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)
    assert lr_factor(100, 100, cosine) == pytest.approx(0.0)
    steps = RECIPES["inaturalist"]  # x0.1 at 70 % and 90 %: 119700 and 153900 of 171000
    assert [lr_factor(s, 171000, steps) for s in (0, 119699, 119700, 153899, 153900)] == (
        pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01])
    )


def test_topk_by_hand() -> None:
    logits = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5]])
    labels = torch.tensor([2, 0, 0])
    # Row 0: label 2 is 2nd; row 1: 1st; row 2: 3rd.
    assert topk_correct(logits, labels, (1, 2, 5)) == [1, 2, 3]


def test_frozen_backbone_keeps_batchnorm_statistics_and_gets_no_gradients() -> None:
    torch.manual_seed(0)
    backbone = TorchvisionBackbone("resnet18")
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    model = LinearClassifier(backbone, 512, 5, frozen=True).train()
    assert not backbone.training and model.fc.training
    assert model.fc.bias.abs().sum() == 0 and 0.005 < model.fc.weight.std() < 0.015
    loss = model(torch.randn(4, 3, 64, 64)).logsumexp(1).mean()
    loss.backward()
    assert all(p.grad is None for p in backbone.parameters())
    assert model.fc.weight.grad is not None
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_linear_command_trains_and_reports_topk(tmp_path: Path) -> None:
    train = make_class_folder(tmp_path / "train", per_class=6, seed=0)
    val = make_class_folder(tmp_path / "val", per_class=3, seed=1)
    out, saved = tmp_path / "result.json", tmp_path / "fc.pt"
    args = ["--weights", "random:resnet18", "--train", str(train), "--val", str(val)]
    args += ["--epochs", "4", "--batch-size", "6", "--lr", "0.5", "--image-size", "64"]
    args += ["--workers", "0", "--device", "cpu", "--quiet", "--output", str(out)]
    args += ["--save", str(saved), "--eval-every", "2"]
    result = CliRunner().invoke(linear_command, args)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    # (top-5 of 3 classes is 100 whatever the model: it is checked on 10 classes below.)
    assert data["images"] == 9 and data["classes"] == 3
    assert [h["epoch"] for h in data["history"]] == [2, 4]
    assert data["recipe"]["frozen"] and data["recipe"]["epochs"] == 4
    assert data["trainable_parameters"] == 512 * 3 + 3
    assert data["top1"] > 100 / 3  # colours are easy even for random features
    assert torch.load(saved, weights_only=True)["weight"].shape == (3, 512)


def test_fine_tuning_recipe_updates_the_backbone(tmp_path: Path) -> None:
    train = make_class_folder(tmp_path / "train", per_class=2)
    val = make_class_folder(tmp_path / "val", per_class=1, seed=1)
    recipe = replace(RECIPES["inaturalist"], batch_size=3, epochs=1)
    result = train_linear(
        "random:resnet18", str(train), str(val), recipe, workers=0, image_size=64,
        max_steps=2, progress=False,
    )  # fmt: skip
    assert result["step"] == 2 and result["images"] == 3
    assert not result["recipe"]["frozen"]
    assert result["trainable_parameters"] > 11_000_000  # the whole ResNet-18, not 512 x 3 + 3


def test_inaturalist_json_annotations(tmp_path: Path) -> None:
    root = make_class_folder(tmp_path / "inat" / "images", classes=2, per_class=2)
    (tmp_path / "inat" / "annotations").mkdir()
    files = sorted(p.relative_to(tmp_path / "inat") for p in root.rglob("*.jpg"))
    data = {
        "images": [{"id": n, "file_name": str(f)} for n, f in enumerate(files)],
        "annotations": [
            {"image_id": n, "category_id": 7 if "class_0" in str(f) else 9}
            for n, f in enumerate(files)
        ],
        "categories": [{"id": 7}, {"id": 9}],
    }
    annotations = tmp_path / "inat" / "annotations" / "train2018.json"
    annotations.write_text(json.dumps(data))
    recipe = replace(RECIPES["inaturalist"], batch_size=2, epochs=1)
    result = train_linear(
        "random:resnet18", str(annotations), str(annotations), recipe, workers=0,
        image_size=32, progress=False,
    )  # fmt: skip
    assert result["classes"] == 2 and result["images"] == 4 and result["step"] == 2


def test_mismatched_classes_and_empty_class_are_named(tmp_path: Path) -> None:
    train = make_class_folder(tmp_path / "train", classes=3, per_class=1)
    val = make_class_folder(tmp_path / "val", classes=2, per_class=1)
    args = ["--weights", "random:resnet18", "--train", str(train), "--val", str(val)]
    args += ["--workers", "0", "--device", "cpu", "--quiet", "--image-size", "32"]
    result = CliRunner().invoke(linear_command, args)
    assert result.exit_code == 1 and "different classes" in result.output
    assert "class_2" in result.output
    (val / "class_2").mkdir()
    result = CliRunner().invoke(linear_command, args)
    assert result.exit_code == 1 and "empty class folder" in result.output
    assert str(val / "class_2") in result.output
    result = CliRunner().invoke(linear_command, args[2:])
    assert result.exit_code == 2 and "--weights is required" in result.output


def _clusters(n: int, classes: int, spread: float, seed: int) -> FeatureSet:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(100).normal(size=(classes, 16)) * 2
    labels = np.arange(n) % classes
    features = centres[labels] + rng.normal(0, spread, (n, 16))
    return FeatureSet(
        features={"layer4": torch.tensor(features, dtype=torch.float32)},
        targets=[torch.tensor(labels, dtype=torch.long)],
        meta={"classes": [f"c{k}" for k in range(classes)]},
    )


def test_probe_on_features_separates_clusters_and_agrees_with_sklearn() -> None:
    easy = train_on_features(_clusters(60, 6, 0.1, 0), _clusters(30, 6, 0.1, 1))
    assert easy["top1"] == 100.0 and easy["top5"] == 100.0
    train, val = _clusters(300, 6, 2.5, 2), _clusters(300, 6, 2.5, 3)
    ours = train_on_features(train, val, weight_decay=1e-3)
    x, y = train.features["layer4"].numpy(), train.targets[0].numpy()
    mean, std = x.mean(0), x.std(0, ddof=1)
    reference = LogisticRegression(C=1 / (1e-3 * len(y)), max_iter=5000)
    reference.fit((x - mean) / std, y)
    vx, vy = val.features["layer4"].numpy(), val.targets[0].numpy()
    expected = 100 * float((reference.predict((vx - mean) / std) == vy).mean())
    assert 100 / 6 + 10 < ours["top1"] < 100
    assert abs(ours["top1"] - expected) <= 2.0


def test_probe_top5_on_ten_classes_agrees_with_sklearn() -> None:
    # Ten overlapping clusters: top-5 is below 100, so which five classes count matters.
    train, val = _clusters(300, 10, 3.0, 2), _clusters(300, 10, 3.0, 3)
    ours = train_on_features(train, val, weight_decay=1e-3)
    x, y = train.features["layer4"].numpy(), train.targets[0].numpy()
    mean, std = x.mean(0), x.std(0, ddof=1)
    reference = LogisticRegression(C=1 / (1e-3 * len(y)), max_iter=5000)
    reference.fit((x - mean) / std, y)
    vx, vy = val.features["layer4"].numpy(), val.targets[0].numpy()
    probabilities = reference.predict_proba((vx - mean) / std)
    five = np.argsort(-probabilities, axis=1)[:, :5]
    expected_top5 = 100 * float(np.mean([label in row for label, row in zip(vy, five)]))
    expected_top1 = 100 * float((probabilities.argmax(1) == vy).mean())
    assert 90 < expected_top5 < 100 and expected_top1 < 80  # the fixture is what it claims
    assert abs(ours["top5"] - expected_top5) <= 1.0
    assert abs(ours["top1"] - expected_top1) <= 2.0


def test_on_features_command_reads_feature_files(tmp_path: Path) -> None:
    root = make_class_folder(tmp_path / "data", per_class=3)
    small = ["--image-size", "32", "--resize", "36", "--workers", "0", "--device", "cpu"]
    for name in ("train", "val"):
        args = ["--weights", "random:resnet18", "--folder", str(root), "--no-cache", *small]
        result = CliRunner().invoke(
            features_command, [*args, "--out", str(tmp_path / f"{name}.pt")]
        )
        assert result.exit_code == 0, result.output
    out = tmp_path / "probe.json"
    args = ["--on-features", "--train", str(tmp_path / "train.pt"), "--val"]
    args += [str(tmp_path / "val.pt"), "--device", "cpu", "--output", str(out)]
    result = CliRunner().invoke(linear_command, args)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["top1"] == data["train_top1"] == 100.0  # same images: a fit is memorised
    # Multi-label (VOC) features are refused with a clear message.
    voc_like = FeatureSet({"layer4": torch.zeros(2, 4)}, [torch.zeros(2, 20), torch.zeros(2, 20)])
    voc_like.save(tmp_path / "voc.pt")
    args[2] = str(tmp_path / "voc.pt")
    result = CliRunner().invoke(linear_command, args)
    assert result.exit_code == 1 and "single-label" in result.output


@pytest.mark.slow  # three Python start-ups and a rendezvous: ~30 s on 2 cores
def test_two_gloo_processes_train_and_count_every_val_image_once(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    train = make_class_folder(tmp_path / "train", per_class=4)
    val = make_class_folder(tmp_path / "val", per_class=3, seed=1)  # 9: uneven shards
    out = tmp_path / "ddp.json"
    script = tmp_path / "run.py"
    script.write_text(
        "import sys\nfrom virtex_eval.cli.linear import linear_command\n"
        "linear_command(sys.argv[1:])\n"
    )
    args = ["--weights", "random:resnet18", "--train", str(train), "--val", str(val)]
    args += ["--epochs", "2", "--batch-size", "6", "--image-size", "32", "--workers", "0"]
    args += ["--device", "cpu", "--quiet", "--output", str(out)]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    command += ["--standalone", str(script), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["images"] == 9 and data["step"] == 4  # 12 images / (2 ranks x 3) per epoch
    assert data["trainable_parameters"] == 512 * 3 + 3
