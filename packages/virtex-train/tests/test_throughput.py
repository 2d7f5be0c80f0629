"""FLOP counting, device peaks and MFU against hand computations; the trainer's throughput log;
the ``train.compile`` fallback."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).parent))

from _tiny import ToyCaptions, toy_model

from virtex_data.sampler import ResumableSampler
from virtex_models import compiling
from virtex_train.hooks import LoggingHook, RunLog
from virtex_train.throughput import (
    count_flops,
    cpu_matmul_peak,
    device_peak_flops,
    gpu_peak_flops,
    mfu,
)
from virtex_train.trainer import Hook, StepResult, Trainer


# ------------------------------------------------------------------------------ FLOP counting
def test_linear_forward_backward_flops_match_the_closed_form() -> None:
    batch, fan_in, fan_out = 3, 7, 5
    layer = nn.Linear(fan_in, fan_out)
    x = torch.randn(batch, fan_in, requires_grad=True)
    _, flops = count_flops(lambda: layer(x).sum().backward())
    # 2 FLOPs per multiply-add: forward x @ W^T, backward dX = dY @ W and dW = dY^T @ X, each
    # batch * fan_in * fan_out multiply-adds (bias additions are not matrix products).
    assert flops == 3 * 2 * batch * fan_in * fan_out


def test_conv_forward_flops_match_the_closed_form() -> None:
    conv = nn.Conv2d(3, 4, kernel_size=3, stride=1, padding=0)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        _, flops = count_flops(lambda: conv(x))
    # Output 2 x 4 x 6 x 6, each a 3 x 3 x 3 dot product: 2 * N * C_out * H * W * C_in * k * k.
    assert flops == 2 * 2 * 4 * 6 * 6 * 3 * 3 * 3


def test_mfu_is_model_flops_over_the_peak_of_all_devices() -> None:
    # 2 GFLOP per image at 250 images/s on 2 devices of 1 TFLOP/s: 5e11 / 2e12 = 0.25.
    assert mfu(2e9 * 250, 1e12, devices=2) == pytest.approx(0.25, rel=1e-12)
    with pytest.raises(ValueError):
        mfu(1.0, 0.0)


@pytest.mark.parametrize(
    ("name", "tflops"),
    [
        ("NVIDIA H200", 989.5),
        ("NVIDIA H200 NVL", 835.5),
        ("NVIDIA H100 80GB HBM3", 989.5),
        ("NVIDIA H100 PCIe", 756.5),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A100 80GB PCIe", 312.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA L40S", 362.05),
        ("NVIDIA A10G", 125.0),
        ("Tesla V100-SXM2-16GB", 125.0),
        ("Tesla V100-PCIE-32GB", 112.0),
        ("NVIDIA GeForce RTX 4090", 165.2),
    ],
)
def test_gpu_peaks_come_from_the_table(name: str, tflops: float) -> None:
    assert gpu_peak_flops(name) == pytest.approx(tflops * 1e12)


def test_unknown_gpu_has_no_peak() -> None:
    assert gpu_peak_flops("NVIDIA T4000 Imaginary") is None


def test_cpu_peak_is_measured_once_and_cached() -> None:
    first, source = device_peak_flops("cpu", "fp32")
    assert first is not None and first > 1e8  # any CPU of this century does 0.1 GFLOP/s
    assert "measured fp32 matmul" in source
    assert device_peak_flops("cpu", "fp32")[0] == first  # the cached value, not a new one
    assert cpu_matmul_peak.cache_info().hits >= 1


# ------------------------------------------------------------------------------ trainer + log
class Record(Hook):
    def __init__(self) -> None:
        self.results: list[StepResult] = []

    def after_step(self, trainer: Trainer, result: StepResult) -> None:
        self.results.append(result)


def _loader(data: ToyCaptions, batch: int) -> DataLoader:
    sampler = ResumableSampler(len(data), num_replicas=1, rank=0, shuffle=False)
    return DataLoader(data, batch_size=batch, sampler=sampler, collate_fn=data.collate)


def test_training_log_reports_tokens_flops_and_mfu(tmp_path: Path) -> None:
    data = ToyCaptions(8)
    model = toy_model()
    reference = toy_model()
    record = Record()
    log = LoggingHook(RunLog(tmp_path), every=1, progress=False)
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),
        _loader(data, 4),
        num_steps=2,
        hooks=[record, log],
    )
    trainer.train()
    # The first micro-batch (images 0..3), forward + backward, counted independently.
    batch = data.collate([0, 1, 2, 3])
    _, expected = count_flops(lambda: reference(batch).loss.backward())
    assert trainer.flops_per_image == pytest.approx(expected / 4)
    assert [r.tokens for r in record.results] == [
        int(data.lengths[:4].sum()),
        int(data.lengths[4:].sum()),
    ]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    metrics = [json.loads(line) for line in lines]
    for result, row in zip(record.results, metrics, strict=True):
        assert row["tokens_per_s"] == pytest.approx(result.tokens / result.seconds)
        flops_per_s = expected / 4 * result.images / result.seconds
        assert row["model_tflops_per_s"] == pytest.approx(flops_per_s / 1e12)
        assert row["mfu"] == pytest.approx(flops_per_s / (row["peak_tflops"] * 1e12))
    assert "CPU: measured fp32 matmul peak" in log.peak_source


def test_flop_counting_leaves_the_step_unchanged() -> None:
    results = []
    for count in (True, False):
        data = ToyCaptions(8)
        model = toy_model()
        record = Record()
        Trainer(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
            _loader(data, 4),
            num_steps=2,
            hooks=[record],
            count_flops=count,
        ).train()
        results.append(([r.loss for r in record.results], list(model.parameters())))
    (losses_a, params_a), (losses_b, params_b) = results
    assert losses_a == losses_b
    for a, b in zip(params_a, params_b, strict=True):
        assert torch.equal(a, b)


def test_train_compile_falls_back_to_eager_with_one_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(compiling, "compile_unavailable", lambda device, backend: "planted")
    data = ToyCaptions(8)
    model = toy_model()
    record = Record()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = Trainer(
            model,
            torch.optim.SGD(model.parameters(), lr=0.0),
            _loader(data, 4),
            num_steps=2,
            compile=True,
            hooks=[record],
        )
        trainer.train()
    messages = [str(w.message) for w in caught if "train.compile" in str(w.message)]
    assert messages == ["train.compile: torch.compile is not available (planted); running eagerly"]
    eager = toy_model()(data.collate([0, 1, 2, 3])).loss.item()
    assert record.results[0].loss == pytest.approx(eager, rel=1e-6)
