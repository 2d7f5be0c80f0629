from __future__ import annotations

import io
import json
import math
from typing import Literal

import pytest
import torch
from torch import nn

from virtex_models import ModelConfig, TextualConfig, VisualConfig, VocabSpec
from virtex_train.optim import (
    GROUP_NAMES,
    Lookahead,
    LookaheadConfig,
    OptimConfig,
    ScheduleConfig,
    build_optimizer,
    clip_grad_norm,
    lr_factor,
)

# ---------------------------------------------------------------------------------------------
# Schedules, against values computed by hand
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 0.25),  # warm-up: (step + 1) / 4
        (1, 0.5),
        (3, 1.0),
        (4, 1.0),  # decay starts: t = 0
        (6, 0.5 * (1 + math.sqrt(0.5))),  # t = 2/8: (1 + cos(pi/4)) / 2 = 0.853553...
        (8, 0.5),  # t = 1/2
        (10, 0.5 * (1 - math.sqrt(0.5))),  # t = 3/4
        (12, 0.0),
        (50, 0.0),  # past the end: stays at 0 instead of rising again
    ],
)
def test_cosine_schedule_matches_hand_computed_values(step: int, expected: float) -> None:
    cfg = ScheduleConfig(kind="cosine", warmup_steps=4)
    assert lr_factor(step, cfg, total_steps=12) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("step", "expected"), [(0, 0.25), (4, 1.0), (6, 0.75), (10, 0.25)])
def test_linear_schedule_matches_hand_computed_values(step: int, expected: float) -> None:
    cfg = ScheduleConfig(kind="linear", warmup_steps=4)
    assert lr_factor(step, cfg, total_steps=12) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("step", "expected"), [(1, 0.5), (3, 1.0), (5, 1.0), (6, 0.1), (8, 0.1), (9, 0.01), (11, 0.01)]
)
def test_multistep_schedule_multiplies_by_gamma_at_each_milestone(
    step: int, expected: float
) -> None:
    cfg = ScheduleConfig(kind="multistep", warmup_steps=4, milestones=[6, 9], gamma=0.1)
    assert lr_factor(step, cfg, total_steps=12) == pytest.approx(expected)


def test_constant_schedule_and_no_warmup() -> None:
    constant = ScheduleConfig(kind="constant", warmup_steps=2)
    assert [lr_factor(s, constant, 5) for s in range(5)] == [0.5, 1.0, 1.0, 1.0, 1.0]
    cosine = ScheduleConfig(kind="cosine", warmup_steps=0)
    assert lr_factor(0, cosine, 4) == 1.0
    assert lr_factor(2, cosine, 4) == pytest.approx(0.5)


def test_warmup_longer_than_run_never_divides_by_zero() -> None:
    cfg = ScheduleConfig(kind="cosine", warmup_steps=10)
    assert lr_factor(4, cfg, total_steps=5) == pytest.approx(0.5)
    assert lr_factor(10, cfg, total_steps=5) == 0.0  # past the end of the run


def test_schedule_with_one_decay_step_and_runs_of_one_step() -> None:
    # One decay step after warm-up: that step is at t = 0 (the peak), not at the end.
    cfg = ScheduleConfig(kind="cosine", warmup_steps=2)
    assert [lr_factor(s, cfg, total_steps=3) for s in range(3)] == [0.5, 1.0, 1.0]
    # Warm-up as long as the run: past it, the factor is 0 (no decay steps to divide by).
    for kind in ("cosine", "linear"):
        whole = ScheduleConfig(kind=kind, warmup_steps=4)  # type: ignore[arg-type]
        assert [lr_factor(s, whole, total_steps=4) for s in (3, 4)] == [1.0, 0.0]
    # A run of a single update is valid (and at the peak without warm-up).
    assert lr_factor(0, ScheduleConfig(kind="linear", warmup_steps=0), total_steps=1) == 1.0


def test_schedule_kind_parsed_at_run_time_and_unknown_kinds() -> None:
    # A kind read from a config file is a new string object equal to the literal.
    expected = {"cosine": 0.5, "linear": 0.5, "multistep": 0.1, "constant": 1.0}
    for literal, factor in expected.items():
        kind = json.loads(f'"{literal}"')
        cfg = ScheduleConfig(kind=kind, warmup_steps=4, milestones=[8])
        assert lr_factor(8, cfg, total_steps=12) == pytest.approx(factor), literal
    # lr_factor names a kind it does not know (the config parser rejects them earlier): none
    # silently falls into another schedule's branch.
    for unknown in ("bogus", "zzz"):
        cfg = ScheduleConfig(warmup_steps=0)
        cfg.kind = unknown  # type: ignore[assignment]
        with pytest.raises(ValueError, match=f"kind '{unknown}' is not supported"):
            lr_factor(1, cfg, total_steps=4)


