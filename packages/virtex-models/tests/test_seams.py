"""The model-side seams: Protocols and their first concrete implementations."""

from __future__ import annotations

import pytest
import torch

import virtex_models
from virtex_models import DecodeState, ObjectiveOutput, TorchvisionBackbone, VisualBackbone


def test_version_is_semver_start() -> None:
    assert virtex_models.__version__ == "0.1.0"


@pytest.mark.parametrize(("name", "channels"), [("resnet18", 512), ("resnet50", 2048)])
def test_torchvision_backbone_conforms_and_returns_last_grid(name: str, channels: int) -> None:
    backbone = TorchvisionBackbone(name)
    assert isinstance(backbone, VisualBackbone)
    assert backbone.out_channels == channels
    with torch.no_grad():
        grid = backbone.eval()(torch.randn(1, 3, 64, 96))
    assert grid.shape == (1, channels, 64 // backbone.stride, 96 // backbone.stride)


def test_unknown_backbone_name_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no model named 'resnet5'"):
        TorchvisionBackbone("resnet5")


def test_frozen_backbone_stays_in_eval_mode() -> None:
    backbone = TorchvisionBackbone("resnet18", frozen=True)
    backbone.train()
    assert not backbone.training
    assert not any(p.requires_grad for p in backbone.parameters())


def test_decode_state_select_reorders_hypotheses_and_keeps_per_image_tensors() -> None:
    memory = torch.arange(2.0).view(2, 1, 1)  # two images
    state = DecodeState(memory=memory, cache={"k": torch.arange(4)}, beams=2, shared={"m": memory})
    picked = state.select(torch.tensor([1, 1, 2, 3]))
    assert picked.cache["k"].tolist() == [1, 1, 2, 3]
    assert picked.memory is memory and picked.shared["m"] is memory
    assert picked.beams == 2 and picked.hypotheses == 4
    expanded = DecodeState(memory=memory, cache={"k": torch.arange(2)}).select(
        torch.tensor([0, 0, 0, 1, 1, 1])
    )
    assert expanded.beams == 3 and expanded.cache["k"].tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="rows must be"):
        state.select(torch.tensor([0, 1, 2]))
    restarted = picked.restart(beams=5)
    assert restarted.cache == {} and restarted.length == 0 and restarted.beams == 5


def test_objective_output_defaults() -> None:
    output = ObjectiveOutput(loss=torch.tensor(1.0))
    assert output.components == {} and output.logits is None
