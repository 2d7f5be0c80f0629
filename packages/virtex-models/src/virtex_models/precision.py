"""Reduced-precision inference switches: where bf16 pays and how a setting resolves.

Captioning spends most of its time in the visual forward (convolutions) and in the decoder's
matrix products, whose weights are re-read at every token. On CPUs with native bf16
instructions (AVX512_BF16 on AMD Zen 4 / Intel Cooper Lake and later, AMX on Sapphire Rapids)
oneDNN runs bf16 convolutions and products about twice as fast as fp32; without them bf16 is
emulated and usually slower, which is why ``auto`` turns bf16 on only where it is native.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

import torch

__all__ = ["BF16Setting", "cpu_has_native_bf16", "native_bf16", "resolve_bf16"]

#: ``auto``: bf16 where the device has native bf16 arithmetic; ``on``/``off``: always/never.
BF16Setting = Literal["auto", "on", "off"]
_SETTINGS = ("auto", "on", "off")
#: /proc/cpuinfo flags of native bf16 arithmetic (x86 AVX-512 BF16, AMX; Arm BF16).
_NATIVE_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively.

    ``torch.backends.cpu.get_cpu_capability()`` names the widest vector ISA PyTorch dispatches
    to ("AVX512", "AVX512_BF16" on some builds, "AMX" ...); torch 2.14 reports only "AVX512" on
    an AVX512_BF16 Zen 4, so the CPU flags in ``/proc/cpuinfo`` are read too (Linux).
    """
    capability = torch.backends.cpu.get_cpu_capability().upper()
    if "BF16" in capability or "AMX" in capability:
        return True
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return bool(_NATIVE_FLAGS & set(line.split(":", 1)[-1].split()))
    return False


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` has native bf16 arithmetic (CUDA: ``torch.cuda.is_bf16_supported``)."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


def resolve_bf16(setting: str | bool, device: torch.device | str) -> bool:
    """``auto``/``on``/``off`` (or a bool) -> whether to run in bf16 on ``device``.

    Raises:
        ValueError: an unknown setting.
    """
    if isinstance(setting, bool):
        return setting
    if setting not in _SETTINGS:
        raise ValueError(f"bf16 setting must be one of {_SETTINGS}, got {setting!r}")
    if setting == "auto":
        return native_bf16(device)
    return setting == "on"
