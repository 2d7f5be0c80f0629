"""The training loop against hand-written plain-PyTorch steps."""

from __future__ import annotations

import copy
import functools
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).parent))

from _tiny import ToyCaptions, toy_model

from virtex_data.sampler import ResumableSampler
from virtex_models import ObjectiveOutput
from virtex_train.precision import resolve_precision
from virtex_train.trainer import Hook, StepResult, Trainer

pytestmark = pytest.mark.timeout(120)


def _loader(dataset: ToyCaptions, batch: int, shuffle: bool = False) -> DataLoader:
    sampler = ResumableSampler(len(dataset), num_replicas=1, rank=0, shuffle=shuffle)
    return DataLoader(
        dataset, batch_size=batch, sampler=sampler, collate_fn=dataset.collate, drop_last=True
    )


class Record(Hook):
    def __init__(self) -> None:
        self.results: list[StepResult] = []

    def after_step(self, trainer: Trainer, result: StepResult) -> None:
        self.results.append(result)


def test_accumulated_step_matches_plain_pytorch() -> None:
    data = ToyCaptions(8)
    model = toy_model()
    reference = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    record = Record()
    trainer = Trainer(
        model,
        optimizer,
        _loader(data, 4),
        num_steps=2,
        grad_accumulation=2,
        clip_grad_norm=0.5,
        lr_factor=lambda step: [1.0, 0.5][step],
        hooks=[record],
    )
    trainer.train()

    # The same two steps by hand: micro-batches [0:4], [4:8], loss / 2 each, clip, SGD.
    plain = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    reference.train()
    losses, components = [], []
    for step in range(2):
        for group in plain.param_groups:
            group["lr"] = 0.1 * [1.0, 0.5][step]
        plain.zero_grad()
        total = 0.0
        parts: dict[str, float] = {}
        for part in (range(0, 4), range(4, 8)):
            output = reference(data.collate(list(part)))
            loss = output.loss / 2
            loss.backward()
            total += loss.item()
            for name, value in output.components.items():
                parts[name] = parts.get(name, 0.0) + value.item() / 2
        torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
        plain.step()
        losses.append(total)
        components.append(parts)
    assert [r.loss for r in record.results] == pytest.approx(losses, rel=1e-6)
    # Each logged part of the loss is its mean over the micro-batches, like the loss.
    for result, expected in zip(record.results, components, strict=True):
        assert result.components == pytest.approx(expected, rel=1e-6)
    assert [r.lrs for r in record.results] == [{"lr/group0": 0.1}, {"lr/group0": 0.05}]
    assert record.results[0].images == 8
    assert set(record.results[0].components) == {"forward", "backward"}
    for (name, a), b in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_loop_runs_over_several_epochs_and_stops() -> None:
    data = ToyCaptions(6)  # batch 4, drop_last: one batch per epoch
    model = toy_model()
    sampler = ResumableSampler(len(data), num_replicas=1, rank=0, shuffle=True)
    loader = DataLoader(
        data, batch_size=4, sampler=sampler, collate_fn=data.collate, drop_last=True
    )
    trainer = Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.01), loader, num_steps=3, sampler=sampler
    )
    trainer.train()
    assert trainer.step == 3
    assert sampler.epoch == 2  # the third step came from the third epoch
    assert sampler.state_dict()["position"] == 4


