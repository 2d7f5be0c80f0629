"""One rank of the two-process DDP tests (started by test_distributed.py with torchrun's env)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).parent))

from _tiny import ToyCaptions, toy_model

from virtex_data.sampler import ResumableSampler
from virtex_train import distributed
from virtex_train.checkpoint import FORMAT_VERSION, CheckpointManager, load_checkpoint
from virtex_train.hooks import CheckpointHook
from virtex_train.trainer import Hook, StepResult, Trainer


class Record(Hook):
    def __init__(self, signal_at: int | None) -> None:
        self.losses: list[float] = []
        self.signal_at = signal_at

    def after_step(self, trainer: Trainer, result: StepResult) -> None:
        self.losses.append(result.loss)
        if result.step == self.signal_at:
            os.kill(os.getpid(), signal.SIGTERM)


def main(out: Path, num_steps: int, mode: str) -> None:
    torch.set_num_threads(1)
    env = distributed.detect_env()
    device = distributed.setup(env, "cpu")
    data = ToyCaptions(16)
    sampler = ResumableSampler(len(data), seed=0)  # rank and world from the process group
    assert (sampler.rank, sampler.num_replicas) == (env.rank, env.world_size) == (env.rank, 2)
    loader = DataLoader(
        data, batch_size=4, sampler=sampler, collate_fn=data.collate, drop_last=True
    )
    model = toy_model(dropout=0.0, seed=env.rank)  # DDP broadcasts rank 0's weights
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    manager = CheckpointManager(out / "checkpoints", keep_last=3)

    def build(trainer: Trainer) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, **trainer.state_dict()}

    # "stop-N": rank 1 alone gets a SIGTERM after step N; both ranks must stop there.
    signal_at = int(mode[5:]) if mode.startswith("stop-") and env.rank == 1 else None
    record = Record(signal_at)
    trainer = Trainer(
        model,
        optimizer,
        loader,
        num_steps=num_steps,
        device=device,
        sampler=sampler,
        clip_grad_norm=1.0,
        env=env,
        hooks=[record, CheckpointHook(manager, build, every=2, write=env.is_main)],
    )
    if mode == "resume":
        latest = manager.latest()
        assert latest is not None
        trainer.load_state_dict(load_checkpoint(latest))
    trainer.train()
    torch.save(
        {
            "losses": record.losses,
            "params": [p.detach() for p in model.parameters()],
            "step": trainer.step,
            "interrupted": trainer.interrupted,
        },
        out / f"rank{env.rank}.pt",
    )
    distributed.teardown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
