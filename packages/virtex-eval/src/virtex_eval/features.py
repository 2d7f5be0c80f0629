"""Frozen-backbone features shared by the probes, cached on disk.

:func:`extract_features` runs a frozen backbone over a dataset whose items are tuples
``(image (3, S, S), *targets)`` (``virtex_data.downstream`` datasets are) and global-average-pools
the last stage (``layer4``) or any of ``layer1``..``layer4``. Under ``torchrun`` each rank
extracts a strided shard and the rows are gathered, in dataset order, on every rank.

:func:`cached_features` keys the result by the weights' identity (file hashes), a fingerprint of
the dataset (root, split, file list with sizes and modification times, labels), the transform and
the stages, and stores it as one ``torch.save`` file (read back with ``weights_only=True``).

The ``virtex-eval features`` command (:data:`features_command`) writes such a file for a class
folder or a VOC split; ``virtex-eval linear --on-features`` trains a probe on two of them.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from virtex_data.downstream import ImageFolderDataset, VOC07Classification
from virtex_data.transforms import EvalTransform, TransformConfig
from virtex_eval.distributed import DistEnv, gather_rows, shard_indices
from virtex_eval.weights import LoadedBackbone
from virtex_models.atomic_file import atomic_write
from virtex_models.torchfile import load_weights_only

__all__ = [
    "FEATURE_FORMAT",
    "STAGES",
    "FeatureSet",
    "cached_features",
    "dataset_fingerprint",
    "default_cache_dir",
    "extract_features",
    "image_folder",
    "probe_transform",
    "resolve_voc_root",
    "voc07_split",
]

#: Version of the feature-file layout (part of the cache key).
FEATURE_FORMAT = 1
STAGES = ("layer1", "layer2", "layer3", "layer4")


@dataclass
class FeatureSet:
    """Pooled features of one dataset.

    Attributes:
        features: stage name -> ``(N, C_stage)`` float32, rows in dataset order.
        targets: the non-image parts of the items, stacked: ``(N, ...)`` each (class folder:
            ``[labels (N,) int64]``; VOC: ``[labels (N, 20) float32, difficult (N, 20) bool]``).
        meta: JSON-able description (weights, dataset, transform, class names, timings).
    """

    features: dict[str, Tensor]
    targets: list[Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(next(iter(self.features.values())).shape[0])

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically (temporary file, then rename)."""
        payload = {
            "format": FEATURE_FORMAT,
            "features": self.features,
            "targets": self.targets,
            "meta": json.dumps(self.meta, sort_keys=True),
        }
        atomic_write(path, lambda handle: torch.save(payload, handle))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FeatureSet:
        """Read a file written by :meth:`save`.

        Raises:
            ValueError: not a feature file of this format, naming the file.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"feature file not found: {path}")
        try:
            payload = load_weights_only(path)
        except ValueError as error:
            raise ValueError(f"{path}: cannot read as a feature file ({error})") from None
        if not isinstance(payload, dict) or payload.get("format") != FEATURE_FORMAT:
            raise ValueError(
                f"{path}: not a virtex-eval feature file of format {FEATURE_FORMAT} "
                "(write one with `virtex-eval features`)"
            )
        return cls(
            features=dict(payload["features"]),
            targets=list(payload["targets"]),
            meta=json.loads(payload["meta"]),
        )


def probe_transform(image_size: int = 224, resize: int = 256) -> EvalTransform:
    """Shorter side to ``resize``, centre crop ``image_size``, ImageNet normalisation."""
    return EvalTransform(TransformConfig(image_size=image_size, eval_resize=resize))


def transform_key(transform: EvalTransform) -> str:
    """What the cache needs to know about an evaluation transform."""
    c = transform.config
    return (
        f"resize{c.resize_side}-crop{c.image_size}-mean{list(c.mean)}-std{list(c.std)}"
        f"-reduced{c.reduced_decode}"
    )


def image_folder(root: str | os.PathLike[str], transform: EvalTransform) -> ImageFolderDataset:
    """A class-folder dataset, checked: every class folder must hold at least one image.

    Raises:
        FileNotFoundError: ``root`` missing.
        ValueError: no class folders, or an empty class folder (named).
    """
    dataset = ImageFolderDataset(root, transform.image)
    counts = [0] * dataset.num_classes
    for _, label in dataset.samples:
        counts[label] += 1
    empty = [dataset.classes[k] for k, count in enumerate(counts) if count == 0]
    if empty:
        folders = ", ".join(str(dataset.root / name) for name in empty)
        raise ValueError(f"empty class folder(s) (no images): {folders}")
    return dataset


def resolve_voc_root(root: str | os.PathLike[str]) -> Path:
    """The ``VOC2007`` folder given it or a ``VOCdevkit`` folder holding it."""
    path = Path(root)
    if not path.is_dir():
        raise FileNotFoundError(f"VOC root not found: {path}")
    if not (path / "ImageSets").is_dir() and (path / "VOC2007" / "ImageSets").is_dir():
        path = path / "VOC2007"
    if not (path / "ImageSets" / "Main").is_dir():
        raise FileNotFoundError(f"VOC root {path} has no ImageSets/Main folder")
    return path


def voc07_split(
    root: str | os.PathLike[str], split: str, transform: EvalTransform
) -> VOC07Classification:
    """A VOC 2007 split, read from the per-class files ``ImageSets/Main/<class>_<split>.txt``
    (as the original VirTex does); when ``ImageSets/Main/<split>.txt`` exists it must list the
    same images.

    Raises:
        FileNotFoundError: the root or a split file (named) is missing.
        ValueError: the per-class files and ``<split>.txt`` disagree (naming the file).
    """
    path = resolve_voc_root(root)
    dataset = VOC07Classification(path, split, transform.image)
    listing = path / "ImageSets" / "Main" / f"{split}.txt"
    if listing.is_file():
        listed = {line.split()[0] for line in listing.read_text().splitlines() if line.strip()}
        ids = set(dataset.image_ids)
        if listed != ids:
            extra = sorted(listed - ids)[:3]
            absent = sorted(ids - listed)[:3]
            raise ValueError(
                f"{listing} disagrees with the per-class files: only in {split}.txt: {extra}, "
                f"only in the per-class files: {absent}"
            )
    return dataset


def _files_of(dataset: Dataset[Any]) -> list[Path]:
    if isinstance(dataset, ImageFolderDataset):
        return [path for path, _ in dataset.samples]
    if isinstance(dataset, VOC07Classification):
        return [dataset.root / "JPEGImages" / f"{i}.jpg" for i in dataset.image_ids]
    raise TypeError(f"no fingerprint for {type(dataset).__name__}: pass dataset_key=")


def dataset_fingerprint(dataset: Dataset[Any]) -> str:
    """SHA-256 over the dataset's root, files (relative path, size, mtime) and labels.

    Also checks that every image file exists.

    Raises:
        FileNotFoundError: image files that are missing (the first few named).
    """
    files = _files_of(dataset)
    root = Path(getattr(dataset, "root"))  # noqa: B009
    digest = hashlib.sha256(f"{type(dataset).__name__}\n{root.resolve()}\n".encode())
    missing = []
    for path in files:
        try:
            stat = path.stat()
        except FileNotFoundError:
            missing.append(str(path))
            continue
        digest.update(f"{path.relative_to(root)}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise FileNotFoundError(f"missing image file(s): {', '.join(missing[:3])}{more}")
    if isinstance(dataset, ImageFolderDataset):
        digest.update(json.dumps([label for _, label in dataset.samples]).encode())
    elif isinstance(dataset, VOC07Classification):
        digest.update(dataset.labels.numpy().tobytes())
        digest.update(dataset.difficult.numpy().tobytes())
    return digest.hexdigest()


def _stage_grids(backbone: nn.Module, images: Tensor, stages: Sequence[str]) -> list[Tensor]:
    if tuple(stages) == ("layer4",):
        return [backbone(images)]
    forward_stages = getattr(backbone, "forward_stages", None)
    if forward_stages is None:
        raise ValueError(
            f"{type(backbone).__name__} has no forward_stages: only layer4 features are available"
        )
    grids = forward_stages(images)
    return [grids[STAGES.index(name)] for name in stages]


def extract_features(
    backbone: nn.Module,
    dataset: Dataset[Any],
    *,
    stages: Sequence[str] = ("layer4",),
    batch_size: int = 64,
    num_workers: int = 2,
    ctx: DistEnv | None = None,
    precision: str = "fp32",
    channels_last: bool | None = None,
    progress: bool = True,
    desc: str = "features",
) -> FeatureSet:
    """Global-average-pooled features of a frozen backbone.

    Args:
        backbone: ``(B, 3, H, W) -> (B, C, h, w)``; run in eval mode under
            ``torch.inference_mode`` and put back in its own mode afterwards (its
            ``requires_grad`` flags are not touched).
        dataset: items ``(image (3, S, S), *targets)``.
        stages: any of ``layer1``..``layer4`` (others need ``forward_stages``).
        batch_size: images per forward pass (per rank).
        num_workers: DataLoader worker processes (per rank).
        ctx: process group (default: a single process on the CPU).
        precision: ``fp32`` or ``bf16`` (autocast; pooled features are fp32 either way).
        channels_last: convert weights (in place) and inputs to ``torch.channels_last``
            (default on: 1.3x faster for a ResNet-50 on one CPU thread, faster on GPUs).
        progress: show a progress bar (rank 0 only).
        desc: progress-bar label.

    Returns:
        A :class:`FeatureSet` with every row on every rank, on the CPU.
    """
    bad = [s for s in stages if s not in STAGES]
    if bad or not stages:
        raise ValueError(f"stages must be a non-empty subset of {STAGES}, got {list(stages)}")
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
    ctx = ctx or DistEnv()
    device = ctx.device
    if channels_last is None:
        channels_last = True
    # Eval mode for the pass, the caller's mode afterwards; gradients are off through
    # inference_mode, so the caller's ``requires_grad`` flags stay as they were (a backbone
    # probed in the middle of training keeps training).
    was_training = backbone.training
    backbone = backbone.to(device).eval()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        backbone = backbone.to(memory_format=torch.channels_last)
    total = len(dataset)  # type: ignore[arg-type]
    if total == 0:
        raise ValueError(f"{desc}: the dataset is empty")
    indices = shard_indices(total, ctx.rank, ctx.world_size)
    loader = DataLoader(
        Subset(dataset, indices),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    pooled: list[list[Tensor]] = [[] for _ in stages]
    targets: list[list[Tensor]] = []
    start = time.perf_counter()
    bar = tqdm(
        total=total, desc=desc, unit="img", disable=not (progress and ctx.is_main), leave=False
    )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    with torch.inference_mode():
        for batch in loader:
            images, *rest = batch
            images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            with autocast:
                grids = _stage_grids(backbone, images, stages)
            for store, grid in zip(pooled, grids, strict=True):
                store.append(grid.float().mean(dim=(2, 3)).cpu())
            if not targets:
                targets = [[] for _ in rest]
            for store, value in zip(targets, rest, strict=True):
                store.append(value)
            bar.update(images.shape[0] * ctx.world_size)
    bar.close()
    backbone.train(was_training)
    local_features = [torch.cat(parts) for parts in pooled]
    local_targets = [torch.cat(parts) for parts in targets]
    features = {
        name: gather_rows(value, total, ctx)
        for name, value in zip(stages, local_features, strict=True)
    }
    gathered = []
    for value in local_targets:
        wire = value.to(torch.uint8) if value.dtype == torch.bool else value
        out = gather_rows(wire, total, ctx)
        gathered.append(out.bool() if value.dtype == torch.bool else out)
    seconds = time.perf_counter() - start
    meta = {"images": total, "seconds": seconds, "images_per_s": total / max(seconds, 1e-9)}
    return FeatureSet(features=features, targets=gathered, meta=meta)


def default_cache_dir() -> Path:
    """``$VIRTEX_CACHE/features``, else ``$XDG_CACHE_HOME/virtex/features``, else
    ``~/.cache/virtex/features``."""
    if "VIRTEX_CACHE" in os.environ:
        return Path(os.environ["VIRTEX_CACHE"]) / "features"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "virtex" / "features"


def cached_features(
    loaded: LoadedBackbone,
    dataset: Dataset[Any],
    transform: EvalTransform,
    *,
    cache_dir: str | os.PathLike[str] | None,
    stages: Sequence[str] = ("layer4",),
    dataset_key: str | None = None,
    extra_meta: dict[str, Any] | None = None,
    **kwargs: Any,
) -> FeatureSet:
    """:func:`extract_features` through an on-disk cache (``cache_dir=None``: no cache).

    The key is the weights' identity + the dataset fingerprint (or ``dataset_key``) + the
    transform + the stages + :data:`FEATURE_FORMAT`. Rank 0 writes the file; every rank returns
    the features. A cache file that cannot be read is recomputed and replaced.
    """
    ctx: DistEnv = kwargs.get("ctx") or DistEnv()
    key = {
        "format": FEATURE_FORMAT,
        "weights": loaded.identity,
        "dataset": dataset_key or dataset_fingerprint(dataset),
        "transform": transform_key(transform),
        "stages": list(stages),
    }
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    path = Path(cache_dir) / f"{name}.pt" if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            cached = FeatureSet.load(path)
        except ValueError:
            cached = None
        if cached is not None and cached.meta.get("key") == key:
            cached.meta.update(extra_meta or {})
            cached.meta["cache"] = str(path)
            cached.meta["cache_hit"] = True
            return cached
    result = extract_features(loaded.backbone, dataset, stages=stages, **kwargs)
    result.meta.update(extra_meta or {})
    result.meta.update({"key": key, "weights": str(loaded.source), "cache_hit": False})
    if path is not None:
        if ctx.is_main:
            result.save(path)
        ctx.barrier()
        result.meta["cache"] = str(path)
    return result
