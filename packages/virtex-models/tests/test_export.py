"""Exported backbone weights give torchvision's ResNet, and a ResNet read by detectron2's names,
the same features as our backbone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from virtex_models import ModelConfig, TorchvisionBackbone, VocabSpec
from virtex_models.export import (
    backbone_of,
    detectron2_checkpoint,
    detectron2_resnet_options,
    main,
    save_detectron2,
    to_detectron2,
    to_torchvision,
)
from virtex_models.pretrained import ModelSpec, checkpoint_dict

VOCAB = VocabSpec(size=30, pad=0, unk=1, sos=2, eos=3, mask=4)
CONFIG = ModelConfig.from_dict(
    {
        "kind": "bicaptioning",
        "visual": {"name": "resnet18"},
        "textual": {"layers": 1, "width": 32, "heads": 2, "ffn": 64, "max_length": 10},
    }
)


def _objective() -> nn.Module:
    """A tiny objective whose BatchNorm statistics are far from (0, 1), so BN names matter."""
    torch.manual_seed(0)
    model = ModelSpec(config=CONFIG, vocab=VOCAB).build()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def _reference_basic_resnet(weights: dict[str, Tensor], images: Tensor) -> list[Tensor]:
    """A ResNet-18 forward written from detectron2's names and semantics alone:
    ``stem.conv1`` (7x7/2) + norm + ReLU + 3x3/2 max-pool; BasicBlocks with the stride in
    ``conv1`` and a ``shortcut`` 1x1 conv + norm where shapes change."""

    def conv_norm(x: Tensor, name: str, stride: int, padding: int) -> Tensor:
        x = F.conv2d(x, weights[f"{name}.weight"], stride=stride, padding=padding)
        return F.batch_norm(
            x,
            weights[f"{name}.norm.running_mean"],
            weights[f"{name}.norm.running_var"],
            weights[f"{name}.norm.weight"],
            weights[f"{name}.norm.bias"],
            training=False,
            eps=1e-5,
        )

    x = F.relu(conv_norm(images, "stem.conv1", 2, 3))
    x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    outputs = []
    for stage in (2, 3, 4, 5):
        for block in (0, 1):
            name = f"res{stage}.{block}"
            stride = 2 if stage > 2 and block == 0 else 1
            shortcut = (
                conv_norm(x, f"{name}.shortcut", stride, 0)
                if f"{name}.shortcut.weight" in weights
                else x
            )
            y = F.relu(conv_norm(x, f"{name}.conv1", stride, 1))
            y = conv_norm(y, f"{name}.conv2", 1, 1)
            x = F.relu(y + shortcut)
        outputs.append(x)
    return outputs


def test_torchvision_export_loads_into_torchvision_resnet() -> None:
    model = _objective()
    state = to_torchvision(model)
    resnet = torchvision.models.resnet18(weights=None).eval()
    result = resnet.load_state_dict(state, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"]
    assert result.unexpected_keys == []
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        x = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(images))))
        expected = resnet.layer4(resnet.layer3(resnet.layer2(resnet.layer1(x))))
        torch.testing.assert_close(model.visual(images), expected)


def test_detectron2_names_compute_the_same_features(tmp_path: Path) -> None:
    model = _objective()
    path = tmp_path / "ckpt.pt"
    torch.save(checkpoint_dict(model, ModelSpec(config=CONFIG, vocab=VOCAB)), path)
    weights = to_detectron2(path)  # from the file: load_objective + export
    assert not any(key.endswith("num_batches_tracked") for key in weights)
    assert "stem.conv1.norm.running_var" in weights and "res3.0.shortcut.norm.bias" in weights
    assert "res2.0.shortcut.weight" not in weights  # ResNet-18's res2 keeps its shape
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = model.visual.forward_stages(images)
        reference = _reference_basic_resnet(weights, images)
    for got, want in zip(reference, ours, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_bottleneck_names_cover_every_weight() -> None:
    backbone = TorchvisionBackbone("resnet50")
    weights = to_detectron2(backbone)
    tensors = [k for k in backbone.state_dict() if not k.endswith("num_batches_tracked")]
    assert len(weights) == len(tensors)
    blocks = {"res2": 3, "res3": 4, "res4": 6, "res5": 3}
    for stage, count in blocks.items():
        assert f"{stage}.0.shortcut.weight" in weights
        assert f"{stage}.1.shortcut.weight" not in weights
        assert f"{stage}.{count - 1}.conv3.norm.running_mean" in weights
        assert f"{stage}.{count}.conv1.weight" not in weights
    # torchvision's Bottleneck strides in the 3x3 conv2 (hence STRIDE_IN_1X1=False).
    assert weights["res3.0.conv2.weight"].shape == (128, 128, 3, 3)
    options = detectron2_resnet_options(backbone)
    assert options["MODEL.RESNETS.STRIDE_IN_1X1"] is False
    assert options["MODEL.RESNETS.DEPTH"] == 50
    assert options["MODEL.RESNETS.RES2_OUT_CHANNELS"] == 256
    assert detectron2_resnet_options("resnext50_32x4d")["MODEL.RESNETS.NUM_GROUPS"] == 32


def test_saved_detectron2_file_is_weights_only_and_cli_writes_it(tmp_path: Path) -> None:
    model = _objective()
    ckpt = tmp_path / "final.pt"
    torch.save(checkpoint_dict(model, ModelSpec(config=CONFIG, vocab=VOCAB)), ckpt)
    out = tmp_path / "d2" / "backbone.pth"
    assert main([str(ckpt), str(out)]) == 0
    loaded = torch.load(out, weights_only=True)
    assert loaded["matching_heuristics"] is True and loaded["__author__"] == "virtex"
    assert loaded["resnet"]["MODEL.RESNETS.DEPTH"] == 18
    expected = detectron2_checkpoint(model)["model"]
    assert loaded["model"].keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(loaded["model"][key], value), key
    tv = tmp_path / "tv.pth"
    assert main([str(ckpt), str(tv), "--format", "torchvision"]) == 0
    assert torch.load(tv, weights_only=True).keys() == to_torchvision(model).keys()
    with pytest.raises(ValueError, match=r"\.pkl"):
        save_detectron2(model, tmp_path / "x.pkl")


def test_non_resnet_backbones_are_refused() -> None:
    with pytest.raises(ValueError, match="torchvision ResNet backbone, got Linear"):
        backbone_of(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="not 'alexnet'"):
        detectron2_resnet_options(_alexnet_like())


def _alexnet_like() -> TorchvisionBackbone:
    backbone = TorchvisionBackbone("resnet18")
    backbone.name = "alexnet"
    return backbone
