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


#: The original's ``hubconf.py`` (v1.4), typed here: the backbone of its best model.
ORIGINAL_R50_URL = (
    "https://www.dropbox.com/s/pxgjxcva7oypf12/backbone_bicaptioning_R_50_L1_H2048.pth?dl=1"
)


def test_hub_resnet50_is_the_original_one_liner_returning_the_grid(tmp_path: Path) -> None:
    import inspect

    from virtex_models import hub

    signature = inspect.signature(hub.resnet50)
    assert signature.parameters["pretrained"].default is False
    assert signature.parameters["url"].default == ORIGINAL_R50_URL
    # The published file: a torchvision ResNet-50 state dict without fc (fc was an identity).
    torch.manual_seed(0)
    reference = torchvision.models.resnet50(weights=None)
    with torch.no_grad():
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):  # non-trivial statistics
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    served = tmp_path / "served"
    served.mkdir()
    torch.save(state, served / "backbone_bicaptioning_R_50_L1_H2048.pth")
    with serve(served) as (url, requests):
        weights = f"{url}/backbone_bicaptioning_R_50_L1_H2048.pth?dl=1"
        model = torch.hub.load(
            str(REPO),
            "resnet50",
            source="local",
            pretrained=True,
            url=weights,
            cache_dir=str(tmp_path / "cache"),
        )
    assert requests == ["/backbone_bicaptioning_R_50_L1_H2048.pth?dl=1"]
    assert isinstance(model, torchvision.models.ResNet)
    assert isinstance(model.avgpool, torch.nn.Identity) and isinstance(model.fc, torch.nn.Identity)
    images = torch.randn(2, 3, 224, 224)
    model.eval()
    reference.eval()
    with torch.no_grad():
        grid = model(images)
        # torchvision's own modules, run in order up to layer4.
        x = reference.maxpool(reference.relu(reference.bn1(reference.conv1(images))))
        for stage in (reference.layer1, reference.layer2, reference.layer3, reference.layer4):
            x = stage(x)
    assert grid.shape == (2, 2048, 7, 7)
    torch.testing.assert_close(grid, x)
    random_init = torch.hub.load(str(REPO), "resnet50", source="local")
    assert isinstance(random_init, torchvision.models.ResNet)


def test_checksum_mismatch_leaves_no_file(checkpoint: tuple, tmp_path: Path) -> None:
    path, _ = checkpoint
    with serve(path.parent) as (url, _), pytest.raises(ValueError, match="does not match"):
        fetch(f"{url}/{path.name}", sha256="0" * 64, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="does not match"):
        fetch(path, sha256="0" * 64)
    with pytest.raises(FileNotFoundError, match="no weights file"):
        fetch(tmp_path / "absent.pt")


#: The original's ``virtex/model_zoo/model_zoo.py`` at v1.4 (``CONFIG_PATH_TO_DB_ID``), typed
#: here from that file: config path -> Dropbox id. URL: https://www.dropbox.com/s/<id>/<stem>.pth?dl=1
ORIGINAL_ZOO = {
    "task_ablations/bicaptioning_R_50_L1_H2048.yaml": "mbeeso8wyieq8wy",
    "task_ablations/captioning_R_50_L1_H2048.yaml": "r6zen9k43m5oo58",
    "task_ablations/token_classification_R_50.yaml": "o4p9lki505r0mef",
    "task_ablations/multilabel_classification_R_50.yaml": "hbspp3jv3u8h3bc",
    "task_ablations/masked_lm_R_50_L1_H2048.yaml": "ldzrk6vem4mg6bl",
    "width_ablations/bicaptioning_R_50_L1_H512.yaml": "o9fr69jjqfn8a65",
    "width_ablations/bicaptioning_R_50_L1_H768.yaml": "1zxglqrrbfufv9d",
    "width_ablations/bicaptioning_R_50_L1_H1024.yaml": "pdat4tvhnqxel64",
    "width_ablations/bicaptioning_R_50_L1_H2048.yaml": "mbeeso8wyieq8wy",
    "depth_ablations/bicaptioning_R_50_L1_H1024.yaml": "pdat4tvhnqxel64",
    "depth_ablations/bicaptioning_R_50_L2_H1024.yaml": "ft1vtt4okirzjgo",
    "depth_ablations/bicaptioning_R_50_L3_H1024.yaml": "5ldo1rcsnrshmjr",
    "depth_ablations/bicaptioning_R_50_L4_H1024.yaml": "zgiit2wcluuq3xh",
    "backbone_ablations/bicaptioning_R_50_L1_H1024.yaml": "pdat4tvhnqxel64",
    "backbone_ablations/bicaptioning_R_50W2X_L1_H1024.yaml": "5o198ux709r6376",
    "backbone_ablations/bicaptioning_R_101_L1_H1024.yaml": "bb74jubt68cpn80",
}


