"""Linear classification on a (frozen) backbone, and a fast probe on cached features.

Recipes (the original's ``configs/downstream/{imagenet,inaturalist}_clf.yaml`` and
``scripts/clf_linear.py``):

============  =======  ========  ====  =====  ===========================  ======  ==========
recipe        backbone  LR       wd    batch  schedule (per iteration)     epochs  train crop
============  =======  ========  ====  =====  ===========================  ======  ==========
imagenet      frozen   0.3       0     256    cosine to 0, no warm-up      100     RRC 0.08-1
inaturalist   trained  0.025     1e-4  256    x0.1 at 70% and 90%          100     RRC 0.08-1
============  =======  ========  ====  =====  ===========================  ======  ==========

SGD with momentum 0.9 (no Nesterov), cross-entropy, horizontal flip, ImageNet normalisation;
validation images: shorter side 256, centre crop 224. The classifier is a linear layer on the
global-average-pooled last stage, initialised N(0, 0.01) with zero bias. A frozen backbone stays
in eval mode (BatchNorm statistics fixed) throughout. ``--epochs`` rescales the milestones.

``--on-features`` trains multinomial logistic regression on two feature files written by
``virtex-eval features`` (standardised features, L2 penalty, full-batch L-BFGS): seconds instead
of hours, for demos and quick comparisons.

Under ``torchrun`` training is data-parallel (DDP); the batch size is global.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from torchvision.transforms import v2
from tqdm import tqdm

from virtex_data.downstream import INaturalistDataset
from virtex_data.transforms import IMAGENET_MEAN, IMAGENET_STD
from virtex_eval.distributed import DistEnv, all_reduce_sum, shard_indices
from virtex_eval.features import FeatureSet, image_folder, probe_transform
from virtex_eval.weights import load_backbone
from virtex_models.schedule import schedule_factor

__all__ = [
    "RECIPES",
    "LinearClassifier",
    "Recipe",
    "lr_factor",
    "train_linear",
    "train_on_features",
    "topk_correct",
]


@dataclass(frozen=True)
class Recipe:
    """A downstream classification recipe.

    Attributes:
        name: recipe name.
        lr: base learning rate (global batch ``batch_size``).
        momentum: SGD momentum.
        weight_decay: L2 on every trainable parameter.
        batch_size: global batch.
        epochs: passes over the training set.
        schedule: ``cosine`` (to zero, per iteration) or ``multistep``.
        milestones: fractions of the training at which ``multistep`` multiplies by ``gamma``.
        gamma: ``multistep`` factor.
        frozen: keep the backbone fixed (linear probe) or train it end to end.
        crop_scale: area range of the random resized crop.
    """

    name: str
    lr: float
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 256
    epochs: int = 100
    schedule: Literal["cosine", "multistep"] = "cosine"
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1
    frozen: bool = True
    crop_scale: tuple[float, float] = (0.08, 1.0)


RECIPES: dict[str, Recipe] = {
    "imagenet": Recipe(name="imagenet", lr=0.3, weight_decay=0.0, schedule="cosine", frozen=True),
    "inaturalist": Recipe(
        name="inaturalist",
        lr=0.025,
        weight_decay=1e-4,
        schedule="multistep",
        milestones=(0.7, 0.9),
        frozen=False,
    ),
}


def lr_factor(step: int, total: int, recipe: Recipe) -> float:
    """Multiplier of the base LR at iteration ``step`` (0-based) of ``total``."""
    milestones = sorted(round(m * total) for m in recipe.milestones)
    return schedule_factor(
        step, max(total, 1), recipe.schedule, milestones=milestones, gamma=recipe.gamma
    )


def topk_correct(logits: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """Number of rows whose label is among the ``k`` highest logits, for each ``k``
    (``k`` is capped at the number of classes)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels.unsqueeze(1)
    return [int(hits[:, : min(k, logits.shape[1])].any(dim=1).sum()) for k in ks]


class LinearClassifier(nn.Module):
    """Backbone -> global average pool -> ``Linear(C, classes)``.

    A ``frozen`` backbone gets no gradients and stays in eval mode whatever ``train()`` says.
    """

    def __init__(self, backbone: nn.Module, channels: int, classes: int, frozen: bool) -> None:
        super().__init__()
        self.backbone = backbone
        self.frozen = frozen
        self.fc = nn.Linear(channels, classes)
        nn.init.normal_(self.fc.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.fc.bias)
        if frozen:
            backbone.requires_grad_(False)
            backbone.eval()

    def train(self, mode: bool = True) -> LinearClassifier:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def forward(self, images: Tensor) -> Tensor:
        if self.frozen:
            with torch.no_grad():
                grid = self.backbone(images)
        else:
            grid = self.backbone(images)
        return self.fc(grid.float().mean(dim=(2, 3)))


