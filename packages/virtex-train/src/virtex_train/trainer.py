"""The training loop: an objective, an optimiser, batches, and hooks.

The trainer knows only the ``Objective`` seam (``objective(batch) -> ObjectiveOutput``) and a
batch's ``to(device, ...)`` and ``len()``: logging, checkpoints, validation and sample captions
are :class:`Hook` objects (``virtex_train.hooks``), wired by ``virtex_train.pretrain``.

One optimiser step (``Trainer.step`` counts them) consumes ``grad_accumulation`` micro-batches
per rank. The loss of each micro-batch is divided by ``grad_accumulation`` and DDP averages over
ranks, so a step sees the mean of the micro-batch losses over the whole global batch.
"""

from __future__ import annotations

import contextlib
import functools
import math
import signal
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from virtex_models.compiling import CompiledOrEager
from virtex_models.pretrained import load_state_dict_checked
from virtex_models.protocols import ObjectiveOutput
from virtex_train.checkpoint import rng_state, set_rng_state
from virtex_train.distributed import DistEnv, all_reduce_sum
from virtex_train.precision import Precision, autocast, make_scaler
from virtex_train.throughput import count_flops

__all__ = ["DataOrder", "Hook", "NonFiniteLossError", "StepResult", "Trainer"]


class DataOrder(Protocol):
    """What the trainer needs of its data order: ``virtex_data.sampler.ResumableSampler``
    (LMDB) or ``virtex_data.shards.ShardProgress`` (streamed shards)."""

    epoch: int

    def set_epoch(self, epoch: int) -> None: ...

    def advance(self, samples: int) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class NonFiniteLossError(FloatingPointError):
    """The loss (or the weights about to be saved) became NaN or infinite at ``step``."""

    def __init__(self, step: int, what: str = "loss") -> None:
        super().__init__(
            f"non-finite {what} at step {step}: training stopped; the last checkpoint written "
            "before this step is intact (resume from it with a lower learning rate, "
            "train.precision=fp32 or optim.clip_grad_norm)"
        )
        self.step = step


class Batch(Protocol):
    def to(self, device: torch.device, non_blocking: bool = ..., **kwargs: Any) -> Batch: ...

    def __len__(self) -> int: ...


@dataclass
class StepResult:
    """What one optimiser step reports to the hooks.

    Attributes:
        step: steps completed (1 after the first step).
        loss: mean loss over the global batch.
        components: named loss parts, same averaging.
        lrs: learning rate per parameter-group name (``visual``, ``other`` ...).
        images: images in the global batch.
        seconds: wall time of the step, data loading included.
        tokens: caption tokens (``lengths`` summed, all ranks) in the global batch; 0 for
            batches without ``lengths``.
    """

    step: int
    loss: float
    components: dict[str, float] = field(default_factory=dict)
    lrs: dict[str, float] = field(default_factory=dict)
    images: int = 0
    seconds: float = 0.0
    tokens: int = 0


class Hook:
    """Called by :class:`Trainer`. Subclass and override what you need.

    ``before_train`` once before the first step (after a resume: before the first new step);
    ``after_step`` after every optimiser step; ``after_train`` when the loop ends normally or
    because of SIGTERM/SIGINT (``trainer.interrupted`` says which), not after an error;
    ``close`` always, last.
    """

    def before_train(self, trainer: Trainer) -> None:
        pass

    def after_step(self, trainer: Trainer, result: StepResult) -> None:
        pass

    def after_train(self, trainer: Trainer) -> None:
        pass

    def close(self) -> None:
        pass


def _group_name(group: dict[str, Any], index: int) -> str:
    name = str(group.get("name", f"group{index}"))
    return name.removesuffix("_no_decay")


