"""``virtex_models.schedule.schedule_factor``: hand-computed factors of each kind."""

from __future__ import annotations

import math

import pytest

from virtex_models.schedule import schedule_factor


def test_warmup_then_cosine_linear_constant() -> None:
    # 4 warm-up steps: 1/4, 2/4, 3/4, 4/4; then 8 decay steps with t = (step - 4) / 8.
    assert [schedule_factor(s, 12, "cosine", warmup_steps=4) for s in range(4)] == [
        0.25,
        0.5,
        0.75,
        1.0,
    ]
    assert schedule_factor(8, 12, "cosine", warmup_steps=4) == pytest.approx(0.5)  # t = 1/2
    assert schedule_factor(6, 12, "cosine", warmup_steps=4) == pytest.approx(
        (1 + math.cos(math.pi / 4)) / 2
    )
    assert schedule_factor(12, 12, "cosine", warmup_steps=4) == pytest.approx(0.0)
    assert schedule_factor(99, 12, "linear", warmup_steps=4) == 0.0  # t clipped to 1
    assert schedule_factor(10, 12, "linear", warmup_steps=4) == pytest.approx(0.25)
    assert schedule_factor(7, 12, "constant", warmup_steps=4) == 1.0


def test_multistep_counts_milestones_reached() -> None:
    factors = [schedule_factor(s, 10, "multistep", milestones=[3, 6], gamma=0.5) for s in range(8)]
    assert factors == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]


def test_unknown_kind_is_an_error() -> None:
    with pytest.raises(ValueError, match="'step' is not supported"):
        schedule_factor(5, 10, "step")
