"""Hooks of the training loop: logs (JSONL, TensorBoard, tqdm), checkpoints, validation.

Only rank 0 writes files; every rank runs the hooks (validation and checkpointing need
collectives).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from virtex_data.caption_metrics import cider_d, tokenize_corpus
from virtex_train.checkpoint import CheckpointManager
from virtex_train.distributed import all_gather_objects, all_reduce_sum
from virtex_train.precision import autocast
from virtex_train.throughput import device_peak_flops, mfu
from virtex_train.trainer import Hook, NonFiniteLossError, StepResult, Trainer

__all__ = ["CheckpointHook", "LoggingHook", "RunLog", "ValidationHook"]


class RunLog:
    """``metrics.jsonl``, ``samples.jsonl`` and TensorBoard event files of a run directory.

    Args:
        output_dir: the run directory.
        enabled: ``False`` on ranks other than 0 (every call is then a no-op).
        purge_after: on resume, drop records (and TensorBoard events) of steps after it: they
            belong to the interrupted run's unsaved tail and are recomputed.
    """

    def __init__(
        self, output_dir: str | os.PathLike[str], enabled: bool = True, purge_after: int = 0
    ) -> None:
        self.output_dir = Path(output_dir)
        self.enabled = enabled
        self._writer: Any = None
        self._purge_after = purge_after
        if enabled:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            if purge_after:
                for name in ("metrics.jsonl", "samples.jsonl"):
                    self._truncate(self.output_dir / name, purge_after)

    @staticmethod
    def _truncate(path: Path, step: int) -> None:
        if not path.is_file():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
        path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")

    def _tensorboard(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(
                str(self.output_dir / "tb"),
                purge_step=self._purge_after + 1 if self._purge_after else None,
            )
        return self._writer

    def _append(self, name: str, record: dict[str, Any]) -> None:
        with open(self.output_dir / name, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def metrics(self, record: dict[str, Any]) -> None:
        """Append ``{"step", "split", ...numbers}`` to metrics.jsonl and TensorBoard."""
        if not self.enabled:
            return
        self._append("metrics.jsonl", record)
        writer = self._tensorboard()
        for key, value in record.items():
            if key not in ("step", "split") and isinstance(value, int | float):
                writer.add_scalar(f"{record['split']}/{key}", value, record["step"])

    def sample(self, record: dict[str, Any]) -> None:
        """Append ``{"step", "image_id", "caption", "references"}`` to samples.jsonl."""
        if not self.enabled:
            return
        self._append("samples.jsonl", record)

    def text(self, tag: str, text: str, step: int) -> None:
        if self.enabled:
            self._tensorboard().add_text(tag, text, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class LoggingHook(Hook):
    """Averages of the last ``every`` steps to the run log; a tqdm bar on rank 0.

    The bar shows loss, learning rates and images/s; tqdm adds the ETA. Each record has
    ``images_per_s`` and ``tokens_per_s`` (global batch) and, once the trainer counted the
    model's FLOPs (:attr:`Trainer.flops_per_image`), ``model_tflops_per_s`` and ``mfu``
    against ``peak_tflops`` per device x world size (:mod:`virtex_train.throughput` says how
    both are obtained; no ``mfu`` for a device without a known peak).
    """

    def __init__(self, log: RunLog, every: int, progress: bool = True) -> None:
        if every < 1:
            raise ValueError(f"train.log_every must be >= 1, got {every}")
        self.log = log
        self.every = every
        self.progress = progress and log.enabled
        self._bar: Any = None
        self._peak: float | None = None
        #: Where the MFU's peak comes from (set by ``before_train`` on the logging rank).
        self.peak_source = ""
        self._reset()

    def _reset(self) -> None:
        self._losses: list[float] = []
        self._components: dict[str, list[float]] = {}
        self._images = 0
        self._tokens = 0
        self._seconds = 0.0

    def before_train(self, trainer: Trainer) -> None:
        if self.log.enabled and self._peak is None:
            # Measured once per process on CPU (a fraction of a second), a table look-up on CUDA.
            self._peak, self.peak_source = device_peak_flops(trainer.device, trainer.precision)
        if self.progress:
            self._bar = tqdm(
                total=trainer.num_steps, initial=trainer.step, desc="pretrain", unit="step"
            )

    def after_step(self, trainer: Trainer, result: StepResult) -> None:
        self._losses.append(result.loss)
        for name, value in result.components.items():
            self._components.setdefault(name, []).append(value)
        self._images += result.images
        self._tokens += result.tokens
        self._seconds += result.seconds
        if self._bar is not None:
            lrs = " ".join(f"{v:.2e}" for v in result.lrs.values())
            self._bar.set_postfix_str(
                f"loss {result.loss:.3f} lr {lrs} {result.images / result.seconds:.1f} img/s",
                refresh=False,
            )
            self._bar.update(1)
        if result.step % self.every == 0 or result.step == trainer.num_steps:
            record: dict[str, Any] = {
                "step": result.step,
                "split": "train",
                "loss": sum(self._losses) / len(self._losses),
                **result.lrs,
                "images_per_s": self._images / max(self._seconds, 1e-9),
            }
            record.update(self._throughput(trainer))
            for name, values in self._components.items():
                record[name] = sum(values) / len(values)
            self.log.metrics(record)
            self._reset()

    def _throughput(self, trainer: Trainer) -> dict[str, float]:
        seconds = max(self._seconds, 1e-9)
        record: dict[str, float] = {}
        if self._tokens:
            record["tokens_per_s"] = self._tokens / seconds
        if trainer.flops_per_image:
            flops_per_s = trainer.flops_per_image * self._images / seconds
            record["model_tflops_per_s"] = flops_per_s / 1e12
            if self._peak:
                record["peak_tflops"] = self._peak / 1e12
                record["mfu"] = mfu(flops_per_s, self._peak, trainer.env.world_size)
        return record

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self.log.close()


class CheckpointHook(Hook):
    """Checkpoints every ``every`` steps, at the end and when interrupted.

    Args:
        manager: the run's checkpoint files.
        build: ``trainer -> checkpoint dict``; called on every rank (it may gather state).
        every: steps between checkpoints.
        write: ``True`` on rank 0 only.
    """

    def __init__(
        self,
        manager: CheckpointManager,
        build: Callable[[Trainer], dict[str, Any]],
        every: int,
        write: bool = True,
    ) -> None:
        if every < 1:
            raise ValueError(f"train.checkpoint_every must be >= 1, got {every}")
        self.manager = manager
        self.build = build
        self.every = every
        self.write = write
        self.last_saved: int | None = None
        self.last_path: Path | None = None
        self.final_path: Path | None = None

    def before_train(self, trainer: Trainer) -> None:
        self.last_saved = trainer.step if trainer.step else None
        self.last_path = self.manager.latest()

    def save(self, trainer: Trainer) -> Path:
        """Write a checkpoint of the current step (refusing non-finite weights)."""
        if not trainer.parameters_finite():
            raise NonFiniteLossError(trainer.step, "weights")
        checkpoint = self.build(trainer)
        path = self.manager.path_for(trainer.step)
        if self.write:
            path = self.manager.save(checkpoint, trainer.step)
        self.last_saved = trainer.step
        self.last_path = path
        return path

    def after_step(self, trainer: Trainer, result: StepResult) -> None:
        if result.step % self.every == 0:
            self.save(trainer)

    def after_train(self, trainer: Trainer) -> None:
        if self.last_saved != trainer.step or self.last_path is None:
            self.save(trainer)
        if trainer.step >= trainer.num_steps and self.last_path is not None:
            self.final_path = self.manager.directory / "final.pt"
            if self.write:
                self.final_path = self.manager.finalize(self.last_path)


class ValidationHook(Hook):
    """Validation loss every ``every`` steps (and at the end) plus a few decoded captions.

    Args:
        loader: validation batches (this rank's shard).
        log: the run log.
        every: steps between validations.
        max_batches: batches per rank (``None``: the whole split).
        num_samples: captions to decode on rank 0 from the first batch (0: none; only for
            objectives with ``generate``).
        decode: token ids -> text.
        references: image id -> reference captions.
        collapse_threshold: decode every validation image of the ``max_batches`` (greedy,
            batched; captioning objectives only), log CIDEr-D against ``references`` and the
            fraction of distinct captions over all ranks, and warn when that fraction falls
            below this (0: no decoding, no check).
        collapse_after: steps (the warm-up) before a low fraction is warned about.
    """

    def __init__(
        self,
        loader: Iterable[Any],
        log: RunLog,
        every: int,
        max_batches: int | None = None,
        num_samples: int = 0,
        decode: Callable[[Sequence[int]], str] | None = None,
        references: Callable[[int], list[str]] | None = None,
        collapse_threshold: float = 0.0,
        collapse_after: int = 0,
    ) -> None:
        if every < 1:
            raise ValueError(f"train.val_every must be >= 1, got {every}")
        self.loader = loader
        self.log = log
        self.every = every
        self.max_batches = max_batches
        self.num_samples = num_samples
        self.decode = decode
        self.references = references
        self.last_step: int | None = None
        self.last_loss: float | None = None
        self.last_samples: list[dict[str, Any]] = []
        self.collapse_threshold = collapse_threshold
        self.collapse_after = collapse_after
        #: Fraction of distinct greedy captions at the last validation (``None``: not decoded).
        self.last_distinct: float | None = None
        self.collapsed = False

    def before_train(self, trainer: Trainer) -> None:
        # A resumed run validated its checkpoint's step already (those records are kept).
        self.last_step = trainer.step if trainer.step else None

    def after_step(self, trainer: Trainer, result: StepResult) -> None:
        if result.step % self.every == 0:
            self.validate(trainer)

    def after_train(self, trainer: Trainer) -> None:
        if trainer.step >= trainer.num_steps and self.last_step != trainer.step:
            self.validate(trainer)

    @torch.no_grad()
    def validate(self, trainer: Trainer) -> float:
        """Mean validation loss over ranks; logs it and the sample captions."""
        objective = trainer.objective
        start = time.perf_counter()
        objective.eval()
        totals = torch.zeros(2, dtype=torch.float64, device=trainer.device)
        samples: list[dict[str, Any]] = []
        captions: list[tuple[int, str]] = []
        generate = getattr(objective, "generate", None)
        check = self.collapse_threshold > 0 and generate is not None and self.decode is not None
        try:
            # Validation must not move the training run's random streams (exact resume).
            with torch.random.fork_rng(devices=[]):
                for index, batch in enumerate(self.loader):
                    if self.max_batches is not None and index >= self.max_batches:
                        break
                    batch = trainer._to_device(batch)
                    with autocast(trainer.precision, trainer.device):
                        output = objective(batch)
                    totals += torch.stack(
                        [output.loss.double() * len(batch), totals.new_tensor(len(batch))]
                    )
                    if index == 0 and self.log.enabled and self.num_samples:
                        samples = self._samples(trainer, batch)
                    if check:
                        assert generate is not None and self.decode is not None
                        with autocast(trainer.precision, trainer.device):
                            tokens = generate(batch.images, mode="greedy")
                        captions.extend(
                            (int(image_id), self.decode(row))
                            for image_id, row in zip(
                                batch.image_ids.tolist(), tokens.tolist(), strict=True
                            )
                        )
        finally:
            objective.train()
        all_reduce_sum(totals)
        loss = float(totals[0] / totals[1]) if totals[1] > 0 else math.nan
        self.last_step, self.last_loss, self.last_samples = trainer.step, loss, samples
        record: dict[str, Any] = {"step": trainer.step, "split": "val", "loss": loss}
        if check:
            record.update(self._collapse(trainer.step, captions))
        record["seconds"] = time.perf_counter() - start
        self.log.metrics(record)
        for sample in samples:
            self.log.sample(sample)
        if samples:
            text = "\n\n".join(f"{s['image_id']}: {s['caption']}" for s in samples)
            self.log.text("val/captions", text, trainer.step)
        return loss

    def _collapse(self, step: int, captions: list[tuple[int, str]]) -> dict[str, Any]:
        """Distinct-caption fraction and CIDEr over all ranks; warns below the threshold."""
        pairs = [pair for part in all_gather_objects(captions) for pair in part]
        every = [caption for _, caption in pairs]
        distinct = len(set(every)) / len(every) if every else 1.0
        self.last_distinct = distinct
        self.collapsed = step >= self.collapse_after and distinct < self.collapse_threshold
        record: dict[str, Any] = {
            "distinct_captions": distinct,
            "decoded_images": len(every),
            "collapse_warning": int(self.collapsed),
        }
        if self.references is not None and self.log.enabled:
            cider = self._cider(dict(pairs))
            if cider is not None:
                record["cider"] = cider
        if self.collapsed and self.log.enabled:
            common = max(set(every), key=every.count)
            message = (
                f"WARNING: caption collapse at step {step}: {len(set(every))} distinct greedy "
                f"captions for {len(every)} validation images ({distinct:.1%} < "
                f"{self.collapse_threshold:.1%}); most common: {common!r}"
            )
            print(message, flush=True)
            self.log.text("val/collapse_warning", message, step)
        return record

    def _cider(self, predictions: dict[int, str]) -> float | None:
        """CIDEr-D (pycocoevalcap's, PTB-tokenised) of greedy captions vs their references."""
        assert self.references is not None
        references = {key: self.references(key) for key in predictions}
        keys = [key for key, refs in references.items() if refs]
        if len(keys) < 2:  # CIDEr's document frequencies need more than one image
            return None
        _, candidates, tokenized = tokenize_corpus(
            {key: predictions[key] for key in keys}, {key: references[key] for key in keys}
        )
        return cider_d(candidates, tokenized)[0]

    def _samples(self, trainer: Trainer, batch: Any) -> list[dict[str, Any]]:
        generate = getattr(trainer.objective, "generate", None)
        if generate is None or self.decode is None:
            return []
        count = min(self.num_samples, len(batch))
        with autocast(trainer.precision, trainer.device):
            tokens = generate(batch.images[:count])
        samples = []
        for row, image_id in zip(tokens.tolist(), batch.image_ids[:count].tolist()):
            samples.append(
                {
                    "step": trainer.step,
                    "image_id": int(image_id),
                    "caption": self.decode(row),
                    "references": self.references(int(image_id)) if self.references else [],
                }
            )
        return samples
