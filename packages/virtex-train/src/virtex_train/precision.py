"""Numeric precision of a training run: autocast dtype and gradient scaling."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch

__all__ = ["Precision", "autocast", "make_scaler", "resolve_precision"]

Precision = Literal["bf16", "fp16", "fp32"]
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(requested: str, device: torch.device) -> Precision:
    """The precision a run uses.

    Args:
        requested: ``auto`` (bf16 on CUDA, fp32 elsewhere), ``bf16``, ``fp16`` or ``fp32``.
        device: the training device.

    Raises:
        ValueError: an unknown name.
    """
    if requested == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if requested not in ("bf16", "fp16", "fp32"):
        raise ValueError(f"train.precision={requested!r} is not one of auto, bf16, fp16, fp32")
    return requested  # type: ignore[return-value]


@contextlib.contextmanager
def autocast(precision: Precision, device: torch.device) -> Iterator[None]:
    """``torch.autocast`` for bf16/fp16 (CPU and CUDA); nothing for fp32."""
    if precision == "fp32":
        yield
        return
    with torch.autocast(device.type, dtype=_DTYPES[precision]):
        yield


def make_scaler(precision: Precision, device: torch.device) -> torch.amp.GradScaler:
    """A ``GradScaler``, enabled only for fp16 (bf16 has fp32's exponent range)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
