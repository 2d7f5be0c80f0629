"""--weights: our checkpoints, original VirTex checkpoints, torchvision state dicts, random."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from virtex_eval.weights import file_sha256, load_backbone, parse_weights
from virtex_models import ModelConfig, VocabSpec
from virtex_models.pretrained import ModelSpec, checkpoint_dict

IMAGES = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _spec(vocab: VocabSpec) -> ModelSpec:
    config = ModelConfig.from_dict(
        {
            "kind": "bicaptioning",
            "visual": {"name": "resnet18"},
            "textual": {"layers": 1, "width": 32, "heads": 2, "ffn": 64, "max_length": 30},
        }
    )
    return ModelSpec(config=config, vocab=vocab)


def _features(backbone: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return backbone.eval()(IMAGES)


def test_our_checkpoint_gives_its_visual_backbone(tmp_path: Path) -> None:
    torch.manual_seed(1)
    spec = _spec(VocabSpec(size=40, pad=0, unk=1, sos=2, eos=3, mask=4))
    model = spec.build().eval()
    path = tmp_path / "final.pt"
    torch.save({**checkpoint_dict(model, spec), "tokenizer": "{}"}, path)
    loaded = load_backbone(str(path))
    assert loaded.out_channels == 512
    assert torch.equal(_features(loaded.backbone), _features(model.visual))
    assert loaded.identity == f"checkpoint:{file_sha256(path)}"


def test_original_checkpoint_through_the_legacy_loader(tmp_path: Path) -> None:
    torch.manual_seed(2)
    spec = _spec(VocabSpec(size=40, pad=0, unk=0, sos=1, eos=2, mask=3))
    model = spec.build().eval()
    # The original's names: visual.cnn.<torchvision names>, heads unchanged, fc kept.
    state = {}
    for key, value in model.state_dict().items():
        state[key.replace("visual.", "visual.cnn.", 1) if key.startswith("visual.") else key] = (
            value
        )
    state["visual.cnn.fc.weight"] = torch.zeros(1000, 512)
    path, config = tmp_path / "bicaptioning.pth", tmp_path / "bicaptioning.yaml"
    torch.save({"model": state, "iteration": 5}, path)
    config.write_text(
        "DATA:\n  VOCAB_SIZE: 40\nMODEL:\n  NAME: virtex\n"
        "  VISUAL:\n    NAME: torchvision::resnet18\n"
        "  TEXTUAL:\n    NAME: transdec_postnorm::L1_H32_A2_F64\n"
    )
    loaded = load_backbone(f"original:{path},{config}")
    assert torch.equal(_features(loaded.backbone), _features(model.visual))
    assert loaded.identity.startswith("original:") and file_sha256(config) in loaded.identity


def test_torchvision_state_dict_formats(tmp_path: Path) -> None:
    torch.manual_seed(3)
    reference = torchvision.models.resnet18(weights=None).eval()
    expected = torch.nn.Sequential(*list(reference.children())[:-2]).eval()
    plain, wrapped = tmp_path / "plain.pth", tmp_path / "wrapped.pth.tar"
    torch.save(reference.state_dict(), plain)
    # The PyTorch ImageNet example: {"state_dict": DataParallel names, "epoch": ...}.
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}, "epoch": 90},
        wrapped,
    )
    for path in (plain, wrapped):
        loaded = load_backbone(f"torchvision:{path},resnet18")
        assert torch.allclose(_features(loaded.backbone), _features(expected), atol=1e-6)
    assert parse_weights(f"torchvision:{plain}").arch == "resnet50"


def test_random_weights_are_seeded_and_named() -> None:
    first, second = load_backbone("random:resnet18"), load_backbone("random:resnet18")
    assert first.identity == "random:resnet18:seed0"
    assert torch.equal(_features(first.backbone), _features(second.backbone))
    assert parse_weights("random").arch == "resnet50"


def test_checkpoint_of_another_kind_is_named_with_a_hint(tmp_path: Path) -> None:
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    with pytest.raises(ValueError, match=r"resnet18\.pth: not a virtex checkpoint.*torchvision:"):
        load_backbone(str(path))
    original = tmp_path / "orig.pth"
    torch.save({"model": {"visual.cnn.conv1.weight": torch.zeros(1)}}, original)
    with pytest.raises(ValueError, match=r"orig\.pth.*original:"):
        load_backbone(str(original))
    with pytest.raises(ValueError, match=r"orig\.pth: this is an original VirTex checkpoint"):
        load_backbone(f"torchvision:{original}")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"junk\.pt: not a PyTorch checkpoint"):
        load_backbone(str(junk))


def test_torchvision_weights_of_the_wrong_architecture_name_the_keys(tmp_path: Path) -> None:
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match=r"r18\.pth \(resnet50\) does not fit.*layer1\.0\.conv3"):
        load_backbone(f"torchvision:{path}")


def test_bad_weights_values() -> None:
    with pytest.raises(FileNotFoundError, match="no such file"):
        parse_weights("missing.pt")
    with pytest.raises(ValueError, match="original:CKPT,CONFIG.yaml"):
        parse_weights("original:only.pth")
    with pytest.raises(ValueError, match="empty"):
        parse_weights(" ")
