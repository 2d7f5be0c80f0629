"""VocabSpec, ModelConfig round trips and strictness, and the builders of every kind."""

from __future__ import annotations

import json

import pytest
import torch

from virtex_models import (
    Captioning,
    MaskedLM,
    ModelConfig,
    MultilabelClassification,
    Objective,
    TextualConfig,
    TimmBackbone,
    TokenClassification,
    TorchvisionBackbone,
    VisualBackbone,
    VisualConfig,
    VocabSpec,
)
from virtex_models.visual import timm_available

VOCAB = VocabSpec(size=40, pad=0, unk=1, sos=2, eos=3, mask=4)
TINY = {
    "visual": {"name": "resnet18"},
    "textual": {"layers": 1, "width": 32, "heads": 2, "ffn": 64, "max_length": 10},
}


def test_vocab_spec_validates_ids() -> None:
    assert VocabSpec.legacy().pad_is_unk
    assert not VOCAB.pad_is_unk
    with pytest.raises(ValueError, match="eos=40 is outside"):
        VocabSpec(size=40, pad=0, unk=1, sos=2, eos=40, mask=4)
    with pytest.raises(ValueError, match="must differ"):
        VocabSpec(size=40, pad=0, unk=1, sos=2, eos=2, mask=4)
    with pytest.raises(ValueError, match="size must be an int"):
        VocabSpec(size="40", pad=0, unk=1, sos=2, eos=3, mask=4)  # type: ignore[arg-type]


def test_model_config_round_trips_through_json() -> None:
    config = ModelConfig.from_dict(
        {
            "kind": "captioning",
            "visual": {"name": "resnet101", "frozen": True, "channels_last": True},
            "textual": {"layers": 2, "width": 512, "heads": 8, "ffn": 2048, "norm_first": True},
            "decoder": {"mode": "nucleus", "top_p": 0.8},
        }
    )
    again = ModelConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert again.textual.norm_first and again.visual.frozen and again.decoder.top_p == 0.8
    assert ModelConfig.from_dict({}) == ModelConfig()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"textual": {"widht": 3}}, r"unknown key model\.textual\.widht"),
        ({"colour": 1}, r"unknown key model\.colour"),
        ({"kind": "virtex"}, r"model\.kind='virtex' is not one of"),
        ({"textual": {"layers": "2"}}, r"model\.textual\.layers must be an int"),
        ({"visual": {"frozen": 1}}, r"model\.visual\.frozen must be true/false"),
        ({"textual": {"width": 30, "heads": 4}}, r"model\.textual: .*not divisible"),
        ({"visual": []}, r"model\.visual must be a mapping"),
    ],
)
def test_model_config_errors_name_the_key(data: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_dict(data)


@pytest.mark.parametrize(
    ("kind", "cls"),
    [
        ("bicaptioning", Captioning),
        ("captioning", Captioning),
        ("masked_lm", MaskedLM),
        ("token_classification", TokenClassification),
        ("multilabel_classification", MultilabelClassification),
    ],
)
def test_build_returns_each_objective(kind: str, cls: type) -> None:
    model = ModelConfig.from_dict({**TINY, "kind": kind}).build(VOCAB, num_classes=7)
    assert isinstance(model, cls)
    assert isinstance(model, Objective)
    assert isinstance(model.visual, TorchvisionBackbone)
    if kind.endswith("captioning"):
        assert isinstance(model, Captioning)
        assert (model.backward_textual is not None) == (kind == "bicaptioning")


def test_multilabel_needs_num_classes() -> None:
    with pytest.raises(ValueError, match="needs num_classes"):
        ModelConfig(kind="multilabel_classification").build(VOCAB)


@pytest.mark.parametrize("name", ["resnet18", "resnet101", "wide_resnet50_2"])
def test_torchvision_backbones_return_last_grid(name: str) -> None:
    backbone = VisualConfig(name=name).build()
    assert isinstance(backbone, VisualBackbone)
    channels = 512 if name == "resnet18" else 2048
    assert backbone.out_channels == channels
    with torch.no_grad():
        assert backbone.eval()(torch.randn(1, 3, 64, 64)).shape == (1, channels, 2, 2)


@pytest.mark.parametrize(("name", "last_norm"), [("resnet18", "bn2"), ("resnet50", "bn3")])
def test_zero_init_residual_is_the_default(name: str, last_norm: str) -> None:
    """Every residual branch's last BatchNorm starts at zero (the original pretraining runs'
    ``zero_init_residual=True``); the other BatchNorms start at one; off on request."""
    assert VisualConfig().zero_init_residual is True
    for zero in (True, False):
        backbone = VisualConfig(name=name, zero_init_residual=zero).build()
        blocks = [b for stage in range(1, 5) for b in getattr(backbone, f"layer{stage}")]
        assert len(blocks) == (8 if name == "resnet18" else 16)
        for block in blocks:
            weight = getattr(block, last_norm).weight
            assert bool((weight == 0).all()) is zero
            assert bool((block.bn1.weight == 1).all())
        assert bool((backbone.bn1.weight == 1).all())


def test_parameter_count_equals_the_original() -> None:
    """R-50 + L1 H1024 bicaptioning over the original's 10k vocabulary: 69,482,320 parameters
    in the original code (counted there, tied weights once)."""
    config = {"kind": "bicaptioning", "textual": {"width": 1024, "heads": 16, "ffn": 4096}}
    for zero in (True, False):
        with torch.device("meta"):
            model = ModelConfig.from_dict({**config, "visual": {"zero_init_residual": zero}}).build(
                VocabSpec.legacy(10000)
            )
        assert sum(p.numel() for p in model.parameters()) == 69_482_320


def test_channels_last_backbone_computes_the_same_grid() -> None:
    torch.manual_seed(0)
    plain = TorchvisionBackbone("resnet18").eval()
    fast = TorchvisionBackbone("resnet18", channels_last=True).eval()
    fast.load_state_dict(plain.state_dict())
    assert fast.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fast(images), plain(images), atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not timm_available(), reason="timm not installed")
def test_timm_backbone_and_frozen() -> None:
    backbone = VisualConfig(kind="timm", name="resnet18", frozen=True).build()
    assert isinstance(backbone, TimmBackbone) and isinstance(backbone, VisualBackbone)
    assert backbone.out_channels == 512 and backbone.stride == 32
    backbone.train()
    assert not backbone.training
    assert not any(p.requires_grad for p in backbone.parameters())
    with torch.no_grad():
        assert backbone(torch.randn(1, 3, 64, 64)).shape == (1, 512, 2, 2)
    with pytest.raises(ValueError, match="timm has no model named"):
        TimmBackbone("no_such_net")


def test_textual_config_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="layers must be positive"):
        TextualConfig(layers=0)
