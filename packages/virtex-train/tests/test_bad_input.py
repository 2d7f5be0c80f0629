"""Bad input and bad events: NaN loss, failed writes, signals, mismatched resumes, missing data."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).parent))

from _tiny import ToyCaptions, make_tiny_data, toy_model

from virtex_data.sampler import ResumableSampler
from virtex_data.tokenizer import CaptionTokenizer
from virtex_train.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    CheckpointManager,
    load_checkpoint,
)
from virtex_train.config import load_config
from virtex_train.hooks import CheckpointHook
from virtex_train.pretrain import PretrainError, pretrain
from virtex_train.trainer import Hook, NonFiniteLossError, StepResult, Trainer

pytestmark = pytest.mark.timeout(180)


class PoisonAt(nn.Module):
    """Wraps an objective; from step ``at`` (1-based) on, its loss is NaN."""

    def __init__(self, inner: nn.Module, at: int) -> None:
        super().__init__()
        self.inner = inner
        self.at = at
        self.calls = 0

    def forward(self, batch: Any) -> Any:
        self.calls += 1
        output = self.inner(batch)
        if self.calls >= self.at:
            output.loss = output.loss * float("nan")
        return output


def _trainer(model: nn.Module, out: Path, num_steps: int, every: int, **kw: Any) -> Trainer:
    data = ToyCaptions(16)
    sampler = ResumableSampler(len(data), num_replicas=1, rank=0)
    loader = DataLoader(
        data, batch_size=4, sampler=sampler, collate_fn=data.collate, drop_last=True
    )
    manager = CheckpointManager(out, keep_last=5)

    def build(trainer: Trainer) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, **trainer.state_dict()}

    hooks = [CheckpointHook(manager, build, every=every), *kw.pop("hooks", [])]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    return Trainer(
        model, optimizer, loader, num_steps=num_steps, sampler=sampler, hooks=hooks, **kw
    )


def test_nan_loss_stops_naming_the_step_and_keeps_the_good_checkpoint(tmp_path: Path) -> None:
    model = PoisonAt(toy_model(), at=3)
    trainer = _trainer(model, tmp_path, num_steps=6, every=2)
    good = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 3"):
        trainer.train()
    manager = CheckpointManager(tmp_path)
    assert manager.steps() == [2]  # nothing written at or after the bad step, no final.pt
    assert not (tmp_path / "final.pt").exists()
    saved = load_checkpoint(manager.latest())  # type: ignore[arg-type]
    assert saved["step"] == 2
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())
    # The NaN step did not touch the weights either (the error comes before optimizer.step).
    assert not all(torch.equal(good[k], v) for k, v in model.state_dict().items())
    assert all(
        torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point()
    )


def test_nan_weights_are_never_saved(tmp_path: Path) -> None:
    class Corrupt(Hook):
        def after_step(self, trainer: Trainer, result: StepResult) -> None:
            if result.step == 2:
                with torch.no_grad():
                    next(trainer.objective.parameters()).fill_(float("inf"))

    trainer = _trainer(toy_model(), tmp_path, num_steps=4, every=1, hooks=[Corrupt()])
    trainer.hooks.reverse()  # corrupt first, then the checkpoint hook sees it
    with pytest.raises(NonFiniteLossError, match="non-finite weights at step 2"):
        trainer.train()
    assert CheckpointManager(tmp_path).steps() == [1]


def test_failed_checkpoint_write_stops_and_keeps_previous(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = torch.save
    calls = {"n": 0}

    def flaky_save(obj: Any, handle: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        original(obj, handle)

    monkeypatch.setattr(torch, "save", flaky_save)
    trainer = _trainer(toy_model(), tmp_path, num_steps=4, every=1)
    with pytest.raises(CheckpointError, match="step_0000002.pt.*No space left"):
        trainer.train()
    monkeypatch.undo()
    manager = CheckpointManager(tmp_path)
    assert manager.steps() == [1]
    assert load_checkpoint(manager.latest())["step"] == 1  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_0000001.pt"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_checkpoints_and_returns_resumable(tmp_path: Path, signum: int) -> None:
    class Kill(Hook):
        def after_step(self, trainer: Trainer, result: StepResult) -> None:
            if result.step == 2:
                os.kill(os.getpid(), signum)  # a real signal through the trainer's handler

    previous = signal.getsignal(signum)
    trainer = _trainer(toy_model(), tmp_path, num_steps=10, every=100, hooks=[Kill()])
    trainer.train()
    assert trainer.step == 2
    assert trainer.interrupted == signal.Signals(signum).name
    assert signal.getsignal(signum) is previous  # handlers restored
    manager = CheckpointManager(tmp_path)
    assert manager.latest() == tmp_path / "step_0000002.pt"
    assert not (tmp_path / "final.pt").exists()  # an interrupted run is not final
    resumed = _trainer(toy_model(), tmp_path, num_steps=4, every=100)
    resumed.load_state_dict(load_checkpoint(tmp_path / "step_0000002.pt"))
    resumed.train()
    assert resumed.step == 4 and (tmp_path / "final.pt").exists()


# ----------------------------------------------------------------------------- pretrain level
@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_tiny_data(tmp_path_factory.mktemp("tiny"))


def _config(data: Any, *extra: str) -> Any:
    return load_config(
        None,
        [
            f"data.train_lmdb={data.train_lmdb}",
            f"data.val_lmdb={data.val_lmdb}",
            f"data.tokenizer={data.tokenizer}",
            "data.transform.image_size=32",
            "model.textual.width=32",
            "model.textual.ffn=64",
            "train.batch_size=4",
            "train.num_workers=0",
            "train.val_batches=1",
            "train.sample_captions=0",
            "train.num_steps=2",
            *extra,
        ],
    )


def test_missing_dataset_is_named(data: Any, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.lmdb"
    with pytest.raises(PretrainError, match=f"data.train_lmdb: {missing} does not exist"):
        pretrain(_config(data, f"data.train_lmdb={missing}"), tmp_path / "run", progress=False)


def test_resume_with_another_vocabulary_is_refused(data: Any, tmp_path: Path) -> None:
    pretrain(_config(data), tmp_path / "run", progress=False)
    captions = ["a red circle", "a blue square", "two green stars", "a red square"] * 5
    other = CaptionTokenizer.train(captions, vocab_size=30)
    other.save(tmp_path / "other.json")
    config = _config(data, f"data.tokenizer={tmp_path / 'other.json'}", "train.num_steps=4")
    size = CaptionTokenizer.from_file(data.tokenizer).vocab_size
    expected = rf"vocabulary of {size} tokens.*has {other.vocab_size}"
    with pytest.raises(PretrainError, match=expected):
        pretrain(config, tmp_path / "run", resume=True, progress=False)


def test_existing_run_without_resume_is_refused(data: Any, tmp_path: Path) -> None:
    pretrain(_config(data), tmp_path / "run", progress=False)
    with pytest.raises(PretrainError, match="already holds a run.*--resume"):
        pretrain(_config(data), tmp_path / "run", progress=False)


def test_batch_that_does_not_split_is_refused(data: Any, tmp_path: Path) -> None:
    config = _config(data, "train.batch_size=6", "train.grad_accumulation=3")
    config.train.grad_accumulation = 4  # bypasses the config's own check: the trainer's
    with pytest.raises(PretrainError, match="batch_size=6"):
        pretrain(config, tmp_path / "run", progress=False)


def test_resume_with_another_architecture_names_the_weights(data: Any, tmp_path: Path) -> None:
    pretrain(_config(data), tmp_path / "run", progress=False)
    config = _config(data, "model.textual.width=64", "model.textual.ffn=128", "train.num_steps=4")
    with pytest.raises(PretrainError, match=r"cannot resume: .*step_0000002.pt.*shape mismatch"):
        pretrain(config, tmp_path / "run", resume=True, progress=False)
