"""detectron2 transfer: exported weights give detectron2 the same features, the VirTex configs
build, and the whole path (export -> fine-tune -> COCO evaluation) runs on the built-in data."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from virtex_eval.detectron2 import compat, detectron2_available
from virtex_eval.detectron2.cli import detectron2_command
from virtex_eval.detectron2.runner import metrics_summary
from virtex_models import ModelConfig, TorchvisionBackbone, VocabSpec
from virtex_models.export import detectron2_resnet_options, save_detectron2
from virtex_models.pretrained import ModelSpec, checkpoint_dict

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "detectron2"
requires_detectron2 = pytest.mark.skipif(
    not detectron2_available(),
    reason="detectron2 is not installed (python -m virtex_eval.detectron2.install)",
)
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _randomise_norms(module: nn.Module) -> nn.Module:
    """BatchNorm statistics far from (0, 1), so that a wrong BN mapping shows."""
    generator = torch.Generator().manual_seed(1)
    for child in module.modules():
        if isinstance(child, nn.BatchNorm2d):
            n = child.num_features
            child.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
            child.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
            child.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            child.bias.data.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)
    return module.eval()


def _d2_resnet(options: dict[str, Any], weights: Path) -> nn.Module:
    compat.apply()
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import build_resnet_backbone

    cfg = get_cfg()
    cfg.merge_from_list([str(x) for item in options.items() for x in item])
    cfg.merge_from_list(
        ["MODEL.BACKBONE.FREEZE_AT", "0", "MODEL.RESNETS.NORM", "BN"]
        + ["MODEL.RESNETS.OUT_FEATURES", "['res2', 'res3', 'res4', 'res5']"]
    )
    backbone = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    DetectionCheckpointer(backbone).load(str(weights))  # detectron2's own loader, from the .pth
    return backbone.eval()


@pytest.mark.detectron2
@requires_detectron2
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_detectron2_resnet_sees_the_same_features(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    ours = _randomise_norms(TorchvisionBackbone(name))
    path = save_detectron2(ours, tmp_path / "backbone.pth")
    options = detectron2_resnet_options(ours)
    theirs = _d2_resnet(options, path)
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected = ours.forward_stages(images)
        got = theirs(images)
        for stage, want in zip(("res2", "res3", "res4", "res5"), expected, strict=True):
            torch.testing.assert_close(got[stage], want, rtol=1e-4, atol=1e-4)
        if name == "resnet50":
            # detectron2's default stride placement loads the same tensors without complaint and
            # computes something else: why the export sets STRIDE_IN_1X1 False.
            wrong = _d2_resnet({**options, "MODEL.RESNETS.STRIDE_IN_1X1": True}, path)
            assert not torch.allclose(wrong(images)["res5"], expected[-1], atol=1e-2)


def _config(file: str, opts: list[str]) -> Any:
    compat.apply()
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(str(CONFIGS / file))
    cfg.merge_from_list(opts + ["MODEL.DEVICE", "cpu"])
    return cfg


@pytest.mark.detectron2
@requires_detectron2
def test_mask_rcnn_config_normalises_rgb_like_our_backbone(tmp_path: Path) -> None:
    compat.apply()
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    ours = _randomise_norms(TorchvisionBackbone("resnet18"))
    path = save_detectron2(ours, tmp_path / "backbone.pth")
    options = [str(x) for item in detectron2_resnet_options(ours).items() for x in item]
    cfg = _config("coco_segm_default_init_2x.yaml", options + ["MODEL.RESNETS.NORM", "BN"])
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(str(path))  # matching heuristics: backbone.bottom_up.*
    image = torch.rand(3, 64, 64)  # RGB in [0, 1]
    with torch.no_grad():
        batched = model.preprocess_image([{"image": image * 255.0}])  # detectron2's 0-255 input
        got = model.backbone.bottom_up(batched.tensor)["res5"]
        expected = ours((image.unsqueeze(0) - MEAN) / STD)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.detectron2
@requires_detectron2
def test_voc_c4_config_builds_extra_norm_head_and_loads_res5(tmp_path: Path) -> None:
    compat.apply()
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from virtex_eval.detectron2.modeling import register_modeling

    register_modeling()
    register_modeling()  # idempotent
    backbone = TorchvisionBackbone("resnet50")
    path = save_detectron2(backbone, tmp_path / "backbone.pth")
    cfg = _config("voc_det_default_init_24k.yaml", ["MODEL.RESNETS.NORM", "BN"])
    model = build_model(cfg)
    assert isinstance(model.roi_heads.res5.norm, nn.BatchNorm2d)
    assert model.roi_heads.box_predictor.cls_score.out_features == 21  # 20 VOC classes + bg
    DetectionCheckpointer(model).load(str(path))
    state = backbone.state_dict()
    assert torch.equal(model.roi_heads.res5[0].conv2.weight, state["layer4.0.conv2.weight"])
    assert torch.equal(
        model.backbone.res4[5].conv3.norm.running_var, state["layer3.5.bn3.running_var"]
    )
    assert torch.equal(model.backbone.stem.conv1.weight, state["conv1.weight"])


@pytest.mark.detectron2
@requires_detectron2
def test_every_virtex_config_parses() -> None:
    for path in sorted(CONFIGS.glob("[!_]*.yaml")):
        cfg = _config(path.name, [])
        assert cfg.INPUT.FORMAT == "RGB" and cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False, path.name
        assert cfg.MODEL.BACKBONE.FREEZE_AT == 0, path.name
    assert _config("lvis_segm_imagenet_init_2x.yaml", []).MODEL.RESNETS.NORM == "FrozenBN"
    assert _config("coco_segm_default_init_2x.yaml", []).MODEL.FPN.NORM == "SyncBN"
    assert compat.model_zoo_config("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml").is_file()


@pytest.mark.detectron2
@requires_detectron2
def test_missing_compiled_op_fails_with_a_clear_error() -> None:
    if compat.compiled_ops_available():
        pytest.skip("this detectron2 has its compiled ops")
    compat.apply()
    from detectron2 import _C

    with pytest.raises(NotImplementedError, match="built without its C.. ops"):
        _C.nms_rotated  # noqa: B018


def test_metrics_summary_shapes_one_or_many_datasets() -> None:
    one = {"bbox": {"AP": 1.5, "APl": float("nan")}, "segm": {"AP": 1.0}}
    assert metrics_summary(one, ["a"]) == {
        "bbox": {"AP": 1.5, "APl": None},
        "segm": {"AP": 1.0},
        "dataset": "a",
    }
    many = {"a": {"bbox": {"AP": 1.0}}, "b": {"bbox": {"AP": 2.0}}}
    summary = metrics_summary(many, ["a", "b"])
    assert summary["bbox"] == {"AP": 1.0} and summary["datasets"]["b"]["bbox"]["AP"] == 2.0


def test_cli_help_names_the_installer() -> None:
    result = CliRunner().invoke(detectron2_command, ["--help"])
    assert result.exit_code == 0
    assert "--d2-config" in result.output and "virtex_eval.detectron2.install" in result.output


def _pretrained_checkpoint(path: Path) -> Path:
    spec = ModelSpec(
        config=ModelConfig.from_dict(
            {
                "kind": "bicaptioning",
                "visual": {"name": "resnet18"},
                "textual": {"layers": 1, "width": 32, "heads": 2, "ffn": 64, "max_length": 10},
            }
        ),
        vocab=VocabSpec(size=30, pad=0, unk=1, sos=2, eos=3, mask=4),
    )
    torch.manual_seed(0)
    torch.save({**checkpoint_dict(spec.build(), spec), "tokenizer": "{}"}, path)
    return path


def _pycocotools_ap(results: Path, ground_truth: Path, task: str) -> float:
    """COCO AP (percent) of a detection results file, computed here with pycocotools' own
    COCOeval (``nan`` without predictions, as detectron2 reports it)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    detections = json.loads(results.read_text())
    if not detections:
        return math.nan
    if task == "segm":  # masks are scored by their own area: drop the boxes, as detectron2 does
        detections = [{k: v for k, v in d.items() if k != "bbox"} for d in detections]
    coco = COCO(str(ground_truth))
    evaluation = COCOeval(coco, coco.loadRes(detections), task)
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    ap = float(evaluation.stats[0])
    return 100 * ap if ap >= 0 else math.nan


