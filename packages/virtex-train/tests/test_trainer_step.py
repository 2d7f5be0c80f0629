"""One optimiser step's reported numbers and the loop's edges, with hand-worked values.

A linear objective with fixed weights (``y = x @ [1, 2]``, loss ``sum(y)``, SGD at ``lr=0`` so
every step sees the same weights) makes each reported number a sum one can do by hand. Written
for the ``trainer-step`` mutation target (TESTING.md): each test names the behaviour a surviving
mutant changed.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import virtex_train.trainer as trainer_module
from virtex_models import ObjectiveOutput
from virtex_train.distributed import DistEnv
from virtex_train.trainer import Hook, StepResult, Trainer

pytestmark = pytest.mark.timeout(60)


class Rows:
    """A batch: ``x`` of shape ``(B, 2)``, caption ``lengths`` ``(B,)``; records its moves."""

    def __init__(self, x: torch.Tensor, lengths: list[int] | None = None) -> None:
        self.x = x
        if lengths is not None:
            self.lengths = torch.tensor(lengths)
        self.moves: list[dict[str, Any]] = []

    def to(self, device: torch.device, **kwargs: Any) -> Rows:
        self.moves.append({"device": device, **kwargs})
        return self

    def __len__(self) -> int:
        return len(self.x)


class Fixed(nn.Module):
    """``loss = sum(x @ [1, 2])``, with one part, ``double``, of twice the loss."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([1.0, 2.0]))

    def forward(self, batch: Rows) -> ObjectiveOutput:
        loss = (batch.x @ self.weight).sum()
        return ObjectiveOutput(loss=loss, components={"double": 2 * loss})


class Record(Hook):
    def __init__(self) -> None:
        self.results: list[StepResult] = []

    def after_step(self, trainer: Trainer, result: StepResult) -> None:
        self.results.append(result)


class Order:
    """A data order that records what the trainer tells it."""

    def __init__(self) -> None:
        self.epoch = 0
        self.epochs: list[int] = []
        self.advanced: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.epochs.append(epoch)

    def advance(self, samples: int) -> None:
        self.advanced.append(samples)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def _two_micro_batches() -> list[Rows]:
    # Losses: 2 rows of 1s give 2 * 3 = 6; 3 rows of 2s give 3 * 6 = 18. 5 images, 15 tokens.
    return [Rows(torch.ones(2, 2), [4, 5]), Rows(2 * torch.ones(3, 2), [1, 2, 3])]


def _trainer(model: nn.Module, loader: Any, **kwargs: Any) -> Trainer:
    kwargs.setdefault("count_flops", False)
    kwargs.setdefault("num_steps", 1)
    return Trainer(model, torch.optim.SGD(model.parameters(), lr=0.0), loader, **kwargs)


def test_step_reports_the_mean_loss_parts_images_and_tokens() -> None:
    record, order = Record(), Order()
    _trainer(
        Fixed(), _two_micro_batches(), grad_accumulation=2, sampler=order, hooks=[record]
    ).train()
    (result,) = record.results
    assert result.step == 1
    assert result.loss == pytest.approx((6 + 18) / 2)
    assert result.components == pytest.approx({"double": (12 + 36) / 2})
    assert (result.images, result.tokens) == (5, 15)
    assert order.advanced == [2, 3]  # each micro-batch's images, as consumed


def test_step_averages_over_ranks_and_counts_every_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    # A second rank that saw the same micro-batches: the sum over ranks doubles every total.
    def two_ranks(tensor: torch.Tensor) -> torch.Tensor:
        tensor.mul_(2)
        return tensor

    monkeypatch.setattr(trainer_module, "all_reduce_sum", two_ranks)
    record = Record()
    trainer = _trainer(Fixed(), _two_micro_batches(), grad_accumulation=2, hooks=[record])
    trainer.env = DistEnv(rank=0, world_size=2)  # after the constructor: no DDP wrapper
    monkeypatch.setattr(trainer, "_agreed_stop", lambda: None)
    trainer.train()
    (result,) = record.results
    assert result.loss == pytest.approx(12.0)  # mean over ranks of the same 12
    assert result.components == pytest.approx({"double": 24.0})
    assert (result.images, result.tokens) == (10, 30)


