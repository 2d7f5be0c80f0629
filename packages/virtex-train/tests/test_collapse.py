"""The validation collapse check: distinct greedy captions, warned about below the threshold."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from virtex_train.hooks import RunLog, ValidationHook


@dataclass
class Batch:
    image_ids: Tensor
    images: Tensor

    def __len__(self) -> int:
        return len(self.image_ids)

    def to(self, device: Any, **_: Any) -> Batch:
        return self


@dataclass
class Output:
    loss: Tensor


class Captioner(nn.Module):
    """Greedy "captions": one fixed token row (collapsed) or the image's own id (varied)."""

    def __init__(self, collapsed: bool) -> None:
        super().__init__()
        self.collapsed = collapsed
        self.modes: list[str | None] = []

    def forward(self, batch: Batch) -> Output:
        return Output(loss=torch.tensor(1.0))

    def generate(self, images: Tensor, *, mode: str | None = None) -> Tensor:
        self.modes.append(mode)
        first = images[:, 0, 0, 0].long()  # the test puts the image id there
        rows = torch.zeros_like(first) if self.collapsed else first
        return torch.stack([rows, rows + 1], dim=1)


@dataclass
class FakeTrainer:
    objective: nn.Module
    step: int
    device: torch.device = torch.device("cpu")
    precision: str = "fp32"

    def _to_device(self, batch: Batch) -> Batch:
        return batch


def _batches(count: int, size: int) -> list[Batch]:
    batches = []
    for b in range(count):
        ids = torch.arange(b * size, (b + 1) * size)
        images = torch.zeros(size, 3, 2, 2)
        images[:, 0, 0, 0] = ids.float()
        batches.append(Batch(ids, images))
    return batches


def _validate(
    tmp_path: Path, collapsed: bool, step: int, max_batches: int = 3
) -> tuple[ValidationHook, dict[str, Any], Captioner]:
    objective = Captioner(collapsed)
    log = RunLog(tmp_path)
    hook = ValidationHook(
        _batches(4, 8),
        log,
        every=10,
        max_batches=max_batches,
        decode=lambda row: " ".join(f"w{i}" for i in row),
        references=lambda image_id: [f"w{image_id} w{image_id + 1}"],
        collapse_threshold=0.05,
        collapse_after=20,
    )
    hook.validate(FakeTrainer(objective, step))  # type: ignore[arg-type]
    log.close()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return hook, records[-1], objective


def test_one_caption_for_every_image_is_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hook, record, objective = _validate(tmp_path, collapsed=True, step=30)
    # 3 batches of 8 (val_batches bounds the cost): 24 images, 1 distinct caption.
    assert record["decoded_images"] == 24
    assert record["distinct_captions"] == pytest.approx(1 / 24)
    assert record["collapse_warning"] == 1 and hook.collapsed
    assert objective.modes == ["greedy"] * 3
    out = capsys.readouterr().out
    assert "WARNING: caption collapse at step 30" in out and "'w0 w1'" in out


def test_varied_captions_are_not_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hook, record, _ = _validate(tmp_path, collapsed=False, step=30)
    assert record["distinct_captions"] == 1.0 and record["collapse_warning"] == 0
    assert not hook.collapsed and "WARNING" not in capsys.readouterr().out


def test_no_warning_during_warm_up(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, record, _ = _validate(tmp_path, collapsed=True, step=10)
    assert record["distinct_captions"] == pytest.approx(1 / 24)
    assert record["collapse_warning"] == 0 and "WARNING" not in capsys.readouterr().out


def test_threshold_zero_decodes_nothing(tmp_path: Path) -> None:
    objective = Captioner(collapsed=True)
    log = RunLog(tmp_path)
    hook = ValidationHook(_batches(2, 4), log, every=10, decode=str)
    hook.validate(FakeTrainer(objective, 30))  # type: ignore[arg-type]
    log.close()
    record = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert objective.modes == [] and "distinct_captions" not in record


def test_cider_of_the_greedy_captions_against_their_references(tmp_path: Path) -> None:
    _, varied, _ = _validate(tmp_path / "a", collapsed=False, step=30)
    # Each caption equals its one reference ("wK wK+1"): cosine 1 for unigrams and bigrams, no
    # 3- or 4-grams in two-word captions (0), equal lengths: 10 * (1 + 1 + 0 + 0) / 4 = 5.
    assert varied["cider"] == pytest.approx(5.0, abs=1e-9)
    _, collapsed, _ = _validate(tmp_path / "b", collapsed=True, step=30)
    # "w0 w1" for all 24 images: exact for image 0 (CIDEr 5); image 1 (reference "w1 w2")
    # shares the unigram w1: idf(w0) = log(24 / 1), idf(w1) = idf(w2) = log(24 / 2), cosine
    # idf1^2 / (|(idf0, idf1)| |(idf1, idf2)|), no shared bigram; nothing with the others.
    idf0, idf1 = math.log(24), math.log(12)
    cosine = idf1**2 / (math.hypot(idf0, idf1) * math.hypot(idf1, idf1))
    assert collapsed["cider"] == pytest.approx((5.0 + 10 * cosine / 4) / 24, rel=1e-9)
