"""Training-loop hooks against hand-worked values: the validation loss is a mean per image."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).parent))

from _tiny import ToyCaptions

from virtex_data.sampler import ResumableSampler
from virtex_models import ObjectiveOutput
from virtex_train import hooks
from virtex_train.hooks import RunLog, ValidationHook
from virtex_train.trainer import Trainer

pytestmark = pytest.mark.timeout(60)


class ImageIdLoss(nn.Module):
    """An objective whose loss on a batch is the mean of its image ids (one loss per image,
    averaged over the batch, like the real objectives' per-image reduction)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.modes: list[bool] = []

    def forward(self, batch: Any) -> ObjectiveOutput:
        self.modes.append(self.training)
        return ObjectiveOutput(loss=batch.image_ids.double().mean() + self.weight)

    def generate(self, images: torch.Tensor) -> torch.Tensor:
        """ "Captions" ``(B, 2)``: each image's first pixel, scaled, and a constant token."""
        first = (images[:, 0, 0, 0] * 1000).round().long()
        return torch.stack([first, torch.full_like(first, 7)], dim=1)


class CountingLoader:
    """Yields the batches of ``loader`` and counts how many were read."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader
        self.read = 0

    def __iter__(self) -> Any:
        for batch in self.loader:
            self.read += 1
            yield batch


def _validation(tmp_path: Path, images: int, batch_size: int, **kwargs: Any) -> tuple:
    data = ToyCaptions(images)
    sampler = ResumableSampler(images, num_replicas=1, rank=0, shuffle=False)
    loader = CountingLoader(
        DataLoader(data, batch_size=batch_size, sampler=sampler, collate_fn=data.collate)
    )
    objective = ImageIdLoss()
    trainer = Trainer(objective, torch.optim.SGD(objective.parameters(), lr=0.1), [], num_steps=0)
    log = RunLog(tmp_path)
    hook = ValidationHook(loader, log, every=1, **kwargs)
    return hook, trainer, objective, log


def test_validation_loss_is_the_mean_over_images_of_unequal_batches(tmp_path: Path) -> None:
    # 5 images at batch size 2: batches {0, 1}, {2, 3}, {4}. Per image: (0+1+2+3+4) / 5 = 2.
    # The mean of the batch means would be (0.5 + 2.5 + 4) / 3 = 7/3.
    hook, trainer, objective, log = _validation(tmp_path, images=5, batch_size=2)
    loss = hook.validate(trainer)
    log.close()
    assert loss == pytest.approx(2.0, abs=1e-12)
    assert hook.last_loss == loss
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"], r["loss"]) for r in records] == [(0, "val", loss)]
    # Evaluated in eval mode (dropout off), and training mode restored afterwards.
    assert objective.modes == [False, False, False] and objective.training


def test_validation_stops_after_max_batches(tmp_path: Path) -> None:
    # 10 images at batch 3 (batches 3, 3, 3, 1), two batches: images 0..5, mean 2.5 (all
    # would give 4.5).
    hook, trainer, objective, log = _validation(tmp_path, images=10, batch_size=3, max_batches=2)
    assert hook.validate(trainer) == pytest.approx(2.5, abs=1e-12)
    log.close()
    assert len(objective.modes) == 2
    # The loop stops at the first batch past the limit (fetched, not evaluated): the fourth
    # batch is never read.
    assert hook.loader.read == 3


def test_sample_captions_come_from_the_first_batch_only(tmp_path: Path) -> None:
    # 5 images at batch 2, 3 samples asked: the first batch holds only images 0 and 1.
    hook, trainer, _, log = _validation(
        tmp_path, images=5, batch_size=2, num_samples=3,
        decode=lambda row: " ".join(str(t) for t in row),
        references=lambda image_id: [f"reference of {image_id}"],
    )  # fmt: skip
    trainer.step = 4
    hook.validate(trainer)
    log.close()
    pixels = ToyCaptions(5).images[:, 0, 0, 0]
    expected = [
        {
            "step": 4,
            "image_id": i,
            "caption": f"{round(float(pixels[i]) * 1000)} 7",
            "references": [f"reference of {i}"],
        }
        for i in (0, 1)
    ]
    assert hook.last_samples == expected
    lines = (tmp_path / "samples.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == expected


def test_validation_of_one_image_and_of_none(tmp_path: Path) -> None:
    # One image (id 0): the loss is that image's, 0.0, not the nan of an empty split.
    hook, trainer, _, log = _validation(tmp_path / "one", images=1, batch_size=2)
    assert hook.validate(trainer) == 0.0
    log.close()
    # No batch at all (max_batches=0): nan, logged as such, and no division error.
    hook, trainer, objective, log = _validation(tmp_path / "none", images=3, batch_size=2,
                                                max_batches=0)  # fmt: skip
    assert math.isnan(hook.validate(trainer))
    log.close()
    assert objective.modes == []
    record = json.loads((tmp_path / "none" / "metrics.jsonl").read_text())
    assert math.isnan(record["loss"])


def test_validation_logs_its_duration_from_the_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fake clock read once at the start (2.0 s) and once before logging (9.5 s). (Readings
    # less than twice apart, such as 100 and 102.5, would let ``end % start`` pass for
    # ``end - start``.)
    readings = iter([2.0, 9.5])
    monkeypatch.setattr(hooks, "time", SimpleNamespace(perf_counter=lambda: next(readings)))
    hook, trainer, _, log = _validation(tmp_path, images=3, batch_size=2)
    hook.validate(trainer)
    log.close()
    record = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert record["seconds"] == 7.5


def test_sample_captions_go_to_tensorboard_as_one_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts: list[tuple[str, str, int]] = []
    decode = {"decode": lambda row: " ".join(str(t) for t in row)}
    hook, trainer, _, log = _validation(tmp_path / "a", images=5, batch_size=2, num_samples=2,
                                        **decode)  # fmt: skip
    monkeypatch.setattr(log, "text", lambda tag, text, step: texts.append((tag, text, step)))
    trainer.step = 3
    hook.validate(trainer)
    log.close()
    first = [round(float(p) * 1000) for p in ToyCaptions(5).images[:2, 0, 0, 0]]
    assert texts == [("val/captions", f"0: {first[0]} 7\n\n1: {first[1]} 7", 3)]
    # Without samples, no text at all.
    texts.clear()
    hook, trainer, _, log = _validation(tmp_path / "b", images=5, batch_size=2, num_samples=0,
                                        **decode)  # fmt: skip
    monkeypatch.setattr(log, "text", lambda tag, text, step: texts.append((tag, text, step)))
    hook.validate(trainer)
    log.close()
    assert texts == []


def test_max_batches_past_the_small_integer_cache(tmp_path: Path) -> None:
    # 300 one-image batches, 257 of them: CPython caches the ints up to 256 only, so a limit
    # compared by identity (``index is max_batches``) instead of value would read them all.
    # (Batches collated up front: a DataLoader takes seconds for 300 of them.)
    data = ToyCaptions(300, size=4)
    loader = CountingLoader([data.collate([i]) for i in range(300)])  # type: ignore[arg-type]
    objective = ImageIdLoss()
    trainer = Trainer(objective, torch.optim.SGD(objective.parameters(), lr=0.1), [], num_steps=0)
    log = RunLog(tmp_path)
    hook = ValidationHook(loader, log, every=1, max_batches=257)
    assert hook.validate(trainer) == pytest.approx(128.0, abs=1e-9)  # ids 0..256
    log.close()
    assert len(objective.modes) == 257 and loader.read == 258
