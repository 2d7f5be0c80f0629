"""Optimisers, parameter groups, Lookahead, gradient clipping and learning-rate schedules.

- :func:`build_optimizer` puts every trainable parameter of an objective into one of at most
  four groups (``visual``, ``visual_no_decay``, ``other``, ``other_no_decay``), so the fused /
  foreach kernels of SGD and AdamW see a few long tensor lists instead of one group per tensor.
  The visual backbone (``objective.visual``) gets ``cnn_lr``, everything else ``lr``.
- Weight decay is skipped by *module type*, not by name patterns: parameters of normalisation
  layers (BatchNorm, LayerNorm, GroupNorm, ...), biases (parameters whose own name ends in
  ``bias``, e.g. ``in_proj_bias``) and embedding tables (``nn.Embedding``, including an output
  layer tied to one).
- :class:`Lookahead` wraps the base optimiser; its slow weights and step counter are part of
  ``optimizer.state_dict()``, so a resumed run continues exactly.
- Fused kernels (``optim.fused``, default ``null`` = auto): SGD and AdamW run PyTorch's fused
  single-kernel step when every parameter is a floating-point CUDA tensor (:func:`use_fused`);
  Lookahead wraps the fused optimiser unchanged.
- :func:`lr_factor` is a pure function of the step: linear warm-up, then cosine, linear,
  multi-step or constant. The trainer sets ``group["lr"] = group["initial_lr"] * factor``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from virtex_models.schedule import schedule_factor

__all__ = [
    "GROUP_NAMES",
    "NO_DECAY_KINDS",
    "Lookahead",
    "LookaheadConfig",
    "NoDecayKind",
    "OptimConfig",
    "ScheduleConfig",
    "build_optimizer",
    "clip_grad_norm",
    "lr_factor",
    "param_groups",
    "use_fused",
]

NoDecayKind = Literal["norm", "bias", "embedding"]
NO_DECAY_KINDS: tuple[str, ...] = ("norm", "bias", "embedding")
#: Names of the parameter groups, in the order they appear in ``optimizer.param_groups``.
GROUP_NAMES: tuple[str, ...] = ("visual", "visual_no_decay", "other", "other_no_decay")

_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.RMSNorm,
)
_EMBEDDING_TYPES: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)


@dataclass(kw_only=True)
class LookaheadConfig:
    """Lookahead (Zhang et al. 2019): every ``steps`` updates, ``slow += alpha * (fast - slow)``
    and the fast weights restart from ``slow``."""

    enabled: bool = True
    alpha: float = 0.5
    steps: int = 5

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"optim.lookahead.alpha must be in (0, 1], got {self.alpha}")
        if self.steps < 1:
            raise ValueError(f"optim.lookahead.steps must be >= 1, got {self.steps}")


@dataclass(kw_only=True)
class ScheduleConfig:
    """Learning-rate schedule: linear warm-up, then ``kind``.

    Attributes:
        kind: ``cosine`` (half cosine to 0 at the last step), ``linear`` (to 0), ``multistep``
            (multiply by ``gamma`` at each milestone) or ``constant``.
        warmup_steps: updates of linear warm-up (0 = none).
        milestones: steps at which ``multistep`` multiplies the factor by ``gamma`` (increasing).
        gamma: the ``multistep`` factor.
    """

    kind: Literal["cosine", "linear", "multistep", "constant"] = "cosine"
    warmup_steps: int = 10000
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.warmup_steps < 0:
            raise ValueError(f"optim.schedule.warmup_steps must be >= 0, got {self.warmup_steps}")
        if any(b <= a for a, b in zip(self.milestones, self.milestones[1:])):
            raise ValueError(
                f"optim.schedule.milestones must be strictly increasing, got {self.milestones}"
            )
        if self.gamma <= 0:
            raise ValueError(f"optim.schedule.gamma must be positive, got {self.gamma}")


@dataclass(kw_only=True)
class OptimConfig:
    """The ``optim:`` section of an experiment (defaults: the paper's pre-training).

    Attributes:
        kind: ``sgd`` or ``adamw``.
        cnn_lr: peak learning rate of the visual backbone.
        lr: peak learning rate of everything else (textual head, classifiers).
        momentum: SGD momentum.
        nesterov: SGD Nesterov momentum.
        betas: AdamW betas.
        weight_decay: decoupled (AdamW) or L2 (SGD) weight decay of the decayed groups.
        no_decay: parameter kinds without weight decay (``norm``, ``bias``, ``embedding``).
        clip_grad_norm: clip the global gradient norm to this value (``None`` = no clipping).
        lookahead: Lookahead wrapper.
        schedule: learning-rate schedule.
        fused: PyTorch's fused optimiser kernels: ``null`` (auto: fused when every parameter
            is a floating-point CUDA tensor), ``true`` (also on CPU, where PyTorch >= 2.4 has
            them) or ``false`` (PyTorch's default, foreach on CUDA).
    """

    kind: Literal["sgd", "adamw"] = "sgd"
    cnn_lr: float = 0.2
    lr: float = 0.001
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0001
    no_decay: list[NoDecayKind] = field(default_factory=lambda: ["norm", "bias", "embedding"])
    clip_grad_norm: float | None = 10.0
    lookahead: LookaheadConfig = field(default_factory=LookaheadConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    fused: bool | None = None

    def __post_init__(self) -> None:
        if self.cnn_lr < 0 or self.lr < 0:
            raise ValueError(f"optim.cnn_lr / optim.lr must be >= 0, got {self.cnn_lr}, {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"optim.momentum must be in [0, 1), got {self.momentum}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("optim.nesterov needs optim.momentum > 0")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {self.betas}")
        for kind in self.no_decay:
            if kind not in NO_DECAY_KINDS:
                raise ValueError(f"optim.no_decay: {kind!r} is not one of {NO_DECAY_KINDS}")
        if self.clip_grad_norm is not None and self.clip_grad_norm <= 0:
            raise ValueError(
                f"optim.clip_grad_norm must be positive or null, got {self.clip_grad_norm}"
            )


# --------------------------------------------------------------------------------------------
# Parameter groups
# --------------------------------------------------------------------------------------------


def _param_kinds(module: nn.Module) -> dict[int, set[str]]:
    """``id(parameter) -> {"norm", "bias", "embedding"} subset`` over every owner of a parameter.

    A tied parameter has several owners (e.g. an output ``nn.Linear`` sharing an embedding's
    weight): it gets the kinds of all of them.
    """
    kinds: dict[int, set[str]] = {}
    for owner in module.modules():
        for local_name, param in owner.named_parameters(recurse=False):
            found = kinds.setdefault(id(param), set())
            if isinstance(owner, _NORM_TYPES):
                found.add("norm")
            if isinstance(owner, _EMBEDDING_TYPES):
                found.add("embedding")
            if local_name.endswith("bias"):
                found.add("bias")
    return kinds


def _unwrap(module: nn.Module) -> nn.Module:
    """The model inside ``DistributedDataParallel`` and ``torch.compile`` wrappers."""
    while True:
        inner = getattr(module, "_orig_mod", None)
        if isinstance(module, nn.parallel.DistributedDataParallel):
            inner = module.module
        if not isinstance(inner, nn.Module):
            return module
        module = inner


def param_groups(objective: nn.Module, cfg: OptimConfig) -> list[dict[str, Any]]:
    """The optimiser's parameter groups for ``objective`` (see the module docstring).

    Parameters that do not require gradients are left out, and so are empty groups. Each group
    holds ``params``, ``name`` (one of :data:`GROUP_NAMES`), ``lr``, ``initial_lr`` (the peak
    learning rate the schedule multiplies) and ``weight_decay``.

    Args:
        objective: the model, or a DDP / ``torch.compile`` wrapper of it; its ``visual``
            attribute (if any) is the visual backbone.
        cfg: learning rates, weight decay and the ``no_decay`` kinds.
    """
    visual = getattr(_unwrap(objective), "visual", None)
    visual_ids = (
        {id(p) for p in visual.parameters()} if isinstance(visual, nn.Module) else set[int]()
    )
    kinds = _param_kinds(objective)
    excluded = set(cfg.no_decay)
    buckets: dict[str, list[nn.Parameter]] = {name: [] for name in GROUP_NAMES}
    for param in objective.parameters():  # de-duplicated: a tied tensor appears once
        if not param.requires_grad:
            continue
        prefix = "visual" if id(param) in visual_ids else "other"
        no_decay = bool(kinds.get(id(param), set()) & excluded)
        buckets[prefix + ("_no_decay" if no_decay else "")].append(param)
    groups = []
    for name, params in buckets.items():
        if not params:
            continue
        lr = cfg.cnn_lr if name.startswith("visual") else cfg.lr
        groups.append(
            {
                "params": params,
                "name": name,
                "lr": lr,
                "initial_lr": lr,
                "weight_decay": 0.0 if name.endswith("no_decay") else cfg.weight_decay,
            }
        )
    if not groups:
        raise ValueError("build_optimizer: the objective has no trainable parameters")
    return groups


#: Parameter dtypes PyTorch's fused SGD/AdamW kernels accept.
FUSED_DTYPES: tuple[torch.dtype, ...] = (
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
)


def use_fused(params: Iterable[Tensor], requested: bool | None) -> bool:
    """Whether SGD/AdamW over ``params`` run fused (``optim.fused``).

    Args:
        params: the parameters the optimiser will hold (on their final device).
        requested: ``None`` (auto): fused when every parameter is a CUDA tensor of a dtype in
            :data:`FUSED_DTYPES`; ``True``: fused, or ``ValueError`` when the parameters do not
            allow it (mixed devices, an unsupported dtype or device); ``False``: not fused.
    """
    if requested is False:
        return False
    tensors = list(params)
    devices = {p.device.type for p in tensors}
    dtypes_ok = all(p.dtype in FUSED_DTYPES for p in tensors)
    if requested is None:
        return bool(tensors) and devices == {"cuda"} and dtypes_ok
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    supported = set(_get_fused_kernels_supported_devices())
    if len(devices) != 1 or not devices <= supported or not dtypes_ok:
        dtypes = sorted({str(p.dtype) for p in tensors})
        raise ValueError(
            f"optim.fused=true: fused kernels need every parameter on one device type of "
            f"{sorted(supported)} with a dtype of {[str(d) for d in FUSED_DTYPES]}; got devices "
            f"{sorted(devices)} and dtypes {dtypes} (set optim.fused=null for auto)"
        )
    return True


def build_optimizer(objective: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD or AdamW over :func:`param_groups`, wrapped in :class:`Lookahead` when enabled.

    Build it after moving the objective to its device: ``optim.fused`` (:func:`use_fused`) is
    decided from where the parameters are. Unfused, the kernels are PyTorch's defaults (foreach
    on CUDA), which a handful of groups lets them use.
    """
    groups = param_groups(objective, cfg)
    fused = use_fused((p for group in groups for p in group["params"]), cfg.fused)
    # ``fused=None`` leaves PyTorch's default; True/False would also pin foreach off.
    kernels: dict[str, Any] = {"fused": True} if fused else {}
    base: torch.optim.Optimizer
    if cfg.kind == "sgd":
        base = torch.optim.SGD(
            groups,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay,
            **kernels,
        )
    elif cfg.kind == "adamw":
        base = torch.optim.AdamW(
            groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, **kernels
        )
    else:  # pragma: no cover - the Literal and the config parser rule this out
        raise ValueError(f"optim.kind {cfg.kind!r} is not one of sgd, adamw")
    if cfg.lookahead.enabled:
        return Lookahead(base, alpha=cfg.lookahead.alpha, steps=cfg.lookahead.steps)
    return base


# --------------------------------------------------------------------------------------------
# Lookahead
# --------------------------------------------------------------------------------------------

_SLOW_KEY = "lookahead_slow"


class Lookahead(torch.optim.Optimizer):
    """Lookahead around a base optimiser (Zhang et al., "Lookahead Optimizer", 2019).

    ``step()`` runs the base optimiser; after every ``steps``-th call the slow weights move
    ``alpha`` of the way to the fast (current) weights, ``slow += alpha * (fast - slow)``, and the
    fast weights are reset to them. Slow weights start as the parameters seen at the first
    ``step()`` (so building the optimiser before ``model.to(device)`` is harmless).

    ``param_groups`` *is* the base optimiser's list: setting ``group["lr"]`` here sets it for
    the base. ``state_dict()`` is the base's state dict with each parameter's slow weights
    under ``"lookahead_slow"`` in its ``state`` entry and ``{"counter", "alpha", "steps"}``
    under ``"lookahead"``; ``load_state_dict`` restores both.

    Args:
        base: the optimiser taking the fast steps.
        alpha: slow-weight step size in (0, 1].
        steps: fast steps between synchronisations (``k``).
    """

    def __init__(self, base: torch.optim.Optimizer, alpha: float = 0.5, steps: int = 5) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"Lookahead alpha must be in (0, 1], got {alpha}")
        if steps < 1:
            raise ValueError(f"Lookahead steps must be >= 1, got {steps}")
        self.base = base
        self.alpha = alpha
        self.steps = steps
        self.counter = 0
        super().__init__(base.param_groups, base.defaults)
        # Share the very list (and group dicts) of the base optimiser.
        self.param_groups = base.param_groups

    def _params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    @torch.no_grad()
    def _init_slow(self) -> None:
        for param in self._params():
            if _SLOW_KEY not in self.state[param]:
                self.state[param][_SLOW_KEY] = param.detach().clone()

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        self._init_slow()
        loss = self.base.step(closure)
        self.counter += 1
        if self.counter % self.steps == 0:
            self.counter = 0
            fast = self._params()
            slow = [self.state[p][_SLOW_KEY] for p in fast]
            torch._foreach_lerp_(slow, fast, self.alpha)
            torch._foreach_copy_(fast, slow)
        return loss

    def state_dict(self) -> dict[str, Any]:
        packed = self.base.state_dict()
        state = {index: dict(entry) for index, entry in packed["state"].items()}
        for index, param in enumerate(self._params()):
            slow = self.state.get(param, {}).get(_SLOW_KEY)
            if slow is not None:
                state.setdefault(index, {})[_SLOW_KEY] = slow
        return {
            "state": state,
            "param_groups": packed["param_groups"],
            "lookahead": {"counter": self.counter, "alpha": self.alpha, "steps": self.steps},
        }

    @torch.no_grad()
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "lookahead" not in state_dict:
            raise ValueError(
                "Lookahead.load_state_dict: no 'lookahead' entry (a state dict saved without "
                "Lookahead?)"
            )
        base_state: dict[Any, dict[str, Any]] = {}
        slow_by_index: dict[int, Tensor] = {}
        for index, entry in state_dict["state"].items():
            entry = dict(entry)
            slow = entry.pop(_SLOW_KEY, None)
            if slow is not None:
                slow_by_index[int(index)] = slow
            if entry:
                base_state[index] = entry
        self.base.load_state_dict({"state": base_state, "param_groups": state_dict["param_groups"]})
        self.param_groups = self.base.param_groups
        self.state.clear()
        for index, param in enumerate(self._params()):
            if index in slow_by_index:
                slow = slow_by_index[index].to(device=param.device, dtype=param.dtype)
                self.state[param][_SLOW_KEY] = slow.clone()
        extra = state_dict["lookahead"]
        self.counter = int(extra["counter"])
        self.alpha = float(extra["alpha"])
        self.steps = int(extra["steps"])

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)