def test_schedule_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="step"):
        lr_factor(-1, ScheduleConfig(), 10)
    with pytest.raises(ValueError, match="total_steps must be >= 1, got 0"):
        lr_factor(0, ScheduleConfig(), 0)
    with pytest.raises(ValueError, match="milestones"):
        ScheduleConfig(kind="multistep", milestones=[5, 3])
    with pytest.raises(ValueError, match="warmup_steps"):
        ScheduleConfig(warmup_steps=-1)


# ---------------------------------------------------------------------------------------------
# Parameter groups
# ---------------------------------------------------------------------------------------------

VOCAB = VocabSpec(size=50, pad=0, unk=1, sos=2, eos=3, mask=4)


def tiny_objective(kind: str = "bicaptioning", frozen: bool = False) -> nn.Module:
    config = ModelConfig.from_dict(
        {
            "kind": kind,
            "visual": {"name": "resnet18", "frozen": frozen},
            "textual": {"layers": 1, "width": 32, "heads": 2, "ffn": 64},
        }
    )
    assert isinstance(config.textual, TextualConfig) and isinstance(config.visual, VisualConfig)
    return config.build(VOCAB)


def groups_by_name(optimizer: torch.optim.Optimizer) -> dict[str, dict]:
    return {group["name"]: group for group in optimizer.param_groups}


def names_in(objective: nn.Module, group: dict) -> set[str]:
    ids = {id(p) for p in group["params"]}
    return {name for name, p in objective.named_parameters() if id(p) in ids}


def test_param_groups_split_visual_and_other_and_exclude_norm_bias_embedding() -> None:
    objective = tiny_objective()
    cfg = OptimConfig(
        cnn_lr=0.2, lr=0.001, weight_decay=1e-4, lookahead=LookaheadConfig(enabled=False)
    )
    optimizer = build_optimizer(objective, cfg)
    groups = groups_by_name(optimizer)
    assert list(groups) == list(GROUP_NAMES)  # a handful of groups, not one per tensor

    visual, visual_nd = (
        names_in(objective, groups["visual"]),
        names_in(objective, groups["visual_no_decay"]),
    )
    other, other_nd = (
        names_in(objective, groups["other"]),
        names_in(objective, groups["other_no_decay"]),
    )
    assert "visual.conv1.weight" in visual
    assert "visual.layer1.0.conv1.weight" in visual
    assert {"visual.bn1.weight", "visual.bn1.bias", "visual.layer4.1.bn2.bias"} <= visual_nd
    assert all(name.startswith("visual.") for name in visual | visual_nd)
    assert not any(name.startswith("visual.") for name in other | other_nd)
    # The embedding table (tied to the output layer), positions, LayerNorms and every bias.
    assert {
        "textual.embedding.words.weight",
        "textual.embedding.positions.weight",
        "textual.embedding.layer_norm.weight",
        "textual.embedding.layer_norm.bias",
    } <= other_nd
    assert not any(("norm" in n or n.endswith("bias") or "embedding" in n) for n in other)
    assert any(n.endswith("in_proj_bias") for n in other_nd)
    assert any(n.endswith("in_proj_weight") for n in other)
    assert any("linear1.weight" in n or "ffn" in n for n in other)

    # Every trainable tensor is in exactly one group.
    ids = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert len(ids) == len(set(ids)) == len(list(objective.parameters()))

    assert groups["visual"]["lr"] == groups["visual_no_decay"]["lr"] == 0.2
    assert groups["other"]["lr"] == groups["other_no_decay"]["lr"] == 0.001
    assert all(g["initial_lr"] == g["lr"] for g in optimizer.param_groups)
    assert groups["visual"]["weight_decay"] == groups["other"]["weight_decay"] == 1e-4
    assert (
        groups["visual_no_decay"]["weight_decay"] == groups["other_no_decay"]["weight_decay"] == 0
    )