class _TrainTransform:
    """Random resized crop + horizontal flip + ImageNet normalisation (PIL -> tensor)."""

    def __init__(self, size: int, scale: tuple[float, float]) -> None:
        self.transform = v2.Compose(
            [
                v2.ToImage(),
                v2.RandomResizedCrop(size, scale=scale, antialias=True),
                v2.RandomHorizontalFlip(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(list(IMAGENET_MEAN), list(IMAGENET_STD)),
            ]
        )

    def __call__(self, image: Any) -> Tensor:
        result: Tensor = self.transform(image)
        return result


def _dataset(source: str, image_root: str | None, transform: Any) -> Dataset[Any]:
    """A checked class folder, or an iNaturalist 2018 JSON file with its image root."""
    path = Path(source)
    if path.suffix == ".json":
        root = Path(image_root) if image_root else path.parent.parent
        return INaturalistDataset(path, root, transform)
    if image_root:
        raise ValueError(f"--image-root is only for iNaturalist JSON files, not {source}")
    dataset = image_folder(path, probe_transform())
    dataset.transform = transform
    return dataset


def _classes(dataset: Dataset[Any]) -> list[str] | None:
    names = getattr(dataset, "classes", None)
    return list(names) if names is not None else None


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader[Any], ctx: DistEnv, precision: str
) -> dict[str, float]:
    """Top-1 / top-5 accuracy (percent) and mean loss over the loader (all ranks)."""
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64)  # correct@1, correct@5, loss sum, count
    autocast = torch.autocast(ctx.device.type, torch.bfloat16, enabled=precision == "bf16")
    for images, labels in loader:
        images, labels = images.to(ctx.device), labels.to(ctx.device)
        with autocast:
            logits = model(images).float()
        top1, top5 = topk_correct(logits, labels)
        loss = F.cross_entropy(logits, labels, reduction="sum")
        totals += torch.tensor([top1, top5, float(loss), labels.shape[0]], dtype=torch.float64)
    totals = all_reduce_sum(totals, ctx)
    count = max(float(totals[3]), 1.0)
    return {
        "top1": 100 * float(totals[0]) / count,
        "top5": 100 * float(totals[1]) / count,
        "loss": float(totals[2]) / count,
        "images": int(totals[3]),
    }