def test_zoo_manifest_is_the_original_v1_zoo() -> None:
    assert len(zoo.MANIFEST) == 16
    expected = {
        path.removesuffix(".yaml"): "https://www.dropbox.com/s/"
        f"{dropbox_id}/{path.split('/')[1].replace('.yaml', '.pth')}?dl=1"
        for path, dropbox_id in ORIGINAL_ZOO.items()
    }
    assert {name: entry.url for name, entry in zoo.MANIFEST.items()} == expected
    for name, entry in zoo.MANIFEST.items():
        assert entry.original_config == f"{name}.yaml"
        assert entry.sha256 is None  # the original publishes no digests


@pytest.mark.parametrize(
    ("name", "kind", "visual", "layers", "width"),
    [
        ("task_ablations/bicaptioning_R_50_L1_H2048", "bicaptioning", "resnet50", 1, 2048),
        ("task_ablations/captioning_R_50_L1_H2048", "captioning", "resnet50", 1, 2048),
        ("task_ablations/masked_lm_R_50_L1_H2048", "masked_lm", "resnet50", 1, 2048),
        ("task_ablations/token_classification_R_50", "token_classification", "resnet50", 0, 0),
        ("task_ablations/multilabel_classification_R_50", "multilabel_classification",
         "resnet50", 0, 0),
        ("width_ablations/bicaptioning_R_50_L1_H512", "bicaptioning", "resnet50", 1, 512),
        ("width_ablations/bicaptioning_R_50_L1_H768", "bicaptioning", "resnet50", 1, 768),
        ("depth_ablations/bicaptioning_R_50_L4_H1024", "bicaptioning", "resnet50", 4, 1024),
        ("backbone_ablations/bicaptioning_R_50W2X_L1_H1024", "bicaptioning", "wide_resnet50_2",
         1, 1024),
        ("backbone_ablations/bicaptioning_R_101_L1_H1024", "bicaptioning", "resnet101", 1, 1024),
    ],
)  # fmt: skip
def test_zoo_entry_architecture_matches_its_name(
    name: str, kind: str, visual: str, layers: int, width: int
) -> None:
    spec = zoo.MANIFEST[name].spec()
    config = spec.config
    assert config.kind == kind and config.visual.name == visual
    assert spec.vocab == VocabSpec.legacy(10000)
    if layers:
        t = config.textual
        assert (t.layers, t.width, t.heads, t.ffn) == (layers, width, width // 64, 4 * width)
        assert t.norm_first is False
    if kind in ("bicaptioning", "captioning"):
        assert config.decoder.mode == "legacy" and config.decoder.beam_size == 5


def test_download_cache_is_keyed_by_the_whole_url(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (first / "w.pth").write_bytes(b"first")
    (second / "w.pth").write_bytes(b"second")
    cache = tmp_path / "cache"
    with serve(tmp_path) as (url, requests):
        one = fetch(f"{url}/a/w.pth", cache_dir=cache, progress=False)
        two = fetch(f"{url}/b/w.pth", cache_dir=cache, progress=False)
        again = fetch(f"{url}/a/w.pth", cache_dir=cache, progress=False)
    assert one != two and one == again
    assert (one.read_bytes(), two.read_bytes()) == (b"first", b"second")
    assert requests == ["/a/w.pth", "/b/w.pth"]
    assert one.name.endswith("-w.pth") and two.name.endswith("-w.pth")


def test_june_2020_checkpoints_are_refused_by_name(tmp_path: Path) -> None:
    from virtex_models.legacy import convert_state_dict

    for key in ("textual.encoder.layers.0.linear1.weight", "visual_projection.weight"):
        with pytest.raises(ValueError, match=r"June-2020 \(VirTex v0\.9\).*v1\.x"):
            convert_state_dict({"visual.cnn.conv1.weight": torch.zeros(1), key: torch.zeros(1)})


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
    assert [p.name.endswith("-abc.pth") for p in cache.iterdir()] == [True]


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