class Wrapper(nn.Module):
    """Holds the model as ``_orig_mod``, like ``torch.compile``'s ``OptimizedModule`` (whose
    import alone takes ~20 s here)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self._orig_mod = module


def test_compiled_wrapper_gives_the_same_groups() -> None:
    objective = tiny_objective()
    cfg = OptimConfig(lookahead=LookaheadConfig(enabled=False))
    plain = build_optimizer(objective, cfg)
    wrapped = build_optimizer(Wrapper(objective), cfg)
    assert [g["name"] for g in wrapped.param_groups] == list(GROUP_NAMES)
    for a, b in zip(plain.param_groups, wrapped.param_groups):
        assert [id(p) for p in a["params"]] == [id(p) for p in b["params"]]


def test_no_decay_list_selects_kinds() -> None:
    objective = tiny_objective()
    only_bias = OptimConfig(no_decay=["bias"], lookahead=LookaheadConfig(enabled=False))
    groups = groups_by_name(build_optimizer(objective, only_bias))
    decayed = names_in(objective, groups["other"]) | names_in(objective, groups["visual"])
    assert "textual.embedding.words.weight" in decayed
    assert "visual.bn1.weight" in decayed
    assert "visual.bn1.bias" not in decayed
    nothing = OptimConfig(no_decay=[], lookahead=LookaheadConfig(enabled=False))
    assert [g["name"] for g in build_optimizer(objective, nothing).param_groups] == [
        "visual",
        "other",
    ]


def test_frozen_backbone_and_modules_without_visual() -> None:
    frozen = tiny_objective(frozen=True)
    optimizer = build_optimizer(frozen, OptimConfig())
    assert [g["name"] for g in optimizer.param_groups] == ["other", "other_no_decay"]
    plain = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    optimizer = build_optimizer(plain, OptimConfig(kind="adamw", lr=0.01))
    assert isinstance(optimizer, Lookahead) and isinstance(optimizer.base, torch.optim.AdamW)
    groups = groups_by_name(optimizer)
    assert names_in(plain, groups["other"]) == {"0.weight"}
    assert names_in(plain, groups["other_no_decay"]) == {"0.bias", "1.weight", "1.bias"}
    with pytest.raises(ValueError, match="no trainable"):
        build_optimizer(nn.Sequential(nn.ReLU()), OptimConfig())


def test_optimizer_kinds_and_hyper_parameters() -> None:
    model = nn.Linear(2, 2)
    sgd = build_optimizer(model, OptimConfig(momentum=0.8, nesterov=True))
    assert isinstance(sgd, Lookahead) and isinstance(sgd.base, torch.optim.SGD)
    assert sgd.param_groups is sgd.base.param_groups
    assert sgd.param_groups[0]["momentum"] == 0.8 and sgd.param_groups[0]["nesterov"]
    adamw = build_optimizer(
        model, OptimConfig(kind="adamw", betas=(0.8, 0.9), lookahead=LookaheadConfig(enabled=False))
    )
    assert isinstance(adamw, torch.optim.AdamW)
    assert adamw.param_groups[0]["betas"] == (0.8, 0.9)


def test_optim_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="no_decay"):
        OptimConfig(no_decay=["norms"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="clip_grad_norm"):
        OptimConfig(clip_grad_norm=0.0)
    with pytest.raises(ValueError, match="alpha"):
        LookaheadConfig(alpha=1.5)


# ---------------------------------------------------------------------------------------------
# Lookahead
# ---------------------------------------------------------------------------------------------


def reference_lookahead_sgd(
    w0: list[float], target: list[float], lr: float, momentum: float, k: int, alpha: float, n: int
) -> list[list[float]]:
    """Plain-Python SGD with momentum (PyTorch's form) + Lookahead on 0.5 * ||w - target||^2."""
    fast, slow = list(w0), list(w0)
    buf: list[float] | None = None
    history = []
    for t in range(1, n + 1):
        grad = [f - c for f, c in zip(fast, target)]
        buf = grad if buf is None else [momentum * b + g for b, g in zip(buf, grad)]
        fast = [f - lr * b for f, b in zip(fast, buf)]
        if t % k == 0:
            slow = [s + alpha * (f - s) for s, f in zip(slow, fast)]
            fast = list(slow)
        history.append(list(fast))
    return history


def quadratic_step(
    param: nn.Parameter, target: torch.Tensor, optimizer: torch.optim.Optimizer
) -> None:
    optimizer.zero_grad()
    loss = 0.5 * ((param - target) ** 2).sum()
    loss.backward()
    optimizer.step()


def test_lookahead_matches_hand_written_reference() -> None:
    w0, target = [1.0, -2.0, 0.5], [0.3, 0.1, -0.7]
    param = nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    goal = torch.tensor(target, dtype=torch.float64)
    optimizer = Lookahead(torch.optim.SGD([param], lr=0.3, momentum=0.9), alpha=0.5, steps=3)
    expected = reference_lookahead_sgd(w0, target, lr=0.3, momentum=0.9, k=3, alpha=0.5, n=10)
    for t in range(10):
        quadratic_step(param, goal, optimizer)
        assert param.detach().tolist() == pytest.approx(expected[t], abs=1e-12), f"step {t + 1}"


def test_lookahead_slow_weights_start_at_first_step_parameters() -> None:
    param = nn.Parameter(torch.zeros(2))
    optimizer = Lookahead(torch.optim.SGD([param], lr=1.0), alpha=0.5, steps=2)
    with torch.no_grad():
        param.fill_(4.0)  # e.g. weights loaded after the optimiser was built
    for _ in range(2):
        param.grad = torch.ones(2)
        optimizer.step()
    # fast: 4 -> 3 -> 2; slow: 4 + 0.5 * (2 - 4) = 3
    assert param.tolist() == [3.0, 3.0]


def make_run(
    kind: Literal["sgd", "adamw"], seed: int = 0
) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 1))
    optimizer = build_optimizer(
        model,
        OptimConfig(kind=kind, lr=0.05, cnn_lr=0.05, lookahead=LookaheadConfig(alpha=0.5, steps=5)),
    )
    return model, optimizer