def train_linear(
    weights: str,
    train: str,
    val: str,
    recipe: Recipe,
    *,
    image_root: str | None = None,
    val_image_root: str | None = None,
    ctx: DistEnv | None = None,
    workers: int = 4,
    precision: str = "fp32",
    eval_every: int = 0,
    max_steps: int | None = None,
    seed: int = 0,
    image_size: int = 224,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a linear classifier (or fine-tune, per ``recipe.frozen``) and report accuracy.

    Args:
        weights: a ``--weights`` value (see :mod:`virtex_eval.weights`).
        train, val: class folders (the same class names) or iNaturalist JSON files.
        image_root, val_image_root: image roots of JSON annotations.
        recipe: optimisation recipe.
        ctx: process group (default: one process on the CPU).
        workers: DataLoader workers per rank.
        precision: ``fp32`` or ``bf16`` autocast.
        eval_every: also evaluate every this many epochs (0: only at the end).
        max_steps: stop after this many iterations (smoke tests; the schedule still spans the
            full recipe).
        seed: initialisation and shuffling seed.
        image_size: training crop and validation centre-crop side (validation resizes the
            shorter side to ``image_size * 256 / 224`` first).
        progress: progress bars on rank 0.

    Returns:
        ``{"top1", "top5", "loss", "images", "history": [...], "recipe": {...}, ...}``.
    """
    ctx = ctx or DistEnv()
    torch.manual_seed(seed)
    loaded = load_backbone(weights)
    train_set = _dataset(train, image_root, _TrainTransform(image_size, recipe.crop_scale))
    resize = round(image_size * 256 / 224)
    val_set = _dataset(val, val_image_root, probe_transform(image_size, resize).image)
    train_classes, val_classes = _classes(train_set), _classes(val_set)
    if train_classes is not None and val_classes is not None and train_classes != val_classes:
        only_train = sorted(set(train_classes) - set(val_classes))[:3]
        only_val = sorted(set(val_classes) - set(train_classes))[:3]
        raise ValueError(
            f"{train} and {val} have different classes (only in train: {only_train}, "
            f"only in val: {only_val})"
        )
    classes = int(getattr(train_set, "num_classes"))  # noqa: B009
    model = LinearClassifier(loaded.backbone, loaded.out_channels, classes, recipe.frozen)
    model = model.to(ctx.device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    network: nn.Module = model
    if ctx.distributed:
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        network = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    per_rank = max(recipe.batch_size // ctx.world_size, 1)
    sampler: DistributedSampler[Any] = DistributedSampler(
        train_set, ctx.world_size, ctx.rank, shuffle=True, seed=seed, drop_last=False
    )
    train_loader = DataLoader(
        train_set,
        batch_size=per_rank,
        sampler=sampler,
        num_workers=workers,
        pin_memory=ctx.device.type == "cuda",
        drop_last=False,
    )
    val_loader = DataLoader(
        Subset(val_set, shard_indices(len(val_set), ctx.rank, ctx.world_size)),  # type: ignore[arg-type]
        batch_size=per_rank,
        num_workers=workers,
        pin_memory=ctx.device.type == "cuda",
    )
    optimizer = torch.optim.SGD(
        trainable, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
    )
    total = recipe.epochs * len(train_loader)
    autocast = torch.autocast(ctx.device.type, torch.bfloat16, enabled=precision == "bf16")
    history: list[dict[str, Any]] = []
    step = 0
    start = time.perf_counter()
    bar = tqdm(total=total, desc=f"linear {recipe.name}", disable=not (progress and ctx.is_main))
    for epoch in range(recipe.epochs):
        sampler.set_epoch(epoch)
        network.train()
        for images, labels in train_loader:
            if max_steps is not None and step >= max_steps:
                break
            for group in optimizer.param_groups:
                group["lr"] = recipe.lr * lr_factor(step, total, recipe)
            images = images.to(ctx.device, non_blocking=True)
            labels = labels.to(ctx.device, non_blocking=True)
            with autocast:
                logits = network(images).float()
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", epoch=epoch + 1)
        last = epoch + 1 == recipe.epochs or (max_steps is not None and step >= max_steps)
        if last or (eval_every and (epoch + 1) % eval_every == 0):
            metrics = evaluate(model, val_loader, ctx, precision)
            history.append({"epoch": epoch + 1, "step": step, **metrics})
        if max_steps is not None and step >= max_steps:
            break
    bar.close()
    final = history[-1]
    return {
        **final,
        "history": history,
        "recipe": asdict(recipe),
        "weights": str(loaded.source),
        "classes": classes,
        "trainable_parameters": sum(p.numel() for p in trainable),
        "train_images": len(train_set),  # type: ignore[arg-type]
        "seconds": time.perf_counter() - start,
        "state_dict": {k: v.detach().cpu() for k, v in model.fc.state_dict().items()},
    }


def train_on_features(
    train: FeatureSet,
    val: FeatureSet,
    *,
    stage: str = "layer4",
    weight_decay: float = 1e-4,
    max_iter: int = 500,
    device: str = "cpu",
) -> dict[str, Any]:
    """Multinomial logistic regression on pooled features (L-BFGS, full batch).

    Features are standardised with the training mean and standard deviation; the loss is the
    mean cross-entropy plus ``weight_decay / 2 * ||W||^2``.

    Returns:
        ``{"top1", "top5", "train_top1", "loss", "images", "classes", "seconds", ...}``.

    Raises:
        ValueError: missing stage, labels that are not a single int64 column, or feature files
            whose class names differ.
    """
    for name, data in (("train", train), ("val", val)):
        if stage not in data.features:
            raise ValueError(f"{name} features have no stage {stage!r}: {sorted(data.features)}")
        if not data.targets or data.targets[0].dim() != 1 or data.targets[0].is_floating_point():
            raise ValueError(
                f"{name} features carry no single-label targets (class-folder features needed)"
            )
    train_classes, val_classes = train.meta.get("classes"), val.meta.get("classes")
    if train_classes is not None and val_classes is not None and train_classes != val_classes:
        raise ValueError("train and val feature files have different class names")
    start = time.perf_counter()
    target_device = torch.device(device)
    x = train.features[stage].float().to(target_device)
    y = train.targets[0].long().to(target_device)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    x = (x - mean) / std
    classes = int(max(int(y.max()), int(val.targets[0].max())) + 1)
    if train_classes is not None:
        classes = max(classes, len(train_classes))
    linear = nn.Linear(x.shape[1], classes).to(target_device)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    optimizer = torch.optim.LBFGS(
        linear.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(linear(x), y) + 0.5 * weight_decay * linear.weight.square().sum()
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    with torch.no_grad():
        train_top1 = topk_correct(linear(x), y, (1,))[0] / len(y)
        vx = (val.features[stage].float().to(target_device) - mean) / std
        vy = val.targets[0].long().to(target_device)
        logits = linear(vx)
        top1, top5 = topk_correct(logits, vy)
        val_loss = float(F.cross_entropy(logits, vy))
    return {
        "top1": 100 * top1 / len(vy),
        "top5": 100 * top5 / len(vy),
        "train_top1": 100 * train_top1,
        "loss": val_loss,
        "train_objective": float(loss.detach()),
        "images": len(vy),
        "classes": classes,
        "stage": stage,
        "seconds": time.perf_counter() - start,
    }