def _assert_same_ap(reported: float, expected: float) -> None:
    if math.isnan(expected):
        assert math.isnan(reported)
    else:
        assert reported == pytest.approx(expected, abs=1e-4)


@pytest.mark.detectron2
@requires_detectron2
def test_mask_rcnn_fine_tunes_on_builtin_data_and_gets_coco_ap(tmp_path: Path) -> None:
    from virtex_data.synth import generate

    generate(tmp_path / "synth", train=4, val=2, size=64, workers=1, progress=False)
    checkpoint = _pretrained_checkpoint(tmp_path / "final.pt")
    out = tmp_path / "out"
    common = [
        "--d2-config", str(CONFIGS / "synth_segm_quick.yaml"),
        "--synth", str(tmp_path / "synth"),
        "--output-dir", str(out),
    ]  # fmt: skip
    small = ["INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64"]
    small += ["INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64"]
    result = CliRunner().invoke(
        detectron2_command,
        ["--checkpoint", str(checkpoint), *common, "SOLVER.MAX_ITER", "2", *small],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics_detectron2.json").read_text())
    assert metrics["dataset"] == "virtex_synth_val" and metrics["iteration"] == 2
    # The AP detectron2 reported is pycocotools' COCOeval of the predictions it wrote.
    results = out / "inference" / "coco_instances_results.json"
    ground_truth = tmp_path / "synth" / "annotations" / "instances_val.json"
    for task in ("bbox", "segm"):
        _assert_same_ap(metrics[task]["AP"], _pycocotools_ap(results, ground_truth, task))
    events = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    losses = [event["total_loss"] for event in events if "total_loss" in event]
    assert losses and all(math.isfinite(loss) for loss in losses)
    assert (out / "backbone_detectron2.pth").is_file() and (out / "model_final.pth").is_file()

    # Evaluate the fine-tuned detector again from OUTPUT_DIR's last checkpoint.
    again = CliRunner().invoke(
        detectron2_command, [*common, "--eval-only", *small], catch_exceptions=False
    )
    assert again.exit_code == 0, again.output
    evaluated = json.loads((out / "metrics_detectron2.json").read_text())
    assert metrics["weights"] == str(out / "backbone_detectron2.pth")
    assert evaluated["weights"] == str(out / "model_final.pth") and evaluated["iteration"] is None
    assert evaluated["bbox"]["AP"] == pytest.approx(metrics["bbox"]["AP"], abs=1e-6)


@pytest.mark.detectron2
@requires_detectron2
def test_registered_builtin_data_scores_its_own_ground_truth_as_perfect(tmp_path: Path) -> None:
    """Registration check: ground-truth instances, passed through the registered category
    mapping as predictions, must get AP 100 from detectron2's COCO evaluator."""
    from virtex_data.synth import generate

    compat.apply()
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.evaluation import COCOEvaluator
    from detectron2.structures import Boxes, BoxMode, Instances
    from detectron2.structures.masks import polygons_to_bitmask

    from virtex_eval.detectron2.datasets import register_synth

    generate(tmp_path, train=1, val=3, size=64, workers=1, progress=False)
    names = register_synth(tmp_path, prefix=f"gt_{tmp_path.name}")
    val = names[-1]
    assert MetadataCatalog.get(val).thing_classes[0] == "circle"
    evaluator = COCOEvaluator(val, ("bbox", "segm"), distributed=False, use_fast_impl=False)
    evaluator.reset()
    for record in DatasetCatalog.get(val):
        annotations = record["annotations"]
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations]
        image_size = (record["height"], record["width"])
        instances = Instances(image_size)
        instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        instances.scores = torch.ones(len(annotations))
        instances.pred_classes = torch.tensor([a["category_id"] for a in annotations])
        instances.pred_masks = torch.stack(
            [
                torch.from_numpy(polygons_to_bitmask(a["segmentation"], *image_size))
                for a in annotations
            ]
        )
        evaluator.process([{"image_id": record["image_id"]}], [{"instances": instances}])
    results = evaluator.evaluate()
    assert results["bbox"]["AP"] == pytest.approx(100.0)
    assert results["segm"]["AP"] == pytest.approx(100.0)