def train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: range) -> None:
    for step in steps:
        generator = torch.Generator().manual_seed(step)
        x = torch.randn(16, 4, generator=generator)
        y = torch.randn(16, 1, generator=generator)
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_state_dict_round_trip_continues_identically(kind: Literal["sgd", "adamw"]) -> None:
    model, optimizer = make_run(kind)
    train(model, optimizer, range(7))  # mid-cycle: counter 2, slow weights != fast weights
    assert isinstance(optimizer, Lookahead) and optimizer.counter == 2

    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    state = saved["optimizer"]
    assert state["lookahead"]["counter"] == 2
    assert all("lookahead_slow" in entry for entry in state["state"].values())
    assert not any("lookahead_slow" in s for s in optimizer.base.state.values())

    resumed, resumed_optimizer = make_run(kind, seed=1)  # different initial weights
    resumed.load_state_dict(saved["model"])
    resumed_optimizer.load_state_dict(saved["optimizer"])

    train(model, optimizer, range(7, 20))
    train(resumed, resumed_optimizer, range(7, 20))
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    assert resumed_optimizer.state_dict()["lookahead"] == optimizer.state_dict()["lookahead"]


def test_lookahead_refuses_a_state_dict_without_lookahead() -> None:
    model, optimizer = make_run("sgd")
    assert isinstance(optimizer, Lookahead)
    with pytest.raises(ValueError, match="lookahead"):
        optimizer.load_state_dict(optimizer.base.state_dict())


def test_lookahead_under_grad_scaler_skips_inf_steps() -> None:
    model, optimizer = make_run("sgd")
    assert isinstance(optimizer, Lookahead)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.zero_grad()
    loss = model(torch.full((2, 4), float("inf"))).sum()
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    assert optimizer.counter == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    optimizer.zero_grad()
    scaler.scale(model(torch.ones(2, 4)).sum()).backward()
    scaler.unscale_(optimizer)
    clip_grad_norm(model.parameters(), 1.0)
    scaler.step(optimizer)
    scaler.update()
    assert optimizer.counter == 1


def test_trainer_style_lr_updates_reach_the_base_optimizer() -> None:
    model, optimizer = make_run("sgd")
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * 0.5
    assert isinstance(optimizer, Lookahead)
    assert all(g["lr"] == 0.025 for g in optimizer.base.param_groups)


# ---------------------------------------------------------------------------------------------
# Gradient clipping
# ---------------------------------------------------------------------------------------------


def test_clip_grad_norm_scales_to_max_norm_and_returns_the_norm() -> None:
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    a.grad, b.grad = torch.tensor([3.0]), torch.tensor([4.0])
    norm = clip_grad_norm([a, b], None)
    assert norm.item() == pytest.approx(5.0)
    assert a.grad.item() == 3.0  # measured only
    norm = clip_grad_norm([a, b], 1.0)
    assert norm.item() == pytest.approx(5.0)
    assert a.grad.item() == pytest.approx(0.6, rel=1e-5)
    assert b.grad.item() == pytest.approx(0.8, rel=1e-5)
    norm = clip_grad_norm([a, b], 10.0)  # below the limit: unchanged
    assert a.grad.item() == pytest.approx(0.6, rel=1e-5)
    assert clip_grad_norm([nn.Parameter(torch.zeros(1))], 1.0).item() == 0.0


