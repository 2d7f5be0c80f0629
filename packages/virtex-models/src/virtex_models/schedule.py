"""The learning-rate schedule shared by pre-training and the linear probes.

:func:`schedule_factor` is a pure function of the step: linear warm-up, then cosine, linear,
multistep or constant. ``virtex_train.optim.lr_factor`` calls it with an experiment's
``optim.schedule``; ``virtex_eval.linear.lr_factor`` with a probe recipe (no warm-up, milestones
as fractions of the run). It lives here because both packages import virtex-models and neither
may import the other.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from typing import Literal

__all__ = ["ScheduleKind", "schedule_factor"]

ScheduleKind = Literal["cosine", "linear", "multistep", "constant"]


def schedule_factor(
    step: int,
    total_steps: int,
    kind: str,
    *,
    warmup_steps: int = 0,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
) -> float:
    """Multiplier of the peak learning rate for update number ``step`` (0-based).

    - warm-up, ``step < warmup_steps``: ``(step + 1) / warmup_steps`` (the first update is not
      wasted at LR 0; the last warm-up update is at the peak);
    - then, with ``t = (step - warmup_steps) / (total_steps - warmup_steps)`` clipped to [0, 1]:
      ``cosine``: ``(1 + cos(pi * t)) / 2``; ``linear``: ``1 - t``; ``multistep``:
      ``gamma ** (number of milestones <= step)`` (``milestones`` sorted); ``constant``: ``1``.

    Raises:
        ValueError: an unknown ``kind``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    if kind == "multistep":
        return float(gamma ** bisect.bisect_right(list(milestones), step))
    decay_steps = total_steps - warmup_steps
    progress = min(1.0, (step - warmup_steps) / decay_steps) if decay_steps > 0 else 1.0
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if kind == "linear":
        return 1.0 - progress
    raise ValueError(f"schedule kind {kind!r} is not supported")