def test_step_seconds_come_from_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    readings = iter([10.0, 32.5])  # more than twice apart: 32.5 % 10 is not 32.5 - 10
    clock = types.SimpleNamespace(perf_counter=lambda: next(readings))
    monkeypatch.setattr(trainer_module, "time", clock)
    record = Record()
    _trainer(Fixed(), _two_micro_batches(), grad_accumulation=2, hooks=[record]).train()
    assert record.results[0].seconds == pytest.approx(22.5)


def test_batches_without_lengths_count_no_tokens() -> None:
    record = Record()
    _trainer(Fixed(), [Rows(torch.ones(2, 2))], hooks=[record]).train()
    assert record.results[0].tokens == 0 and record.results[0].loss == pytest.approx(6.0)


class SyncRecorder(DistributedDataParallel):
    """Stands in for DDP on one process: records whether each forward ran inside ``no_sync``."""

    def __init__(self, module: nn.Module) -> None:
        nn.Module.__init__(self)
        self.module = module
        self.synced: list[bool] = []
        self.inside_no_sync = False

    def forward(self, batch: Any) -> Any:  # type: ignore[override]
        self.synced.append(not self.inside_no_sync)
        return self.module(batch)

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        self.inside_no_sync = True
        try:
            yield
        finally:
            self.inside_no_sync = False


