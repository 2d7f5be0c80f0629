"""``optim.fused``: the auto decision, and fused steps equal to the unfused ones.

PyTorch has fused SGD/AdamW kernels on CPU too (torch >= 2.4), so the equality is checked here
on CPU: the fused step is another implementation of the same update, compared against
PyTorch's per-tensor loop (``foreach=False``) over several steps, with Lookahead on top.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from virtex_train.config import load_config
from virtex_train.optim import Lookahead, LookaheadConfig, OptimConfig, build_optimizer, use_fused


class Tiny(nn.Module):
    """Every parameter kind of the real groups: visual, decayed, norms, biases, embeddings."""

    def __init__(self) -> None:
        super().__init__()
        self.visual = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.embedding = nn.Embedding(11, 6)
        self.linear = nn.Linear(6, 5)
        self.norm = nn.LayerNorm(5)


def fake(device: str, dtype: torch.dtype = torch.float32) -> Any:
    return SimpleNamespace(device=torch.device(device), dtype=dtype)


def test_auto_fuses_only_when_every_parameter_is_a_cuda_float_tensor() -> None:
    assert use_fused([fake("cuda"), fake("cuda", torch.bfloat16)], None)
    assert not use_fused([fake("cpu")], None)
    assert not use_fused([fake("cuda"), fake("cpu")], None)
    assert not use_fused([fake("cuda"), fake("cuda", torch.complex64)], None)
    assert not use_fused([], None)
    assert not use_fused([fake("cuda")], False)
    assert use_fused([fake("cpu")], True)  # PyTorch has fused CPU kernels


def test_forced_fused_refuses_mixed_devices_with_a_one_line_error() -> None:
    with pytest.raises(ValueError, match=r"^optim\.fused=true: .*devices \['cpu', 'cuda'\]"):
        use_fused([fake("cuda"), fake("cpu")], True)


def test_build_optimizer_passes_the_decision_and_lookahead_wraps_it() -> None:
    model = Tiny()
    auto = build_optimizer(model, OptimConfig(kind="adamw"))
    assert not auto.param_groups[0]["fused"]  # CPU parameters: auto leaves them unfused
    forced = build_optimizer(
        model, OptimConfig(kind="sgd", fused=True, lookahead=LookaheadConfig(enabled=True))
    )
    assert isinstance(forced, Lookahead) and forced.base.param_groups[0]["fused"] is True


def test_config_key_parses_null_true_false() -> None:
    assert OptimConfig().fused is None  # auto by default
    assert load_config(None).optim.fused is True  # the quickstart asks for it, on CPU too
    assert load_config(None, ["optim.fused=null"]).optim.fused is None
    assert load_config(None, ["optim.fused=true"]).optim.fused is True
    assert load_config(None, ["optim.fused=false"]).optim.fused is False


def _run(cfg: OptimConfig, dtype: torch.dtype, steps: int) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = Tiny().to(dtype)
    optimizer = build_optimizer(model, cfg)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for param in model.parameters():
            param.grad = torch.randn(param.shape, generator=generator).to(dtype)
        optimizer.step()
    return [p.detach().float() for p in model.parameters()]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "options",
    [
        {"kind": "sgd", "cnn_lr": 0.2, "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-2},
        {"kind": "sgd", "cnn_lr": 0.2, "lr": 0.1, "momentum": 0.9, "nesterov": True},
        {"kind": "adamw", "cnn_lr": 1e-2, "lr": 3e-3, "weight_decay": 0.05},
    ],
    ids=["sgd", "sgd-nesterov", "adamw"],
)
def test_fused_steps_equal_unfused_steps_with_lookahead(
    options: dict[str, Any], dtype: torch.dtype
) -> None:
    steps = 7  # crosses a Lookahead synchronisation (every 3 steps) twice
    lookahead = LookaheadConfig(enabled=True, alpha=0.5, steps=3)
    fused = _run(OptimConfig(**options, lookahead=lookahead, fused=True), dtype, steps)
    plain = _run(OptimConfig(**options, lookahead=lookahead, fused=False), dtype, steps)
    before = _run(OptimConfig(**options, lookahead=lookahead, fused=False), dtype, 0)
    # Same update, other order of floating-point operations: a few roundings of the parameter's
    # dtype per step (eps = 2^-23 fp32, 2^-7 bf16), relative to the parameter's size.
    eps = torch.finfo(dtype).eps
    for a, b, start in zip(fused, plain, before, strict=True):
        assert not torch.equal(b, start)  # the steps did move the weights
        torch.testing.assert_close(a, b, rtol=4 * steps * eps, atol=4 * steps * eps)
