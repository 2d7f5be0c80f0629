"""Frozen-backbone feature extraction: values, stages, cache, torchrun, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from virtex_eval.cli.features import features_command
from virtex_eval.features import (
    FeatureSet,
    cached_features,
    extract_features,
    image_folder,
    probe_transform,
)
from virtex_eval.weights import load_backbone

SMALL = ["--image-size", "64", "--resize", "72", "--workers", "0", "--device", "cpu"]


def make_class_folder(root: Path, classes: int = 3, per_class: int = 4, seed: int = 0) -> Path:
    """JPEGs of random sizes; each class has its own dominant colour."""
    rng = np.random.default_rng(seed)
    for label in range(classes):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True)
        for n in range(per_class):
            width, height = int(rng.integers(70, 120)), int(rng.integers(70, 120))
            pixels = rng.integers(0, 60, (height, width, 3))
            pixels[..., label % 3] += 180
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{n}.jpg", quality=90)
    return root


def test_pooled_features_equal_a_plain_loop(tmp_path: Path) -> None:
    root = make_class_folder(tmp_path / "data")
    transform = probe_transform(64, 72)
    dataset = image_folder(root, transform)
    loaded = load_backbone("random:resnet18")
    result = extract_features(
        loaded.backbone, dataset, stages=("layer2", "layer4"), batch_size=5, num_workers=0
    )
    assert result.features["layer4"].shape == (12, 512)
    assert result.features["layer2"].shape == (12, 128)
    assert result.targets[0].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    # Independent computation: torchvision's own ResNet-18 with the same weights, one image at
    # a time, with torchvision's own transforms (same resize/crop/normalisation).
    import torchvision
    from torchvision.transforms import v2

    reference = torchvision.models.resnet18(weights=None)
    reference.load_state_dict(loaded.backbone.state_dict(), strict=False)
    reference.eval()
    layers = torch.nn.Sequential(
        reference.conv1, reference.bn1, reference.relu, reference.maxpool,
        reference.layer1, reference.layer2, reference.layer3, reference.layer4,
    )  # fmt: skip
    plain = v2.Compose(
        [
            v2.Resize(72),  # on the PIL image: PIL's bilinear resize
            v2.CenterCrop(64),
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    with torch.no_grad():
        for row, (path, _) in enumerate(dataset.samples):
            with Image.open(path) as image:
                tensor = plain(image.convert("RGB")).unsqueeze(0)
            expected = layers(tensor).mean(dim=(2, 3))[0]
            torch.testing.assert_close(
                result.features["layer4"][row], expected, atol=1e-4, rtol=1e-4
            )


def test_extraction_leaves_a_training_backbone_trainable(tmp_path: Path) -> None:
    """Probing in the middle of a training run: the backbone comes back in train mode with its
    gradients on (an earlier version froze it for good, silently)."""
    dataset = image_folder(
        make_class_folder(tmp_path / "data", per_class=2), probe_transform(64, 72)
    )
    backbone = load_backbone("random:resnet18").backbone.train()
    before = backbone.bn1.running_mean.clone()
    extract_features(backbone, dataset, batch_size=3, num_workers=0, progress=False)
    assert backbone.training and backbone.bn1.training
    assert all(p.requires_grad for p in backbone.parameters())
    assert torch.equal(backbone.bn1.running_mean, before)  # eval mode during the pass
    backbone(torch.randn(2, 3, 64, 64)).sum().backward()
    assert backbone.conv1.weight.grad is not None


def test_cache_hits_and_invalidates_when_a_file_changes(tmp_path: Path) -> None:
    root = make_class_folder(tmp_path / "data", classes=2, per_class=2)
    transform = probe_transform(64, 72)
    loaded = load_backbone("random:resnet18")
    cache = tmp_path / "cache"
    kwargs = {"cache_dir": cache, "batch_size": 4, "num_workers": 0, "progress": False}
    first = cached_features(loaded, image_folder(root, transform), transform, **kwargs)
    assert not first.meta["cache_hit"] and len(list(cache.glob("*.pt"))) == 1
    again = cached_features(loaded, image_folder(root, transform), transform, **kwargs)
    assert again.meta["cache_hit"]
    assert torch.equal(again.features["layer4"], first.features["layer4"])
    # Another transform or other weights: another entry.
    other = probe_transform(64, 96)
    assert not cached_features(loaded, image_folder(root, other), other, **kwargs).meta["cache_hit"]
    seeded = load_backbone("random:resnet34")
    assert not cached_features(seeded, image_folder(root, transform), transform, **kwargs).meta[
        "cache_hit"
    ]
    # A changed image: new size / mtime -> recomputed.
    target = root / "class_0" / "0.jpg"
    Image.new("RGB", (90, 90), (0, 0, 255)).save(target)
    os.utime(target, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    changed = cached_features(loaded, image_folder(root, transform), transform, **kwargs)
    assert not changed.meta["cache_hit"]
    assert not torch.equal(changed.features["layer4"][0], first.features["layer4"][0])


def test_features_command_writes_a_feature_file(tmp_path: Path) -> None:
    root = make_class_folder(tmp_path / "data")
    out = tmp_path / "val.pt"
    args = ["--weights", "random:resnet18", "--folder", str(root), "--out", str(out)]
    args += ["--stages", "layer3,layer4", "--cache-dir", str(tmp_path / "cache"), *SMALL]
    result = CliRunner().invoke(features_command, args)
    assert result.exit_code == 0, result.output
    assert "layer4 (12, 512)" in result.output
    loaded = FeatureSet.load(out)
    assert loaded.features["layer3"].shape == (12, 256)
    assert loaded.meta["classes"] == ["class_0", "class_1", "class_2"]
    again = CliRunner().invoke(features_command, args)
    assert again.exit_code == 0 and "(cache)" in again.output


def test_bad_images_and_folders_are_named(tmp_path: Path) -> None:
    root = make_class_folder(tmp_path / "data", classes=2, per_class=2)
    corrupt = root / "class_1" / "broken.jpg"
    corrupt.write_bytes(b"\xff\xd8 this is no jpeg")
    args = ["--weights", "random:resnet18", "--folder", str(root), "--out", str(tmp_path / "f.pt")]
    result = CliRunner().invoke(features_command, [*args, "--no-cache", *SMALL])
    assert result.exit_code != 0
    assert "broken.jpg" in str(result.exception) + result.output
    corrupt.unlink()
    (root / "class_2").mkdir()
    result = CliRunner().invoke(features_command, [*args, "--no-cache", *SMALL])
    assert result.exit_code == 1 and "empty class folder" in result.output
    assert "class_2" in result.output
    result = CliRunner().invoke(features_command, ["--weights", "random", "--out", "x.pt"])
    assert result.exit_code == 2 and "--folder or --voc-root" in result.output
    with pytest.raises(ValueError, match="not a virtex-eval feature file"):
        bogus = tmp_path / "bogus.pt"
        torch.save({"features": 1}, bogus)
        FeatureSet.load(bogus)


@pytest.mark.slow  # three Python start-ups and a rendezvous: ~30 s on 2 cores
def test_two_gloo_processes_gather_the_same_features(tmp_path: Path) -> None:
    root = make_class_folder(tmp_path / "data", classes=3, per_class=3)  # 9 rows: uneven shards
    single, double = tmp_path / "single.pt", tmp_path / "double.pt"
    args = ["--weights", "random:resnet18", "--folder", str(root), "--no-cache", *SMALL]
    args += ["--batch-size", "2"]
    assert CliRunner().invoke(features_command, [*args, "--out", str(single)]).exit_code == 0
    script = tmp_path / "run.py"
    script.write_text(
        "import sys\nfrom virtex_eval.cli.features import features_command\n"
        "features_command(sys.argv[1:])\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    command += ["--standalone", str(script), *args, "--out", str(double)]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    a, b = FeatureSet.load(single), FeatureSet.load(double)
    torch.testing.assert_close(a.features["layer4"], b.features["layer4"], atol=1e-5, rtol=0)
    assert torch.equal(a.targets[0], b.targets[0])


@pytest.mark.slow  # runs the benchmark script in --quick mode (~30 s on 2 cores)
def test_probe_benchmark_runs_quick() -> None:
    script = Path(__file__).resolve().parents[3] / "benchmarks" / "eval_probes.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, str(script), "--quick"], env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "| ours |" in completed.stdout and "| ours (jobs=" in completed.stdout