@pytest.mark.parametrize("count_flops", [False, True])
def test_ddp_synchronises_only_the_last_micro_batch(
    count_flops: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if count_flops:  # the first micro-batch then runs through the flop counter, eagerly
        monkeypatch.setattr(trainer_module, "count_flops", lambda function: (function(), 1))
    loader = [Rows(torch.ones(1, 2)) for _ in range(3)]
    trainer = _trainer(Fixed(), loader, grad_accumulation=3, num_steps=2, count_flops=count_flops)
    trainer.model = trainer._forward = SyncRecorder(trainer.objective)
    trainer.train()
    assert trainer.model.synced == [False, False, True] * 2  # type: ignore[union-attr]


@pytest.mark.parametrize(("images", "per_image"), [(0, 125.0), (1, 125.0), (2, 62.5)])
def test_flops_are_counted_once_on_the_first_micro_batch(
    images: int, per_image: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def fake_count(function: Any) -> tuple[Any, int]:
        calls.append(1)
        return function(), 125

    monkeypatch.setattr(trainer_module, "count_flops", fake_count)
    loader = [Rows(torch.ones(images, 2)), Rows(torch.ones(3, 2)), Rows(torch.ones(3, 2))]
    trainer = _trainer(Fixed(), loader, grad_accumulation=3, num_steps=2, count_flops=True)
    trainer.train()
    # 125 FLOPs over the first micro-batch's images (an empty one counts as one image).
    assert trainer.flops_per_image == per_image and calls == [1]
    off = _trainer(Fixed(), loader, num_steps=2, count_flops=False)
    off.train()
    assert off.flops_per_image is None and calls == [1]


@pytest.mark.parametrize("channels_last", [False, True])
def test_batches_move_to_the_device_non_blocking_only_on_cuda(channels_last: bool) -> None:
    trainer = _trainer(Fixed(), [], channels_last=channels_last)
    layout = {"memory_format": torch.channels_last} if channels_last else {}
    for device, non_blocking in [("cpu", False), ("cuda", True), ("meta", False), ("mps", False)]:
        trainer.device = torch.device(device)  # the move is recorded, never made
        batch = Rows(torch.ones(1, 2))
        assert trainer._to_device(batch) is batch
        assert batch.moves == [
            {"device": torch.device(device), "non_blocking": non_blocking, **layout}
        ]


class Passes:
    """A loader: the batches of each pass (an iteration over it) from a list of lists."""

    def __init__(self, passes: list[list[Rows]], then: list[Rows] | None = None) -> None:
        self.passes = passes
        self.then = then
        self.started = 0

    def __iter__(self) -> Iterator[Rows]:
        self.started += 1
        if self.started <= len(self.passes):
            return iter(self.passes[self.started - 1])
        return iter(self.then or [])


def test_one_empty_pass_is_skipped_and_the_epoch_still_advances() -> None:
    order, record = Order(), Record()
    one = Rows(torch.ones(1, 2))
    loader = Passes([[], [one, one], []], then=[one])
    _trainer(Fixed(), loader, num_steps=3, sampler=order, hooks=[record]).train()
    assert [r.step for r in record.results] == [1, 2, 3]
    assert order.epochs == [1, 2, 3]  # one new epoch at the end of every pass, empty or not
    assert loader.started == 4


def test_two_empty_passes_in_a_row_are_an_error_after_exactly_two() -> None:
    one = Rows(torch.ones(1, 2))
    loader = Passes([[one], [], []], then=[one])
    trainer = _trainer(Fixed(), loader, num_steps=3)
    with pytest.raises(ValueError, match="yields no batch"):
        trainer.train()
    assert trainer.step == 1 and loader.started == 3


def test_a_run_already_at_its_step_count_trains_no_step() -> None:
    calls: list[str] = []

    class Calls(Hook):
        def before_train(self, trainer: Trainer) -> None:
            calls.append("before")

        def after_step(self, trainer: Trainer, result: StepResult) -> None:
            raise AssertionError(f"a step past num_steps: {result.step}")

        def after_train(self, trainer: Trainer) -> None:
            calls.append("after")

        def close(self) -> None:
            calls.append("close")

    for step in (3, 5):  # resumed at the end, and past it (a shorter schedule)
        calls.clear()
        trainer = _trainer(Fixed(), [Rows(torch.ones(1, 2))], num_steps=3, hooks=[Calls()])
        trainer.step = step
        trainer.train()
        assert trainer.step == step and calls == ["before", "after", "close"]


def test_ddp_synchronises_the_last_of_many_micro_batches() -> None:
    # 300 micro-batches: past CPython's cache of small integers (-5..256), where "the last
    # micro-batch" must be found by value, not identity.
    loader = [Rows(torch.ones(1, 2)) for _ in range(300)]
    trainer = _trainer(Fixed(), loader, grad_accumulation=300)
    trainer.model = trainer._forward = SyncRecorder(trainer.objective)
    trainer.train()
    assert trainer.model.synced == [False] * 299 + [True]  # type: ignore[union-attr]


def test_data_empty_from_the_start_is_an_error_after_two_passes() -> None:
    loader = Passes([], then=[])
    trainer = _trainer(Fixed(), loader, num_steps=1)
    with pytest.raises(ValueError, match="yields no batch"):
        trainer.train()
    assert loader.started == 2


class Gated(Fixed):
    """``Fixed`` plus ``gate * sum(x)`` for the batches marked ``gated``."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = nn.Parameter(torch.tensor(1.0))

    def forward(self, batch: Rows) -> ObjectiveOutput:
        output = super().forward(batch)
        if getattr(batch, "gated", False):
            output.loss = output.loss + self.gate * batch.x.sum()
        return output


def test_a_parameter_without_gradient_in_a_step_is_left_alone() -> None:
    model = Gated()
    gated = Rows(torch.ones(1, 2))
    gated.gated = True  # type: ignore[attr-defined]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    Trainer(
        model, optimizer, [gated, Rows(torch.ones(1, 2))], num_steps=2, count_flops=False
    ).train()
    # Step 1: the gate's gradient is sum(x) = 2, so 1 - 0.1 * 2 = 0.8. Step 2 does not use it:
    # no gradient (not a zero one), so SGD leaves it, momentum included, at 0.8.
    assert model.gate.item() == pytest.approx(0.8)


@pytest.mark.parametrize(
    ("here", "there", "expected"),
    [
        (None, False, None),
        ("SIGTERM", False, "SIGTERM"),
        (None, True, "a signal on another rank"),
        ("SIGINT", True, "SIGINT"),
    ],
)
def test_every_rank_stops_when_any_rank_was_asked(
    here: str | None, there: bool, expected: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[float] = []

    def with_other_rank(flag: torch.Tensor) -> torch.Tensor:
        sent.append(float(flag))
        flag += 1.0 if there else 0.0  # the other rank's flag
        return flag

    monkeypatch.setattr(trainer_module, "all_reduce_sum", with_other_rank)
    trainer = _trainer(Fixed(), [])
    trainer.env = DistEnv(rank=0, world_size=2)  # after the constructor: no DDP wrapper
    if here is not None:
        trainer.request_stop(here)
    assert trainer._agreed_stop() == expected
    assert sent == [0.0 if here is None else 1.0]


def test_a_single_process_stops_on_its_own_request_without_a_collective(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(trainer_module, "all_reduce_sum", lambda flag: pytest.fail("reduced"))
    trainer = _trainer(Fixed(), [])
    assert trainer._agreed_stop() is None
    trainer.request_stop("SIGTERM")
    assert trainer._agreed_stop() == "SIGTERM"
