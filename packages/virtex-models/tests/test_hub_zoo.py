"""torch.hub entry points and the model zoo, against files served from 127.0.0.1."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import torchvision
from models_testing import serve

from virtex_models import Captioning, ModelConfig, TorchvisionBackbone, VocabSpec, zoo
from virtex_models.download import fetch
from virtex_models.pretrained import ModelSpec, checkpoint_dict

REPO = Path(__file__).resolve().parents[3]
VOCAB = VocabSpec(size=30, pad=0, unk=1, sos=2, eos=3, mask=4)
CONFIG = ModelConfig.from_dict(
    {
        "kind": "bicaptioning",
        "visual": {"name": "resnet18"},
        "textual": {"layers": 1, "width": 32, "heads": 2, "ffn": 64, "max_length": 10},
        "decoder": {"beam_size": 2, "max_steps": 5},
    }
)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    spec = ModelSpec(config=CONFIG, vocab=VOCAB)
    model = spec.build().eval()
    path = tmp_path_factory.mktemp("served") / "virtex_tiny.pt"
    torch.save(checkpoint_dict(model, spec), path)
    return path, model


def test_hub_backbone_and_captioning_from_url(checkpoint: tuple, tmp_path: Path) -> None:
    path, model = checkpoint
    digest = sha256(path)
    images = torch.randn(1, 3, 32, 32)
    with serve(path.parent) as (url, requests):
        weights = f"{url}/{path.name}"
        cnn = torch.hub.load(
            str(REPO),
            "virtex_backbone",
            source="local",
            name="resnet18",
            weights=weights,
            sha256=digest,
            cache_dir=str(tmp_path),
        )
        captioner = torch.hub.load(
            str(REPO),
            "virtex_captioning",
            source="local",
            weights=weights,
            sha256=digest,
            cache_dir=str(tmp_path),
        )
    assert requests == [f"/{path.name}"]  # downloaded once, then served from the cache
    assert isinstance(cnn, TorchvisionBackbone) and not cnn.training
    assert isinstance(captioner, Captioning)
    with torch.no_grad():
        torch.testing.assert_close(cnn(images), model.visual(images))
        assert torch.equal(captioner.generate(images), model.generate(images))


def test_hub_backbone_from_a_torchvision_state_dict(tmp_path: Path) -> None:
    reference = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "tv.pt"
    torch.save(reference.state_dict(), path)
    cnn = torch.hub.load(
        str(REPO), "virtex_backbone", source="local", name="resnet18", weights=str(path)
    )
    original = tmp_path / "original.pth"  # an original VirTex checkpoint: visual.cnn.* keys
    state = {f"visual.cnn.{k}": v for k, v in reference.state_dict().items() if "fc." not in k}
    torch.save({"model": state, "iteration": 3}, original)
    from_original = torch.hub.load(
        str(REPO), "virtex_backbone", source="local", name="resnet18", weights=str(original)
    )
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(from_original(images), cnn(images))
    reference.fc = torch.nn.Identity()
    reference.avgpool = torch.nn.Identity()
    with torch.no_grad():
        torch.testing.assert_close(cnn(images).flatten(1), reference(images))


def test_checksum_mismatch_leaves_no_file(checkpoint: tuple, tmp_path: Path) -> None:
    path, _ = checkpoint
    with serve(path.parent) as (url, _), pytest.raises(ValueError, match="does not match"):
        fetch(f"{url}/{path.name}", sha256="0" * 64, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="does not match"):
        fetch(path, sha256="0" * 64)
    with pytest.raises(FileNotFoundError, match="no weights file"):
        fetch(tmp_path / "absent.pt")


def test_zoo_manifest_covers_the_published_ablations() -> None:
    names = set(zoo.MANIFEST)
    assert "width_ablations/bicaptioning_R_50_L1_H2048" in names
    assert {n.split("/")[0] for n in names} == {
        "task_ablations",
        "width_ablations",
        "depth_ablations",
        "backbone_ablations",
    }
    spec = zoo.MANIFEST["depth_ablations/bicaptioning_R_50_L4_H1024"].spec()
    assert (spec.config.textual.layers, spec.config.textual.width) == (4, 1024)
    assert spec.config.visual.name == "resnet50" and spec.vocab == VocabSpec.legacy(10000)
    wide = zoo.MANIFEST["backbone_ablations/bicaptioning_R_50W2X_L1_H1024"].spec()
    assert wide.config.visual.name == "wide_resnet50_2"
    best = zoo.MANIFEST["width_ablations/bicaptioning_R_50_L1_H2048"].config
    assert (best.kind, best.textual.width, best.textual.heads, best.textual.ffn) == (
        "bicaptioning",
        2048,
        32,
        8192,
    )
    assert best.decoder.mode == "legacy" and best.decoder.beam_size == 5
    assert (
        zoo.MANIFEST["task_ablations/captioning_R_50_L1_H2048"].spec().config.kind == "captioning"
    )
    for entry in zoo.MANIFEST.values():
        assert entry.url.startswith("https://") and entry.original_config.endswith(".yaml")
        entry.spec()  # every entry parses


def test_zoo_downloads_verifies_and_converts(tmp_path: Path) -> None:
    # An original-format checkpoint of a tiny bicaptioning model: our state dict renamed back.
    legacy_vocab = VocabSpec.legacy(size=40)
    config = ModelConfig.from_dict(
        {
            "kind": "bicaptioning",
            "visual": {"name": "resnet18"},
            "textual": {"layers": 1, "width": 32, "heads": 2, "ffn": 64, "max_length": 30},
        }
    )
    torch.manual_seed(0)
    ours = config.build(legacy_vocab).eval()
    original_state = {
        ("visual.cnn." + k[len("visual.") :] if k.startswith("visual.") else k): v
        for k, v in ours.state_dict().items()
    }
    served = tmp_path / "served"
    served.mkdir()
    torch.save({"model": original_state, "iteration": 1}, served / "abc.pth")
    with serve(served) as (url, requests):
        entry = zoo.ZooEntry(
            "tiny/bicaptioning_R_18_L1_H32",
            "tiny/bicaptioning_R_18_L1_H32.yaml",
            f"{url}/abc.pth",
            "virtex",
            "torchvision::resnet18",
            "transdec_postnorm::L1_H32_A2_F64",
            sha256=sha256(served / "abc.pth"),
        )
        manifest = {entry.name: entry}
        cache = tmp_path / "cache"
        # The zoo's vocabulary has 10000 ids, this file 40: converted, then refused by shape.
        for _ in range(2):
            with pytest.raises(ValueError, match=r"shape mismatch: .*embedding\.words\.weight"):
                zoo.load(entry.name, cache_dir=cache, manifest=manifest)
        assert requests == ["/abc.pth"]  # the second load read the verified cache
        with pytest.raises(KeyError, match="no zoo entry"):
            zoo.load("nope", manifest=manifest)
    assert (cache / "tiny__bicaptioning_R_18_L1_H32.pth").is_file()


def test_zoo_load_returns_the_converted_objective(tmp_path: Path) -> None:
    legacy_vocab = VocabSpec.legacy(size=10000)
    config = ModelConfig.from_dict(
        {
            "kind": "captioning",
            "visual": {"name": "resnet18"},
            "textual": {"layers": 1, "width": 16, "heads": 2, "ffn": 32, "max_length": 30},
        }
    )
    torch.manual_seed(0)
    ours = config.build(legacy_vocab).eval()
    state = {
        ("visual.cnn." + k[len("visual.") :] if k.startswith("visual.") else k): v
        for k, v in ours.state_dict().items()
    }
    served = tmp_path / "served"
    served.mkdir()
    torch.save({"model": state}, served / "w.pth")
    with serve(served) as (url, _):
        entry = zoo.ZooEntry(
            "tiny/captioning",
            "tiny/captioning.yaml",
            f"{url}/w.pth",
            "captioning",
            "torchvision::resnet18",
            "transdec_postnorm::L1_H16_A2_F32",
        )
        model, spec = zoo.load(
            entry.name,
            cache_dir=tmp_path / "c",
            manifest={entry.name: entry},
            sha256=sha256(served / "w.pth"),
        )
    assert isinstance(model, Captioning) and spec.config.decoder.mode == "legacy"
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.visual(images), ours.visual(images))
        assert torch.equal(model.generate(images), ours.generate(images, mode="legacy"))
