"""``run_pretraining(config, output_dir)``: wire data, model, optimiser and hooks, then train.

Safe to call under ``torchrun`` or SLURM (``srun``/submitit): the environment is detected
(:mod:`virtex_train.distributed`), the process group is set up (and torn down again if this
call created it), every rank builds the same model and resumes from the same checkpoint, rank 0
writes the run directory::

    OUT/config.yaml  OUT/tokenizer.json  OUT/metrics.jsonl  OUT/samples.jsonl  OUT/tb/
    OUT/checkpoints/step_0000100.pt ... OUT/checkpoints/latest  OUT/checkpoints/final.pt
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch.utils.data import DataLoader

from virtex_data import CaptionTokenizer, DataConfig, build_dataset
from virtex_data.datasets import CaptioningDataset
from virtex_data.sampler import ResumableSampler
from virtex_data.shards import (
    ShardCaptionDataset,
    ShardLoader,
    ShardProgress,
    build_shard_dataset,
    expand_shards,
    missing_shards,
)
from virtex_data.transforms import TrainTransform
from virtex_models import VocabSpec
from virtex_models.pretrained import (
    ModelCheckpoint,
    ModelSpec,
    Preprocessing,
    load_state_dict_checked,
)
from virtex_models.registry import get_objective
from virtex_train import distributed
from virtex_train.checkpoint import (
    CheckpointManager,
    atomic_write_text,
    load_checkpoint,
    training_checkpoint,
)
from virtex_train.config import ExperimentConfig
from virtex_train.hooks import CheckpointHook, LoggingHook, RunLog, ValidationHook
from virtex_train.init_from import InitFromError, init_from_config
from virtex_train.optim import build_optimizer, lr_factor
from virtex_train.precision import resolve_precision
from virtex_train.runlock import RunLock, RunLockedError
from virtex_train.trainer import DataOrder, Trainer

__all__ = ["PretrainError", "RunResult", "pretrain", "run_pretraining"]


class PretrainError(RuntimeError):
    """A run cannot start or resume (missing data, mismatched checkpoint ...); says why."""


@dataclass
class RunResult:
    """What a (possibly interrupted) run ended with.

    Attributes:
        output_dir: the run directory.
        checkpoint: ``final.pt`` of a finished run, else the checkpoint written at the stop.
        step: optimiser steps done.
        interrupted: the signal name (``SIGTERM``...) if the run stopped early, else ``None``.
        val_loss: loss of the last validation (``None`` if none ran).
        samples: captions decoded at the last validation.
    """

    output_dir: Path
    checkpoint: Path
    step: int
    interrupted: str | None = None
    val_loss: float | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)


def vocab_spec(tokenizer: CaptionTokenizer) -> VocabSpec:
    """The model-side view of a tokenizer: size and special ids as plain ints."""
    s = tokenizer.special
    return VocabSpec(
        size=tokenizer.vocab_size, pad=s.pad, unk=s.unk, sos=s.sos, eos=s.eos, mask=s.mask
    )


def check_data_paths(data: DataConfig) -> None:
    """Raise :class:`PretrainError` naming the first missing file of the ``data:`` section."""
    for key in ("tokenizer", "train_lmdb", "val_lmdb", "train_instances", "val_instances"):
        # train_lmdb is None when the config streams data.train_shards (checked below)
        value = getattr(data, key)
        if value is not None and not Path(value).exists():
            tool = "build-vocab" if key == "tokenizer" else "build-lmdb"
            hint = f" (create it with `virtex-data {tool}`)" if "instances" not in key else ""
            raise PretrainError(f"data.{key}: {value} does not exist{hint}")
    if data.train_shards is not None:
        try:
            shards = expand_shards(data.train_shards)
        except ValueError as error:
            raise PretrainError(f"data.train_shards: {error}") from None
        missing = missing_shards(shards)
        if missing:
            raise PretrainError(
                f"data.train_shards: {len(missing)} of {len(shards)} shards do not exist, e.g. "
                f"{missing[0]} (create them with `virtex-data build-shards` or img2dataset)"
            )


def _check_resume(checkpoint: dict[str, Any], tokenizer: CaptionTokenizer, source: str) -> None:
    saved = checkpoint.get("model_spec", {}).get("vocab", {})
    if saved.get("size") != tokenizer.vocab_size:
        raise PretrainError(
            f"{source} was trained with a vocabulary of {saved.get('size')} tokens, but the "
            f"tokenizer of this config has {tokenizer.vocab_size}: resume with the run's own "
            "tokenizer (OUT/tokenizer.json) or start a new output directory"
        )
    if "tokenizer" in checkpoint:
        old = CaptionTokenizer.from_json(checkpoint["tokenizer"])
        if old.sha256 != tokenizer.sha256:
            raise PretrainError(
                f"{source} was trained with another tokenizer (same size {tokenizer.vocab_size}, "
                f"different vocabulary: sha256 {old.sha256[:12]} vs {tokenizer.sha256[:12]})"
            )


def _check_state_fits(
    checkpoint: dict[str, Any],
    config: ExperimentConfig,
    objective: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    sampler: DataOrder,
    source: str,
) -> None:
    """Raise :class:`PretrainError` if ``checkpoint`` cannot continue under ``config``.

    Runs before the resumed run writes anything (config.yaml, logs), so a mismatch leaves the
    original run resumable. Loading the state here is repeated by the trainer; both are cheap
    next to training.
    """
    saved_kind = _saved_optim_kind(checkpoint)
    if saved_kind is not None and saved_kind != config.optim.kind:
        raise PretrainError(
            f"optim.kind: {source} was trained with {saved_kind!r}, this config says "
            f"{config.optim.kind!r}; resume with optim.kind={saved_kind} or start a new "
            "--output-dir"
        )
    try:
        load_state_dict_checked(objective, checkpoint["model"], source)
        state = checkpoint["optimizer"]
        optimizer.load_state_dict(state)
        saved = checkpoint.get("sampler")
        if saved is not None:
            if saved.get("kind") == "shards" and not isinstance(sampler, ShardProgress):
                raise ValueError(
                    "it was trained from data.train_shards; resume with the same shards"
                )
            sampler.load_state_dict(saved)
    except (KeyError, ValueError, RuntimeError, TypeError, IndexError) as error:
        message = str(error) if not isinstance(error, KeyError) else f"missing {error}"
        message = message.replace(f"{source} ", "")  # named once, below
        if len(message) > 300:  # a whole model of shape mismatches: the first few say enough
            message = message[:297] + "..."
        raise PretrainError(
            f"cannot resume: {source}: {message} (the run directory is unchanged)"
        ) from None


def _saved_optim_kind(checkpoint: dict[str, Any]) -> str | None:
    text = checkpoint.get("config")
    if not isinstance(text, str):
        return None
    try:
        kind = (yaml.safe_load(text) or {}).get("optim", {}).get("kind", "sgd")
    except Exception:  # an unreadable saved config: the state check below still runs
        return None
    return kind if isinstance(kind, str) else None


def _shard_dataset(
    config: ExperimentConfig, target: str, tokenizer: CaptionTokenizer, env: distributed.DistEnv
) -> ShardCaptionDataset:
    data = config.data
    assert data.train_shards is not None
    try:
        shard_set = build_shard_dataset(
            data.train_shards,
            target,
            tokenizer,
            TrainTransform(data.transform),
            max_caption_length=data.max_caption_length,
            masking=data.masking,
            shuffle_buffer=data.shuffle_buffer,
            seed=config.seed,
            rank=env.rank,
            world_size=env.world_size,
        )
    except ValueError as error:
        raise PretrainError(f"data.train_shards: {error}") from None
    count = len(shard_set.shards)
    if count < env.world_size:  # a rank without a shard would never yield a batch
        raise PretrainError(
            f"data.train_shards names {count} shard(s) for {env.world_size} ranks: every rank "
            "needs at least one (write smaller shards: build-shards --shard-size)"
        )
    readers = env.world_size * max(1, config.train.num_workers)
    if count < readers and env.is_main:
        print(
            f"note: {count} shards for {readers} readers (ranks x train.num_workers): some "
            "DataLoader workers stay idle",
            flush=True,
        )
    return shard_set


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pretrain(
    config: ExperimentConfig,
    output_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
    handle_signals: bool = True,
) -> RunResult:
    """Run (or resume) a pretraining run; see :func:`run_pretraining`.

    Args:
        config: the experiment.
        output_dir: the run directory.
        resume: continue from ``OUT/checkpoints/latest`` (a fresh start if there is none).
        device: ``cpu``/``cuda`` (default: CUDA when available).
        progress: show the tqdm bar on rank 0.
        handle_signals: SIGTERM/SIGINT checkpoint and return (``interrupted`` set).

    Raises:
        PretrainError: missing data files, an output directory that already holds a run
            (without ``resume``), a checkpoint whose vocabulary differs from the tokenizer, or a
            global batch that does not split evenly over ranks and accumulation steps.
        virtex_train.checkpoint.CheckpointError: a checkpoint could not be written or read.
        virtex_train.trainer.NonFiniteLossError: the loss became NaN/inf (names the step).
    """
    env = distributed.detect_env()
    created_group = env.distributed and not (dist.is_available() and dist.is_initialized())
    torch_device = distributed.setup(env, device)
    try:
        return _pretrain(
            config, Path(output_dir), env, torch_device, resume, progress, handle_signals
        )
    finally:
        if created_group:
            distributed.teardown()


def _pretrain(
    config: ExperimentConfig,
    output_dir: Path,
    env: distributed.DistEnv,
    device: torch.device,
    resume: bool,
    progress: bool,
    handle_signals: bool,
) -> RunResult:
    train_cfg = config.train
    per_rank, remainder = divmod(train_cfg.batch_size, env.world_size * train_cfg.grad_accumulation)
    if remainder or per_rank < 1:
        raise PretrainError(
            f"train.batch_size={train_cfg.batch_size} (global) does not split into "
            f"{env.world_size} rank(s) x {train_cfg.grad_accumulation} accumulation step(s)"
        )
    check_data_paths(config.data)
    # Rank 0 holds the run directory for the whole run: a second run into it stops here, naming
    # the holder, before it reads or writes anything there.
    lock = RunLock(output_dir) if env.is_main else None
    refused: Exception | None = None
    if lock is not None:
        try:
            lock.acquire()
        except (RunLockedError, OSError) as error:
            refused = error
    # Every rank learns rank 0's answer: the others must not wait in DDP's first collective
    # until a timeout (srun does not end the other tasks when one fails).
    flag = torch.tensor([1.0 if refused is not None else 0.0], device=device)
    if distributed.all_reduce_max(flag).item() > 0:
        if refused is not None:
            raise refused
        raise PretrainError(f"{output_dir}: rank 0 could not take the run directory's lock")
    try:
        return _run(config, output_dir, env, device, resume, progress, handle_signals, per_rank)
    finally:
        if lock is not None:
            lock.release()


def _run(
    config: ExperimentConfig,
    output_dir: Path,
    env: distributed.DistEnv,
    device: torch.device,
    resume: bool,
    progress: bool,
    handle_signals: bool,
    per_rank: int,
) -> RunResult:
    train_cfg = config.train
    manager = CheckpointManager(output_dir / "checkpoints", train_cfg.keep_last)
    latest = manager.latest()
    if latest is not None and not resume:
        raise PretrainError(
            f"{output_dir} already holds a run (latest checkpoint {latest.name}): pass --resume "
            "to continue it, or choose another --output-dir"
        )
    tokenizer = CaptionTokenizer.from_file(config.data.tokenizer)
    checkpoint: dict[str, Any] | None = None
    if resume and latest is not None:
        checkpoint = load_checkpoint(latest)
        _check_resume(checkpoint, tokenizer, str(latest))

    _seed(config.seed + env.rank)
    info = get_objective(config.model.kind)
    target = info.target
    shard_set: ShardCaptionDataset | None = None
    train_set: CaptioningDataset | ShardCaptionDataset
    if config.data.train_shards is not None:  # streamed: no length, no index sampler
        train_set = shard_set = _shard_dataset(config, target, tokenizer, env)
    else:
        train_set = build_dataset(config.data, "train", target, tokenizer)
        if len(train_set) // env.world_size < per_rank:  # drop_last: not a single batch
            raise PretrainError(
                f"train.batch_size={train_cfg.batch_size} is larger than the training data: "
                f"data.train_lmdb {config.data.train_lmdb} holds {len(train_set)} images"
                + (f" for {env.world_size} ranks" if env.world_size > 1 else "")
            )
    val_set = build_dataset(config.data, "val", target, tokenizer)
    spec = ModelSpec(config.model, vocab_spec(tokenizer), train_set.num_classes)
    objective = spec.build().to(device)
    if train_cfg.channels_last:
        objective.to(memory_format=torch.channels_last)
    if train_cfg.init_from and checkpoint is None:
        try:
            report = init_from_config(
                train_cfg.init_from,
                objective,
                config.model,
                tokenizer,
                strict=train_cfg.init_strict,
            )
        except InitFromError as error:
            raise PretrainError(str(error)) from None
        if env.is_main:
            print("\n".join(report.lines()), flush=True)
    elif train_cfg.init_from and env.is_main:
        print(f"resuming {latest}: train.init_from is not re-applied", flush=True)
    optimizer = build_optimizer(objective, config.optim)

    pin = device.type == "cuda"
    sampler: DataOrder
    loader: Iterable[Any]
    if shard_set is not None:
        sampler = shard_set.progress
        loader = ShardLoader(
            DataLoader(
                shard_set,
                batch_size=per_rank,
                num_workers=train_cfg.num_workers,
                collate_fn=shard_set.collate,
                pin_memory=pin,
                drop_last=True,
                generator=torch.Generator().manual_seed(config.seed + env.rank),
            ),
            shard_set.progress,
        )
    else:
        assert isinstance(train_set, CaptioningDataset)
        sampler = ResumableSampler(
            len(train_set), num_replicas=env.world_size, rank=env.rank, seed=config.seed
        )
        loader = DataLoader(
            train_set,
            batch_size=per_rank,
            sampler=sampler,
            num_workers=train_cfg.num_workers,
            collate_fn=train_set.collate,
            pin_memory=pin,
            drop_last=True,
            # Its own generator: creating an iterator never draws from the global RNG (exact
            # resume).
            generator=torch.Generator().manual_seed(config.seed + env.rank),
        )
    val_sampler = ResumableSampler(
        len(val_set), num_replicas=env.world_size, rank=env.rank, shuffle=False
    )
    val_loader = DataLoader(
        val_set,
        batch_size=per_rank,
        sampler=val_sampler,
        num_workers=min(train_cfg.num_workers, 1),
        collate_fn=val_set.collate,
        pin_memory=pin,
        generator=torch.Generator().manual_seed(0),
    )

    if checkpoint is not None:  # before anything in the run directory is written
        _check_state_fits(checkpoint, config, objective, optimizer, sampler, str(latest))
    resumed_step = int(checkpoint["step"]) if checkpoint is not None else 0
    log = RunLog(output_dir, enabled=env.is_main, purge_after=resumed_step)
    config_yaml = config.to_yaml()
    tokenizer_json = tokenizer.to_json()
    if env.is_main:
        atomic_write_text(output_dir / "config.yaml", config_yaml)
        atomic_write_text(output_dir / "tokenizer.json", tokenizer_json)

    reader = val_set.reader
    index_of: dict[int, int] = {}

    def references(image_id: int) -> list[str]:
        if not index_of:
            index_of.update({int(i): n for n, i in enumerate(reader.image_ids)})
        return list(reader[index_of[image_id]].captions)

    validation = ValidationHook(
        val_loader,
        log,
        every=train_cfg.val_every or train_cfg.num_steps,
        max_batches=train_cfg.val_batches,
        num_samples=train_cfg.sample_captions,
        decode=tokenizer.decode,
        references=references,
        collapse_threshold=train_cfg.collapse_threshold if info.captions else 0.0,
        collapse_after=config.optim.schedule.warmup_steps,
    )

    transform = config.data.transform
    preprocessing = Preprocessing(
        image_size=transform.image_size,
        eval_resize=transform.eval_resize,
        mean=transform.mean,
        std=transform.std,
    )

    def build(trainer: Trainer) -> dict[str, Any]:
        state = trainer.state_dict()
        model = ModelCheckpoint(
            model=state.pop("model"),
            spec=spec,
            preprocessing=preprocessing,
            tokenizer=tokenizer_json,
            extra={"config": config_yaml},
        )
        return training_checkpoint(model, state)

    saver = CheckpointHook(
        manager, build, every=train_cfg.checkpoint_every or train_cfg.num_steps, write=env.is_main
    )
    total = train_cfg.num_steps
    trainer = Trainer(
        objective,
        optimizer,
        loader,
        num_steps=total,
        device=device,
        sampler=sampler,
        lr_factor=lambda step: lr_factor(step, config.optim.schedule, total),
        grad_accumulation=train_cfg.grad_accumulation,
        clip_grad_norm=config.optim.clip_grad_norm,
        precision=resolve_precision(train_cfg.precision, device),
        channels_last=train_cfg.channels_last,
        compile=train_cfg.compile,
        hooks=[LoggingHook(log, train_cfg.log_every, progress=progress), validation, saver],
        env=env,
        handle_signals=handle_signals,
    )
    if checkpoint is not None:
        try:
            trainer.load_state_dict(checkpoint, str(latest))
        except ValueError as error:  # weights of another architecture, another world size ...
            raise PretrainError(f"cannot resume: {error}") from None
        del checkpoint
        if shard_set is not None:  # every rank: each says which of its shards repeat
            print(shard_set.progress.describe_resume(), flush=True)
    trainer.train()
    distributed.barrier()
    if shard_set is not None and shard_set.progress.skipped:
        shard_progress = shard_set.progress
        print(
            f"shards: rank {env.rank} skipped {shard_progress.skipped} bad sample(s), e.g. "
            + "; ".join(shard_progress.notes[:3]),
            flush=True,
        )
    final = saver.final_path if saver.final_path is not None else saver.last_path
    assert final is not None
    return RunResult(
        output_dir=output_dir,
        checkpoint=final,
        step=trainer.step,
        interrupted=trainer.interrupted,
        val_loss=validation.last_loss,
        samples=validation.last_samples,
    )


def run_pretraining(config: ExperimentConfig, output_dir: Path, *, resume: bool = False) -> Path:
    """Run (or resume) a training run and return its final checkpoint path.

    Under ``torchrun``/SLURM every rank calls it; rank 0 writes. An interrupted run (SIGTERM,
    SIGINT) returns the checkpoint written at the stop; ``resume=True`` continues it.
    """
    return pretrain(config, output_dir, resume=resume).checkpoint
