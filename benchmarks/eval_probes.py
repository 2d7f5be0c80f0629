"""Representation probes: feature extraction speed and the VOC07 SVM sweep.

1. Feature extraction, images/s: ``virtex_eval.features.extract_features`` over a class folder
   of synthetic VOC-sized JPEGs (500 x 375) vs a plain torchvision loop over the same files
   (``torchvision.datasets.ImageFolder`` + ``Resize(256)/CenterCrop(224)/ToTensor/Normalize`` +
   the torchvision ResNet up to its average pool). Same architecture, batch, workers, threads;
   rounds interleaved, best round kept. Both must give the same features (max abs difference
   printed).
2. VOC07 SVM sweep on synthetic VOC-sized features (5011 trainval x 4952 test x 2048, 20
   classes, ~7 % positives each, non-negative and L2-normalised like pooled ResNet features):
   ``train_test_svms`` with one worker process per CPU vs ``jobs=1`` (sequential); both must
   give the same APs.

    python benchmarks/eval_probes.py            # ResNet-50, 64 images; full-size SVM sweep
    python benchmarks/eval_probes.py --quick    # ResNet-18, 16 images, 112 px; 1000 x 256 x 5
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
for package in ("virtex-data", "virtex-models", "virtex-eval"):
    sys.path.insert(0, str(ROOT / "packages" / package / "src"))

import torchvision  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchvision import transforms  # noqa: E402

from virtex_eval.features import extract_features, image_folder, probe_transform  # noqa: E402
from virtex_eval.voc07 import l2_normalize, train_test_svms  # noqa: E402
from virtex_models.visual import TorchvisionBackbone  # noqa: E402


def write_images(root: Path, count: int, classes: int = 4) -> None:
    rng = np.random.default_rng(0)
    for n in range(count):
        folder = root / f"class_{n % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        # Smooth random images compress like photos (pure noise would not).
        small = rng.integers(0, 255, (24, 32, 3)).astype(np.uint8)
        image = Image.fromarray(small).resize((500, 375), Image.Resampling.BICUBIC)
        image.save(folder / f"{n:05d}.jpg", quality=90)


def plain_model(arch: str, state: dict) -> torch.nn.Module:  # type: ignore[type-arg]
    model = getattr(torchvision.models, arch)(weights=None)
    model.load_state_dict(state, strict=False)
    model.fc = torch.nn.Identity()
    return model.eval()


def plain_loop(root: Path, model: torch.nn.Module, size: int, batch: int, workers: int):  # type: ignore[no-untyped-def]
    """What one writes without our package: torchvision dataset + model + pool."""
    resize = round(size * 256 / 224)
    transform = transforms.Compose(
        [
            transforms.Resize(resize),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    dataset = torchvision.datasets.ImageFolder(str(root), transform)
    loader = DataLoader(dataset, batch_size=batch, num_workers=workers)
    rows = []
    with torch.no_grad():
        for images, _ in loader:
            rows.append(model(images))
    return torch.cat(rows)


def bench_features(args: argparse.Namespace) -> list[str]:
    arch, count, size = args.arch, args.images, args.image_size
    torch.manual_seed(0)
    backbone = TorchvisionBackbone(arch).eval()
    model = plain_model(arch, backbone.state_dict())
    lines = [
        f"Feature extraction: {arch}, {count} JPEGs of 500x375 -> {size} px, batch "
        f"{args.batch_size}, {args.workers} workers, {torch.get_num_threads()} threads",
        "",
        "| loop | images/s | ratio |",
        "|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        write_images(root, count)
        best = {"ours": float("inf"), "plain": float("inf")}
        ours_features = plain_features = None
        for _ in range(args.rounds):
            start = time.perf_counter()
            dataset = image_folder(root, probe_transform(size, round(size * 256 / 224)))
            result = extract_features(
                backbone, dataset, batch_size=args.batch_size, num_workers=args.workers,
                progress=False,
            )  # fmt: skip
            best["ours"] = min(best["ours"], time.perf_counter() - start)
            ours_features = result.features["layer4"]
            start = time.perf_counter()
            plain_features = plain_loop(root, model, size, args.batch_size, args.workers)
            best["plain"] = min(best["plain"], time.perf_counter() - start)
        assert ours_features is not None and plain_features is not None
        difference = float((ours_features - plain_features).abs().max())
        scale = float(plain_features.abs().max())
    for name in ("plain", "ours"):
        ratio = best["plain"] / best[name]
        lines.append(f"| {name} | {count / best[name]:.1f} | {ratio:.2f}x |")
    lines.append("")
    lines.append(
        f"max |ours - plain| over the pooled features: {difference:.2e} (max |plain| {scale:.2e})"
    )
    return lines


def synthetic_voc(n_train: int, n_test: int, dim: int, classes: int):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(classes, dim))

    def split(n: int):  # type: ignore[no-untyped-def]
        labels = (rng.random((n, classes)) < 0.07).astype(np.float32)
        labels[np.arange(n), rng.integers(0, classes, n)] = 1  # every image has an object
        features = np.maximum(0.03 * labels @ directions + rng.normal(size=(n, dim)), 0)
        difficult = (rng.random((n, classes)) < 0.01) & (labels == 0)
        return l2_normalize(features), labels, difficult

    return split(n_train), split(n_test)


def bench_svm(args: argparse.Namespace) -> list[str]:
    (train_x, train_y, train_d), (test_x, test_y, test_d) = synthetic_voc(
        args.svm_train, args.svm_test, args.svm_dim, args.svm_classes
    )
    jobs = os.cpu_count() or 1
    lines = [
        f"VOC07 SVM sweep: {args.svm_train} x {args.svm_dim} trainval, {args.svm_test} test, "
        f"{args.svm_classes} classes, 4 costs x 3 folds + refit per class",
        "",
        "| sweep | seconds | speed-up | mAP |",
        "|---|---|---|---|",
    ]
    timings = {}
    results = {}
    for name, workers in (("sequential (jobs=1)", 1), (f"ours (jobs={jobs})", jobs)):
        start = time.perf_counter()
        results[name] = train_test_svms(
            train_x, train_y, train_d, test_x, test_y, test_d, jobs=workers, progress=False
        )
        timings[name] = time.perf_counter() - start
    first, second = results.values()
    assert first.ap == second.ap, "parallel and sequential sweeps disagree"
    base = timings["sequential (jobs=1)"]
    for name, seconds in timings.items():
        mean_ap = 100 * results[name].mean_ap
        lines.append(f"| {name} | {seconds:.1f} | {base / seconds:.2f}x | {mean_ap:.2f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument("--skip-svm", action="store_true")
    parser.add_argument("--skip-features", action="store_true")
    parser.add_argument("--svm-classes", type=int, default=None, help="override the class count")
    args = parser.parse_args()
    classes = args.svm_classes
    full = {
        "arch": "resnet50", "images": 64, "image_size": 224, "batch_size": 32, "workers": 2,
        "rounds": 2, "svm_train": 5011, "svm_test": 4952, "svm_dim": 2048, "svm_classes": 20,
    }  # fmt: skip
    quick = {
        "arch": "resnet18", "images": 16, "image_size": 112, "batch_size": 8, "workers": 0,
        "rounds": 2, "svm_train": 1000, "svm_test": 800, "svm_dim": 256, "svm_classes": 5,
    }  # fmt: skip
    for key, value in (quick if args.quick else full).items():
        setattr(args, key, value)
    if classes is not None:
        args.svm_classes = classes
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs")
    if not args.skip_features:
        print("\n".join(bench_features(args)))
        print()
    if not args.skip_svm:
        print("\n".join(bench_svm(args)))


if __name__ == "__main__":
    main()