@pytest.mark.detectron2
@requires_detectron2
def test_bad_inputs_are_named(tmp_path: Path) -> None:
    from virtex_data.synth import generate

    generate(tmp_path / "synth", train=2, val=1, size=32, workers=1, progress=False)
    checkpoint = _pretrained_checkpoint(tmp_path / "final.pt")
    args = ["--checkpoint", str(checkpoint), "--d2-config", str(CONFIGS / "synth_segm_quick.yaml")]
    args += ["--synth", str(tmp_path / "synth"), "--output-dir", str(tmp_path / "out")]
    wrong = CliRunner().invoke(detectron2_command, [*args, "MODEL.ROI_HEADS.NUM_CLASSES", "80"])
    assert wrong.exit_code != 0
    assert "has 6 classes but MODEL.ROI_HEADS.NUM_CLASSES is 80" in wrong.output
    unknown = CliRunner().invoke(detectron2_command, [*args, "SOLVER.MAX_ITERS", "3"])
    assert unknown.exit_code != 0 and "SOLVER.MAX_ITERS" in unknown.output
    odd = CliRunner().invoke(detectron2_command, [*args, "SOLVER.MAX_ITER"])
    assert odd.exit_code != 0 and "KEY VALUE pairs" in odd.output
    missing = CliRunner().invoke(
        detectron2_command, [*args, "--coco", "x", str(tmp_path / "none.json"), str(tmp_path)]
    )
    assert missing.exit_code != 0 and "none.json does not exist" in missing.output


