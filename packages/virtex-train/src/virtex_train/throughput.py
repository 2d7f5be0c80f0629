"""Model FLOPs, device peaks and MFU (model FLOP utilisation) for the training log.

How the FLOPs are counted: the trainer runs its first micro-batch's forward and backward under
``torch.utils.flop_counter.FlopCounterMode`` (no extra pass, no change to the computation).
It counts every matrix product and convolution that the real model dispatches (``mm``,
``addmm``, ``bmm``, ``convolution`` and their backward, ``scaled_dot_product_attention``),
two FLOPs per multiply-add; element-wise work (norms, activations, the optimiser step) is not
counted, as usual for MFU. ``FLOPs per image = counted / images of that micro-batch``: a later
batch with longer captions does slightly more work, so the reported FLOP/s are an estimate
(captions are padded to the batch's longest; the paper's model spends >95% of its FLOPs in the
ResNet, which does not depend on captions).

MFU = model FLOP/s / (peak FLOP/s per device x devices). Peaks:

- CUDA: :data:`GPU_PEAK_BF16_TFLOPS`, the dense BF16 tensor-core peaks of the vendor
  datasheets (the bf16 peak is used for every precision: an fp32 run is measured against what
  the card could do in bf16). An unknown card has no peak: the log then has no MFU.
- CPU: a measured matmul peak (square matmuls of the run's dtype, best rate of a short burst),
  measured once per process and cached.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "GPU_PEAK_BF16_TFLOPS",
    "count_flops",
    "cpu_matmul_peak",
    "device_peak_flops",
    "gpu_peak_flops",
    "mfu",
]

#: Dense (no 2:4 sparsity) BF16 tensor-core peaks in TFLOP/s, by a substring of
#: ``torch.cuda.get_device_name()`` (first match wins: the more specific names come first).
#: Sources, NVIDIA datasheets (they quote the sparse figure; dense is half of it):
#: H200 datasheet: H200 SXM 1,979 / H200 NVL 1,671 TFLOPS BF16 with sparsity;
#: H100 datasheet: H100 SXM 1,979 / H100 NVL 1,671 / H100 PCIe 1,513 with sparsity;
#: A100 datasheet: 312 dense (624 with sparsity), SXM and PCIe alike;
#: L40S datasheet: 362.05 dense (733 with sparsity); L40 datasheet: 181.05 dense (362.1);
#: L4 datasheet: 242 with sparsity; A10 datasheet: 125 dense (250 with sparsity); NVIDIA
#: publishes no A10G (AWS) datasheet, it is listed with the A10's figure (an upper bound: it
#: runs at lower clocks); Ada Lovelace architecture whitepaper (RTX 4090): 165.2 dense with FP32
#: accumulate; V100 datasheet: no BF16 at all, its FP16 tensor peak (SXM2 125, PCIe 112) is
#: listed (a V100 run has to use fp16 autocast).
GPU_PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200 NVL", 835.5),
    ("H200", 989.5),
    ("H100 NVL", 835.5),
    ("H100 PCIe", 756.5),
    ("H100", 989.5),  # SXM ("NVIDIA H100 80GB HBM3")
    ("A100", 312.0),
    ("L40S", 362.05),
    ("L40", 181.05),
    ("L4", 121.0),
    ("A10G", 125.0),
    ("A10", 125.0),
    ("V100-PCIE", 112.0),
    ("V100", 125.0),
    ("RTX 4090", 165.2),
)


def gpu_peak_flops(name: str) -> float | None:
    """Dense BF16 peak FLOP/s of a CUDA device called ``name`` (``None`` if not in the table)."""
    for pattern, tflops in GPU_PEAK_BF16_TFLOPS:
        if pattern.lower() in name.lower():
            return tflops * 1e12
    return None


@functools.cache
def cpu_matmul_peak(dtype: torch.dtype = torch.float32, threads: int | None = None) -> float:
    """Measured CPU matmul FLOP/s: best rate of ``n x n`` products over ~0.3 s (cached).

    Args:
        dtype: the matmul dtype (``float32``; ``bfloat16`` for bf16 runs).
        threads: the torch thread count it was measured with (part of the cache key; default:
            the current count).
    """
    del threads  # only a cache key: the measurement uses the current setting
    n = 512
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(dtype)
    b = torch.randn(n, n, generator=generator).to(dtype)
    torch.mm(a, b)  # warm-up (thread pool, packing buffers)
    best = 0.0
    deadline = time.perf_counter() + 0.3
    while True:
        start = time.perf_counter()
        torch.mm(a, b)
        seconds = time.perf_counter() - start
        best = max(best, 2 * n**3 / max(seconds, 1e-9))
        if start > deadline:
            return best


def device_peak_flops(
    device: torch.device | str, precision: str = "bf16"
) -> tuple[float | None, str]:
    """Peak FLOP/s of one ``device`` for MFU and where the figure comes from.

    Returns:
        ``(peak, source)``: the datasheet BF16 peak of a known CUDA card, a measured matmul
        peak on CPU (bf16 matmuls for ``precision="bf16"``, else fp32), or ``(None, why)``.
    """
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = gpu_peak_flops(name)
        if peak is None:
            return None, f"{name}: not in the peak table (virtex_train.throughput)"
        return peak, f"{name}: datasheet dense BF16 peak"
    if device.type == "cpu":
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        peak = cpu_matmul_peak(dtype, torch.get_num_threads())
        name = "bf16" if dtype == torch.bfloat16 else "fp32"
        return peak, f"CPU: measured {name} matmul peak, {torch.get_num_threads()} threads"
    return None, f"{device.type}: no peak known"


def count_flops(function: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``function()`` under ``FlopCounterMode``: its result and the FLOPs it dispatched.

    Put the forward *and* the backward in ``function`` to count a training step.
    """
    counter = FlopCounterMode(display=False)
    with counter:
        result = function()
    return result, int(counter.get_total_flops())


def mfu(flops_per_second: float, peak_per_device: float, devices: int = 1) -> float:
    """Model FLOP utilisation: ``flops_per_second / (peak_per_device * devices)``."""
    if peak_per_device <= 0 or devices < 1:
        raise ValueError(f"mfu: peak {peak_per_device} and devices {devices} must be positive")
    return flops_per_second / (peak_per_device * devices)