def test_lookahead_bounds_and_the_papers_defaults() -> None:
    param = nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\], got 0.0"):
        Lookahead(torch.optim.SGD([param], lr=1.0), alpha=0.0)
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\], got 1.01"):
        Lookahead(torch.optim.SGD([param], lr=1.0), alpha=1.01)
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\], got -0.5"):
        Lookahead(torch.optim.SGD([param], lr=1.0), alpha=-0.5)
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        Lookahead(torch.optim.SGD([param], lr=1.0), steps=0)
    # Zhang et al.'s defaults: k = 5, alpha = 0.5; the counter starts at 0.
    default = Lookahead(torch.optim.SGD([param], lr=1.0))
    assert default.state_dict()["lookahead"] == {"counter": 0, "alpha": 0.5, "steps": 5}
    # alpha = 1 and k = 1 (both allowed): the slow weights jump to the fast ones after every
    # step, which is the base optimiser alone. By hand: w -= 1.0 * grad, grad = 1.
    plain = Lookahead(torch.optim.SGD([param], lr=1.0), alpha=1.0, steps=1)
    for expected in (-1.0, -2.0, -3.0):
        param.grad = torch.ones(2)
        plain.step()
        assert param.tolist() == [expected, expected]
    assert plain.counter == 0


def test_lookahead_state_without_base_state_and_zero_grad() -> None:
    # Plain SGD keeps no per-parameter state: the slow weights alone travel in the state dict.
    param = nn.Parameter(torch.tensor([4.0]))
    optimizer = Lookahead(torch.optim.SGD([param], lr=1.0), alpha=0.5, steps=2)
    param.grad = torch.ones(1)
    optimizer.step()  # fast 3, slow 4, counter 1
    state = optimizer.state_dict()
    assert state["state"][0]["lookahead_slow"].tolist() == [4.0]
    assert state["lookahead"]["counter"] == 1
    optimizer.zero_grad()
    assert param.grad is None
    param.grad = torch.ones(1)
    optimizer.zero_grad(set_to_none=False)
    assert param.grad is not None and param.grad.tolist() == [0.0]
    # Loaded into a fresh optimiser over another tensor: the next step syncs with slow = 4.
    other = nn.Parameter(torch.tensor([3.0]))
    resumed = Lookahead(torch.optim.SGD([other], lr=1.0), alpha=0.1, steps=7)
    resumed.load_state_dict(state)
    assert (resumed.alpha, resumed.steps, resumed.counter) == (0.5, 2, 1)
    other.grad = torch.ones(1)
    resumed.step()  # fast 2; slow 4 + 0.5 * (2 - 4) = 3
    assert other.tolist() == [3.0]


def test_optimizer_kind_parsed_at_run_time() -> None:
    # A kind read from a config file is a new string object equal to the literal.
    model = nn.Linear(2, 2)
    for kind, expected in (("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)):
        cfg = OptimConfig(kind=json.loads(f'"{kind}"'), lookahead=LookaheadConfig(enabled=False))
        assert type(build_optimizer(model, cfg)) is expected, kind
    # A kind the config parser would have refused is named, never built as another kind
    # ("adam" sorts before "adamw", "sgdx" and "zzz" after "sgd").
    for unknown in ("adam", "sgdx", "zzz"):
        cfg = OptimConfig(lookahead=LookaheadConfig(enabled=False))
        cfg.kind = unknown  # type: ignore[assignment]
        with pytest.raises(ValueError, match=f"optim.kind '{unknown}' is not one of sgd, adamw"):
            build_optimizer(model, cfg)


def test_no_decay_kind_comes_from_the_owning_module_only() -> None:
    # An embedding subclass holding a projection: the projection's weight is owned by a Linear
    # (decayed), only the table itself is an embedding's.
    class EmbeddingWithProjection(nn.Embedding):
        def __init__(self) -> None:
            super().__init__(10, 4)
            self.project = nn.Linear(4, 4)

    model = EmbeddingWithProjection()
    groups = groups_by_name(
        build_optimizer(model, OptimConfig(lookahead=LookaheadConfig(enabled=False)))
    )
    assert names_in(model, groups["other"]) == {"project.weight"}
    assert names_in(model, groups["other_no_decay"]) == {"weight", "project.bias"}