# --------------------------------------------------------------------------------------------
# Gradient clipping
# --------------------------------------------------------------------------------------------


def clip_grad_norm(parameters: Iterable[Tensor], max_norm: float | None) -> Tensor:
    """Global L2 norm of the gradients; scales them to ``max_norm`` when it is exceeded.

    With ``max_norm=None`` the norm is only measured (for logging). Under a ``GradScaler``,
    call ``scaler.unscale_(optimizer)`` first.

    Returns:
        the total norm before clipping (a 0-dim tensor; ``inf``/``nan`` if a gradient is).
    """
    with_grad = [p for p in parameters if p.grad is not None]
    if not with_grad:
        return torch.tensor(0.0)
    grads = [p.grad for p in with_grad if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    if max_norm is not None:
        torch.nn.utils.clip_grads_with_norm_(with_grad, max_norm, total)
    return total


# --------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------


def lr_factor(step: int, cfg: ScheduleConfig, total_steps: int) -> float:
    """Multiplier of the peak learning rate for update number ``step`` (0-based).

    - warm-up, ``step < warmup_steps``: ``(step + 1) / warmup_steps`` (the first update is not
      wasted at LR 0; the last warm-up update is at the peak);
    - then, with ``t = (step - warmup_steps) / (total_steps - warmup_steps)`` clipped to [0, 1]:
      ``cosine``: ``(1 + cos(pi * t)) / 2``; ``linear``: ``1 - t``; ``multistep``:
      ``gamma ** (number of milestones <= step)``; ``constant``: ``1``.

    Args:
        step: updates done before this one (``0`` for the first).
        cfg: the schedule.
        total_steps: updates of the whole run.
    """
    if step < 0:
        raise ValueError(f"lr_factor: step must be >= 0, got {step}")
    if total_steps < 1:
        raise ValueError(f"lr_factor: total_steps must be >= 1, got {total_steps}")
    try:
        return schedule_factor(
            step,
            total_steps,
            cfg.kind,
            warmup_steps=cfg.warmup_steps,
            milestones=cfg.milestones,
            gamma=cfg.gamma,
        )
    except ValueError:  # pragma: no cover (the config's Literal type rules it out)
        raise ValueError(f"optim.schedule.kind {cfg.kind!r} is not supported") from None