@pytest.mark.slow
@pytest.mark.detectron2
@requires_detectron2
def test_faster_rcnn_c4_with_extra_norm_trains_on_builtin_data(tmp_path: Path) -> None:
    """The VOC protocol's model (ResNet-50 C4 + extra res5 norm), 2 iterations at 64 px:
    ~20 s of CPU, over a minute of wall time on a busy 2-core machine."""
    from virtex_data.synth import generate

    generate(tmp_path / "synth", train=4, val=2, size=64, workers=1, progress=False)
    spec = ModelSpec(
        config=ModelConfig.from_dict({"kind": "multilabel_classification"}),  # ResNet-50
        vocab=VocabSpec(size=30, pad=0, unk=1, sos=2, eos=3, mask=4),
        num_classes=6,
    )
    torch.manual_seed(0)
    torch.save(checkpoint_dict(spec.build(), spec), tmp_path / "final.pt")
    out = tmp_path / "out"
    opts = [
        "DATASETS.TRAIN", "('virtex_synth_train',)", "DATASETS.TEST", "('virtex_synth_val',)",
        "MODEL.ROI_HEADS.NUM_CLASSES", "6", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
        "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64", "MODEL.RPN.POST_NMS_TOPK_TEST", "64",
        "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0",
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
        "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64",
        "TEST.PRECISE_BN.ENABLED", "False",
    ]  # fmt: skip
    result = CliRunner().invoke(
        detectron2_command,
        [
            "--checkpoint",
            str(tmp_path / "final.pt"),
            "--d2-config",
            str(CONFIGS / "voc_det_default_init_24k.yaml"),
            "--synth",
            str(tmp_path / "synth"),
            "--output-dir",
            str(out),
            *opts,
        ],  # fmt: skip
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics_detectron2.json").read_text())
    assert set(metrics) >= {"bbox", "dataset"} and "segm" not in metrics
    _assert_same_ap(
        metrics["bbox"]["AP"],
        _pycocotools_ap(
            out / "inference" / "coco_instances_results.json",
            tmp_path / "synth" / "annotations" / "instances_val.json",
            "bbox",
        ),
    )
    events = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert all(math.isfinite(e["total_loss"]) for e in events if "total_loss" in e)
