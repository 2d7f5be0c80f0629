"""Stopping and resuming reproduces the uninterrupted run exactly (CPU)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from _tiny import make_tiny_data, tiny_model_config, train_loader

from virtex_train.checkpoint import FORMAT_VERSION, CheckpointManager, load_checkpoint
from virtex_train.hooks import CheckpointHook
from virtex_train.pretrain import vocab_spec
from virtex_train.trainer import Hook, StepResult, Trainer


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_tiny_data(tmp_path_factory.mktemp("tiny"))


class Record(Hook):
    def __init__(self, stop_at: int | None = None) -> None:
        self.losses: list[float] = []
        self.stop_at = stop_at

    def after_step(self, trainer: Trainer, result: StepResult) -> None:
        self.losses.append(result.loss)
        if result.step == self.stop_at:
            trainer.request_stop("test")


def _run(data: Any, out: Path, stop_at: int | None, resume: bool) -> tuple[list[float], Trainer]:
    torch.manual_seed(0)
    loader, sampler, tokenizer = train_loader(data, batch_size=4)
    model = tiny_model_config().build(vocab_spec(tokenizer))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    manager = CheckpointManager(out / "checkpoints", keep_last=2)
    record = Record(stop_at)

    def build(trainer: Trainer) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, **trainer.state_dict()}

    trainer = Trainer(
        model,
        optimizer,
        loader,
        num_steps=10,
        sampler=sampler,
        lr_factor=lambda step: 1.0 - step / 10,
        clip_grad_norm=1.0,
        hooks=[record, CheckpointHook(manager, build, every=3)],
    )
    if resume:
        latest = manager.latest()
        assert latest is not None
        trainer.load_state_dict(load_checkpoint(latest), str(latest))
    trainer.train()
    return record.losses, trainer


@pytest.mark.timeout(180)
def test_resume_reproduces_loss_curve_bit_exactly(data: Any, tmp_path: Path) -> None:
    # 16 images, batch 4: 4 steps per epoch, so the run crosses epochs 0 -> 1 -> 2 and the
    # interruption at step 5 lands mid-epoch (sampler position 4 of 16).
    straight, full = _run(data, tmp_path / "a", stop_at=None, resume=False)
    first, stopped = _run(data, tmp_path / "b", stop_at=5, resume=False)
    assert stopped.step == 5 and stopped.interrupted == "test"
    assert (tmp_path / "b/checkpoints/latest").read_text().strip() == "step_0000005.pt"
    second, resumed = _run(data, tmp_path / "b", stop_at=None, resume=True)
    assert len(straight) == 10 and len(first) == 5 and len(second) == 5
    assert first + second == straight  # bit-exact floats
    for (name, a), b in zip(
        full.objective.state_dict().items(), resumed.objective.state_dict().values()
    ):
        assert torch.equal(a, b), name
    assert (tmp_path / "b/checkpoints/final.pt").samefile(
        tmp_path / "b/checkpoints/step_0000010.pt"
    )
    # keep_last=2: steps 9 and 10 remain (3 and 6 were pruned; 5 too)
    assert CheckpointManager(tmp_path / "b/checkpoints").steps() == [9, 10]


@pytest.mark.timeout(240)
def test_pretrain_resume_matches_straight_run(
    data: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole pipeline: LMDB data with augmentation, Lookahead SGD, cosine schedule,
    validation with decoded captions, logging; stopped after step 3 and resumed."""
    import json

    from virtex_train import hooks
    from virtex_train.config import load_config
    from virtex_train.pretrain import pretrain

    config = load_config(
        None,
        [
            f"data.train_lmdb={data.train_lmdb}",
            f"data.val_lmdb={data.val_lmdb}",
            f"data.tokenizer={data.tokenizer}",
            "data.transform.image_size=32",
            "model.textual.width=32",
            "model.textual.ffn=64",
            "model.decoder.beam_size=2",
            "model.decoder.max_steps=5",
            "optim.lookahead.enabled=true",  # not the quickstart's: exact resume covers it
            "optim.lookahead.steps=2",
            "optim.schedule.warmup_steps=2",
            "train.batch_size=4",
            "train.num_workers=0",
            "train.num_steps=7",
            "train.log_every=1",
            "train.val_every=2",
            "train.val_batches=1",
            "train.sample_captions=2",
            "train.checkpoint_every=100",
        ],
    )
    straight = pretrain(config, tmp_path / "a", progress=False)

    original = hooks.LoggingHook.after_step

    def stop_at_3(self: Any, trainer: Trainer, result: StepResult) -> None:
        original(self, trainer, result)
        if result.step == 3:
            trainer.request_stop("test")

    monkeypatch.setattr(hooks.LoggingHook, "after_step", stop_at_3)
    stopped = pretrain(config, tmp_path / "b", progress=False)
    monkeypatch.undo()
    assert stopped.interrupted == "test" and stopped.step == 3
    resumed = pretrain(config, tmp_path / "b", resume=True, progress=False)
    assert resumed.step == 7 and resumed.interrupted is None

    def curve(run: Path) -> list[tuple[int, str, float]]:
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [(r["step"], r["split"], r["loss"]) for r in map(json.loads, lines)]

    assert curve(tmp_path / "b") == curve(tmp_path / "a")  # bit-exact, val losses included
    assert (tmp_path / "b/samples.jsonl").read_text() == (tmp_path / "a/samples.jsonl").read_text()
    a = torch.load(straight.checkpoint, weights_only=True)
    b = torch.load(resumed.checkpoint, weights_only=True)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert a["optimizer"]["lookahead"] == b["optimizer"]["lookahead"]