class Trainer:
    """Runs optimiser steps until ``num_steps``.

    Args:
        objective: an ``nn.Module`` returning :class:`ObjectiveOutput` for a batch.
        optimizer: over ``objective``'s parameters (may be Lookahead-wrapped); every group's
            ``initial_lr`` (default: its ``lr``) is multiplied by ``lr_factor(step)``.
        loader: yields batches (``to(device)``, ``len``) of ``batch_size / (world *
            grad_accumulation)`` images; iterated once per epoch, endlessly.
        num_steps: total optimiser steps.
        device: where to train.
        sampler: the loader's sampler (or shard progress); told what was consumed and when an
            epoch ends; its state is checkpointed.
        lr_factor: learning-rate multiplier of a step (default 1).
        grad_accumulation: micro-batches per step and rank.
        clip_grad_norm: maximum global gradient norm (``None``: no clipping).
        precision: ``bf16``/``fp16`` autocast (fp16 with a ``GradScaler``) or ``fp32``.
        channels_last: convert the model and images to ``torch.channels_last``.
        compile: run the forward pass (and so its backward) through ``torch.compile``; eager
            with one warning where compiling is not possible
            (:class:`virtex_models.compiling.CompiledOrEager`).
        hooks: called in order.
        env: the distributed environment; with ``world_size > 1`` the objective is wrapped in
            DDP (the process group must be initialised).
        handle_signals: on SIGTERM/SIGINT finish the current step, call ``after_train`` (which
            checkpoints) and return with ``interrupted`` set.
        count_flops: count the model FLOPs of the first micro-batch (forward + backward, eager,
            under ``FlopCounterMode``) into :attr:`flops_per_image` for the throughput log.
    """

    def __init__(
        self,
        objective: nn.Module,
        optimizer: torch.optim.Optimizer,
        loader: Iterable[Any],
        *,
        num_steps: int,
        device: torch.device | str = "cpu",
        sampler: DataOrder | None = None,
        lr_factor: Callable[[int], float] | None = None,
        grad_accumulation: int = 1,
        clip_grad_norm: float | None = None,
        precision: Precision = "fp32",
        channels_last: bool = False,
        compile: bool = False,
        hooks: Sequence[Hook] = (),
        env: DistEnv | None = None,
        handle_signals: bool = True,
        count_flops: bool = True,
    ) -> None:
        if num_steps < 0:
            raise ValueError(f"num_steps must be >= 0, got {num_steps}")
        if grad_accumulation < 1:
            raise ValueError(f"grad_accumulation must be >= 1, got {grad_accumulation}")
        self.device = torch.device(device)
        self.env = env or DistEnv()
        self.memory_format = torch.channels_last if channels_last else None
        self.objective = objective.to(self.device)
        if channels_last:
            self.objective.to(memory_format=torch.channels_last)
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.loader = loader
        self.sampler = sampler
        self.num_steps = num_steps
        self.lr_factor = lr_factor or (lambda step: 1.0)
        self.grad_accumulation = grad_accumulation
        self.clip_grad_norm = clip_grad_norm
        self.precision = precision
        self.scaler = make_scaler(precision, self.device)
        self.hooks = list(hooks)
        self.handle_signals = handle_signals
        self.step = 0
        self.interrupted: str | None = None
        self._stop_requested: str | None = None
        model: nn.Module = self.objective
        if self.env.distributed:
            model = DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.model = model
        self._forward: Callable[[Any], ObjectiveOutput] = (
            CompiledOrEager(model, what="train.compile", device=self.device) if compile else model
        )
        #: Model FLOPs (forward + backward) per image, counted on the first micro-batch.
        self.flops_per_image: float | None = None
        self._count_flops = count_flops
        self._params = [p for p in self.objective.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Model, optimiser, schedule position, scaler, step, RNG (every rank), sampler.

        Under DDP every rank must call it (RNG states are gathered to all ranks).
        """
        rng = rng_state()
        ranks = [rng]
        if self.env.distributed:
            ranks = [{} for _ in range(self.env.world_size)]
            dist.all_gather_object(ranks, rng)
        return {
            "model": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {"step": self.step},
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "rng": rng,
            "rng_ranks": ranks,
            "sampler": self.sampler.state_dict() if self.sampler is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any], source: str = "checkpoint") -> None:
        """Restore what :meth:`state_dict` returned (on every rank).

        Raises:
            ValueError: weights that do not fit the model, or a sampler state of another
                dataset size / world size, naming ``source``.
        """
        load_state_dict_checked(self.objective, state["model"], source)
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        if self.sampler is not None and state.get("sampler") is not None:
            try:
                self.sampler.load_state_dict(state["sampler"])
            except ValueError as error:
                raise ValueError(f"{source}: {error}") from None
        ranks = state.get("rng_ranks") or [state["rng"]]
        if len(ranks) == self.env.world_size:
            set_rng_state(ranks[self.env.rank])
        else:  # another world size: same order of samples, fresh random streams per rank
            set_rng_state(state["rng"])
            torch.manual_seed(int(torch.randint(2**62, ())) + self.env.rank)

    # ------------------------------------------------------------------ loop
    def _batches(self) -> Generator[Any, None, None]:
        empty_epochs = 0
        while True:
            count = 0
            for batch in self.loader:
                count += 1
                yield batch
            empty_epochs = empty_epochs + 1 if count == 0 else 0
            if empty_epochs >= 2:
                raise ValueError(
                    "the training data yields no batch: fewer images per rank than "
                    "train.batch_size / (world size * train.grad_accumulation)?"
                )
            if self.sampler is not None:
                self.sampler.set_epoch(self.sampler.epoch + 1)

    def _set_lr(self) -> dict[str, float]:
        factor = float(self.lr_factor(self.step))
        lrs: dict[str, float] = {}
        for index, group in enumerate(self.optimizer.param_groups):
            group["lr"] = group["initial_lr"] * factor
            lrs.setdefault(f"lr/{_group_name(group, index)}", group["lr"])
        return lrs

    def _to_device(self, batch: Any) -> Any:
        non_blocking = self.device.type == "cuda"
        if self.memory_format is not None:
            return batch.to(
                self.device, non_blocking=non_blocking, memory_format=self.memory_format
            )
        return batch.to(self.device, non_blocking=non_blocking)

    def train_step(self, batches: Iterator[Any]) -> StepResult:
        """One optimiser step over ``grad_accumulation`` micro-batches from ``batches``."""
        start = time.perf_counter()
        lrs = self._set_lr()
        self.optimizer.zero_grad(set_to_none=True)
        loss_total = torch.zeros((), device=self.device)
        tokens_total = torch.zeros((), device=self.device)
        component_totals: dict[str, torch.Tensor] = {}
        images = 0
        for micro in range(self.grad_accumulation):
            batch = self._to_device(next(batches))
            last = micro == self.grad_accumulation - 1
            sync = contextlib.nullcontext()
            if isinstance(self.model, DistributedDataParallel) and not last:
                sync = self.model.no_sync()  # type: ignore[assignment]
            with sync:
                if self._count_flops and self.flops_per_image is None:
                    # Eager (a compiled graph hides its operations from the counter); the
                    # compiled forward takes over from the next micro-batch.
                    (output, loss), flops = count_flops(
                        functools.partial(self._forward_backward, self.model, batch)
                    )
                    self.flops_per_image = flops / max(len(batch), 1)
                else:
                    output, loss = self._forward_backward(self._forward, batch)
            loss_total += loss.detach()
            lengths = getattr(batch, "lengths", None)
            if isinstance(lengths, torch.Tensor):
                tokens_total += lengths.sum()
            for name, value in output.components.items():
                part = value.detach().float() / self.grad_accumulation
                component_totals[name] = component_totals.get(name, 0) + part
            size = len(batch)
            images += size
            if self.sampler is not None:
                self.sampler.advance(size)
        # One reduction carries the loss and its parts.
        names = list(component_totals)
        stats = torch.stack([loss_total, *(component_totals[n] for n in names), tokens_total])
        all_reduce_sum(stats)
        world = self.env.world_size
        tokens = int(round(float(stats[-1])))
        values = (stats[:-1] / world).tolist()
        loss_value = values[0]
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(self.step + 1)
        if self.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self._params, self.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        return StepResult(
            step=self.step,
            loss=loss_value,
            components={n: values[1 + i] for i, n in enumerate(names)},
            lrs=lrs,
            images=images * world,
            seconds=time.perf_counter() - start,
            tokens=tokens,
        )

    def _forward_backward(
        self, forward: Callable[[Any], ObjectiveOutput], batch: Any
    ) -> tuple[ObjectiveOutput, torch.Tensor]:
        with autocast(self.precision, self.device):
            output = forward(batch)
        loss = output.loss.float() / self.grad_accumulation
        self.scaler.scale(loss).backward()
        return output, loss

    def train(self) -> None:
        """Run until ``num_steps`` (or a SIGTERM/SIGINT); see :class:`Hook` for the calls."""
        self.interrupted = None
        self._stop_requested = None
        previous = self._install_signal_handlers()
        batches = self._batches()
        try:
            self.objective.train()
            for hook in self.hooks:
                hook.before_train(self)
            while self.step < self.num_steps:
                result = self.train_step(batches)
                for hook in self.hooks:
                    hook.after_step(self, result)
                stop = self._agreed_stop()
                if stop is not None:
                    self.interrupted = stop
                    break
            for hook in self.hooks:
                hook.after_train(self)
        finally:
            batches.close()  # shuts DataLoader workers down now, not at garbage collection
            self._restore_signal_handlers(previous)
            for hook in self.hooks:
                hook.close()

    # ------------------------------------------------------------------ signals
    def request_stop(self, reason: str = "stop requested") -> None:
        """Finish the current step, checkpoint and return (what SIGTERM/SIGINT do)."""
        self._stop_requested = reason

    def _agreed_stop(self) -> str | None:
        """The stop reason if any rank was asked to stop (the same answer on every rank)."""
        if not self.env.distributed:
            return self._stop_requested
        # Decided on the reduced flag, never on the local one alone: a signal may reach one
        # rank between two collectives, and every rank must leave the loop after the same step.
        flag = torch.tensor([1.0 if self._stop_requested else 0.0], device=self.device)
        if all_reduce_sum(flag).item() > 0:
            return self._stop_requested or "a signal on another rank"
        return None

    def _handle(self, signum: int, frame: Any) -> None:
        self.request_stop(signal.Signals(signum).name)

    def _install_signal_handlers(self) -> dict[int, Any]:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return {}
        previous: dict[int, Any] = {}
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, self._handle)
        return previous

    def _restore_signal_handlers(self, previous: dict[int, Any]) -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def parameters_finite(self) -> bool:
        """Whether every floating-point parameter and buffer is finite (checked before saving)."""
        tensors = [*self.objective.parameters(), *self.objective.buffers()]
        return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())