def test_too_small_dataset_is_an_error_not_a_hang() -> None:
    data = ToyCaptions(3)
    model = toy_model()
    trainer = Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.01), _loader(data, 4), num_steps=2
    )
    with pytest.raises(ValueError, match="yields no batch"):
        trainer.train()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_precisions_train_on_cpu(precision: str) -> None:
    data = ToyCaptions(8)
    model = toy_model()
    before = [p.detach().clone() for p in model.parameters()]
    record = Record()
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.01),
        _loader(data, 4),
        num_steps=2,
        precision=resolve_precision(precision, torch.device("cpu")),
        channels_last=True,
        hooks=[record],
    )
    trainer.train()
    assert trainer.scaler.is_enabled() == (precision == "fp16")
    assert all(torch.isfinite(torch.tensor(r.loss)) for r in record.results)
    # Autocast loss is close to the fp32 loss of the same initial model.
    fp32 = toy_model()(data.collate([0, 1, 2, 3])).loss.item()
    assert record.results[0].loss == pytest.approx(fp32, rel=0.05)
    changed = [not torch.equal(a, b) for a, b in zip(before, model.parameters())]
    assert any(changed)
    assert model.visual.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_precision_names() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("auto", cuda) == "bf16"
    with pytest.raises(ValueError, match="train.precision"):
        resolve_precision("fp8", cpu)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_compiled_forward_gives_the_eager_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    # aot_eager traces the objective and its batch dataclass like inductor does, without the
    # minutes of C++ compilation inductor needs on this CPU.
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    data = ToyCaptions(8)
    record = Record()
    model = toy_model()
    Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),
        _loader(data, 4),
        num_steps=1,
        compile=True,
        hooks=[record],
    ).train()
    eager = toy_model()(data.collate([0, 1, 2, 3])).loss.item()
    assert record.results[0].loss == pytest.approx(eager, rel=1e-4)


@pytest.mark.gpu
def test_auto_precision_is_bf16_on_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    device = torch.device("cuda")
    data = ToyCaptions(8)
    record = Record()
    model = toy_model()
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.01),
        _loader(data, 4),
        num_steps=2,
        device=device,
        precision=resolve_precision("auto", device),
        channels_last=True,
        hooks=[record],
    )
    trainer.train()
    assert trainer.precision == "bf16"
    fp32 = toy_model()(data.collate([0, 1, 2, 3])).loss.item()
    assert record.results[0].loss == pytest.approx(fp32, rel=0.05)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_throughput_benchmark_quick_mode_prints_its_table() -> None:
    script = Path(__file__).resolve().parents[3] / "benchmarks" / "train_throughput.py"
    done = subprocess.run(
        [sys.executable, str(script), "--quick"], capture_output=True, text=True, timeout=590
    )
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| R-18")]
    assert [row.split("|")[4].strip() for row in rows] == [
        "plain fp32",
        "virtex_train fp32",
        "virtex_train best",
    ]
    assert "failed" not in done.stdout


class LinearLoss(torch.nn.Module):
    """Two linear layers; a batch is a plain ``(B, 2)`` tensor, the loss the summed output."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)

    def forward(self, batch: torch.Tensor) -> ObjectiveOutput:
        return ObjectiveOutput(loss=self.second(self.first(batch)).sum())


def test_each_step_uses_and_logs_its_own_learning_rate_per_group() -> None:
    model = LinearLoss()
    groups = [
        {"params": [model.first.weight], "name": "visual", "lr": 0.2},
        {"params": [model.first.bias], "name": "visual_no_decay", "lr": 0.2},
        {"params": list(model.second.parameters()), "lr": 0.01},  # unnamed: "group2"
    ]
    optimizer = torch.optim.SGD(groups, lr=0.0)
    factors = [1.0, 0.5, 0.25]
    seen: list[list[float]] = []

    class LrsInUse(Hook):
        def after_step(self, trainer: Trainer, result: StepResult) -> None:
            seen.append([g["lr"] for g in trainer.optimizer.param_groups])

    record = Record()
    Trainer(
        model, optimizer, [torch.ones(2, 2)], num_steps=3, lr_factor=lambda step: factors[step],
        hooks=[record, LrsInUse()], count_flops=False,
    ).train()  # fmt: skip
    # Update s (0-based) runs at peak * factors[s]; the "_no_decay" group logs under its pair.
    assert [r.lrs for r in record.results] == [
        {"lr/visual": 0.2 * f, "lr/group2": 0.01 * f} for f in factors
    ]
    assert seen == [[0.2 * f, 0.2 * f, 0.01 * f] for f in factors]
    assert [g["initial_lr"] for g in optimizer.param_groups] == [0.2, 0.2, 0.01]
