"""The task ablation in miniature (``demo/ablation.py --preset fast``), end to end.

One run of the fast preset from nothing: built-in data, six pretrainings, probes, captioning;
then its outputs and what the run shows about learning. The learning thresholds sit at most at
half the margins measured under two CPU kernel settings and three seeds
(demo/README.md#portability), not hopes; ``nox -s tests-portable`` runs this file again on the
second kernel set.
``random_init`` is the random ResNet-18 with BatchNorm statistics from the probe images (the
same treatment every pretrained backbone's statistics had); the same weights with their
initial statistics (no normalisation) are ``meta.random_init_uncalibrated``; it is not
asserted against.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "demo" / "ablation.py"
ROWS = (
    "bicaptioning",
    "captioning",
    "token_classification",
    "multilabel_classification",
    "masked_lm",
    "cappa",
    "random_init",
)
TASKS = (
    "num_objects",
    "largest_colour",
    "leftmost_colour",
    "largest_shape",
    "background",
    "colours_present",
)
#: Attributes of the objects (not of the background) that every pretrained backbone must read
#: better than random init.
OBJECT_TASKS = ("num_objects", "largest_colour", "leftmost_colour")


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("virtex_demo_ablation", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ablation(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("ablation")
    sources = [str(p) for p in sorted((ROOT / "packages").glob("virtex-*/src"))]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*sources, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    start = time.perf_counter()
    process = subprocess.run(
        [sys.executable, str(SCRIPT), "--preset", "fast", "--output-dir", str(out)],
        env=env,
        capture_output=True,
        text=True,
        # Its time is a benchmark figure (demo/README.md), not asserted: only a hang is caught.
        timeout=3600,
        check=False,
    )
    seconds = time.perf_counter() - start
    assert process.returncode == 0, process.stdout[-4000:] + process.stderr[-4000:]
    return {
        "out": out,
        "json": json.loads((out / "ablation.json").read_text()),
        "stdout": process.stdout,
        "seconds": seconds,
    }


def test_outputs_and_schema(ablation: dict[str, Any]) -> None:
    out, data = ablation["out"], ablation["json"]
    for row in ROWS:
        assert set(TASKS) <= set(data[row]), row
        for task in TASKS:
            assert 0.0 <= data[row][task] <= 1.0, (row, task)
    assert set(data["cider"]) == {"bicaptioning", "captioning", "cappa"}
    assert all(value >= 0 for value in data["cider"].values())
    for name in ("pretraining_curves.png", "probe_accuracies.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    markdown = (out / "ablation.md").read_text()
    for row in ROWS:
        assert f"| {row} |" in markdown
        assert f"| {row} |" in ablation["stdout"]  # the table is printed too
    for objective in ROWS[:-1]:
        report = out / "runs" / objective / "report.html"
        assert report.is_file() and "<html" in report.read_text()[:2000].lower()
        assert (out / "runs" / objective / "checkpoints" / "final.pt").is_file()
    # Every objective saw the same number of images.
    steps = {data["meta"]["settings"]["steps"]}
    for objective in ROWS[:-1]:
        lines = (out / "runs" / objective / "metrics.jsonl").read_text().splitlines()
        train = [json.loads(line) for line in lines if '"train"' in line]
        steps.add(max(record["step"] for record in train))
    assert len(steps) == 1


def margins(data: dict[str, Any]) -> dict[tuple[str, str], float]:
    """Each objective's probe accuracy minus random init's, per object task and for the mean of
    the three (``"objects"``)."""
    random = data["random_init"]
    result = {}
    for objective in ROWS[:-1]:
        for task in OBJECT_TASKS:
            result[objective, task] = data[objective][task] - random[task]
        result[objective, "objects"] = sum(result[objective, t] for t in OBJECT_TASKS) / 3
    return result


#: Objectives whose targets are words: the captions (or their bag of words) name counts and
#: colours, so their backbones must read both better than random init.
LANGUAGE = ("bicaptioning", "captioning", "token_classification", "masked_lm")
#: Least margin over random init asserted, per (objective, task); ``objects`` is the mean of the
#: three. Each is at most half the smallest margin measured in four runs on an AMD Zen 4: seeds 0
#: and 1 under the native AVX-512 kernels, seeds 0 and 2 under the AVX2 kernels with 2 threads
#: (demo/README.md#portability; the test runs seed 0),
#: so that kernel and thread differences, which moved single probes by up to 0.044 there, cannot
#: flip them; a backbone that learned nothing from its targets scores about 0 (the paper's
#: zero-initialised residual branches at this budget: -0.07 on counting for bicaptioning).
LEAST_MARGIN: dict[tuple[str, str], float] = {
    **{
        (o, t): 0.05
        for o in LANGUAGE
        for t in OBJECT_TASKS
        if (o, t) != ("masked_lm", "num_objects")
    },
    # Masked LM learns to count least (labels at ~2.5 masked words per caption; measured
    # 0.058-0.067).
    ("masked_lm", "num_objects"): 0.025,
    # Multilabel targets name no colour, yet its backbone reads colours (measured 0.14-0.17); it
    # counts no better than random init at this budget (measured -0.01): not asserted.
    ("multilabel_classification", "largest_colour"): 0.05,
    ("multilabel_classification", "leftmost_colour"): 0.05,
    **{(o, "objects"): 0.05 for o in ROWS[:-1] if o != "multilabel_classification"},
    # Its mean is held up by the colours alone (measured 0.080-0.103).
    ("multilabel_classification", "objects"): 0.04,
}


def test_pretraining_learns(ablation: dict[str, Any]) -> None:
    """Every objective's training loss falls; the objectives with language targets beat random
    init on counting and on both colour probes, and multilabel classification (whose targets
    are the shapes present) on both colour probes. Margins: :data:`LEAST_MARGIN`. Shapes (at
    chance for all at 32 px) and background texture (random init keeps it best) are not
    asserted."""
    out, data = ablation["out"], ablation["json"]
    for objective in ROWS[:-1]:
        lines = (out / "runs" / objective / "metrics.jsonl").read_text().splitlines()
        losses = [json.loads(line)["loss"] for line in lines if '"train"' in line]
        # Means of the first and last five logged losses (one batch each is too noisy: the
        # multilabel loss's last/first ratio of single batches was 0.88-0.94). Measured ratios
        # of the means: 0.37-0.86 (token classification highest).
        assert sum(losses[-5:]) < 0.93 * sum(losses[:5]), objective
    measured = margins(data)
    shown = {f"{o}/{t}": round(v, 3) for (o, t), v in measured.items()}
    for (objective, task), least in LEAST_MARGIN.items():
        assert measured[objective, task] > least, (objective, task, least, shown)
    # The probes read what is in the features: every backbone counts above chance (0.25), and
    # the uncalibrated random network keeps the background texture (measured 0.80, chance 0.25).
    # Lowest measured: 0.398 (multilabel, seed 2), so half its margin over chance: 0.32.
    assert all(data[row]["num_objects"] > 0.32 for row in ROWS)
    assert data["meta"]["random_init_uncalibrated"]["background"] > 0.6


def test_captions_use_the_image(ablation: dict[str, Any]) -> None:
    captioning = ablation["json"]["meta"]["captioning"]
    for objective in ("bicaptioning", "captioning"):
        result = captioning[objective]
        # The model's val loss is lower with the right image than with another image of the
        # split: its predictions depend on the image (gaps measured in the four runs:
        # bicaptioning 0.30-0.31, captioning 0.100-0.106).
        assert result["val_loss"] < result["val_loss_shuffled_images"] - 0.05, result
        # Its greedy captions name a shape or colour that is in the image more often than the
        # same captions do for other images (gaps measured: bicaptioning 0.058-0.186,
        # captioning 0.112-0.132): they are about the image, not only the language prior.
        assert result["grounded"] > result["grounded_shuffled"] + 0.025, result
        assert result["CIDEr"] > 0.3, result  # measured 0.57-0.75
        # The quickstart's grounding check (virtex_data.synth_grounding) on this smaller
        # budget (9,600 images seen; the quickstart sees 38,400): the greedy captions name the
        # largest object's colour more often than the shuffled captions do (gaps measured
        # 0.144-0.322), in varied captions (measured 31-93 distinct of 500).
        assert result["largest_colour"] > result["largest_colour_shuffled"] + 0.07, result
        assert result["distinct_captions"] >= 15, result


def test_grounding_checks_by_hand() -> None:
    module = _module()
    record = {
        "shape_counts": {s: int(s in ("circle", "star")) for s in module.SHAPES},
        "colour_counts": {c: int(c == "red") for c in module.COLOURS},
    }
    assert module.mentioned("two red circles and a blue star") == (
        {"circle", "star"},
        {"red", "blue"},
    )
    assert module.mentioned("three boxes") == (set(), set())
    assert module.grounded("a green star", record)  # the star is there
    assert not module.grounded("a green square", record)
    assert module.all_named_present("a red circle left of a star", record)
    assert not module.all_named_present("a red circle left of a blue star", record)  # no blue
    assert not module.all_named_present("three shapes", record)  # names nothing


def test_table_layout() -> None:
    module = _module()
    results: dict[str, Any] = {row: dict.fromkeys(TASKS, 0.5) for row in ROWS}
    results["random_init"]["num_objects"] = 0.2
    results["cider"] = {"bicaptioning": 0.75, "captioning": 0.5}
    lines = module.markdown_table(results).splitlines()
    assert lines[0].split("|")[1].strip() == "objective"
    assert len(lines) == 2 + len(ROWS)
    # mean of (0.2 + 5 x 0.5) / 6 = 0.45
    assert (
        lines[-1] == "| random_init | 0.200 | 0.500 | 0.500 | 0.500 | 0.500 | 0.500 | 0.450 | - |"
    )
    assert lines[2].endswith("| 0.500 | 0.750 |")
    # The uncalibrated random init, when probed, is one more row at the end.
    results["meta"] = {"random_init_uncalibrated": dict.fromkeys(TASKS, 0.9)}
    lines = module.markdown_table(results).splitlines()
    assert len(lines) == 3 + len(ROWS)
    assert lines[-1] == f"| {module.UNCALIBRATED} |" + " 0.900 |" * 7 + " - |"


def test_batchnorm_calibration_uses_the_images() -> None:
    """The random backbone's BatchNorm statistics become those of the images: the first
    BatchNorm's running mean equals the mean of ``conv1``'s output over all images, computed
    here directly; the weights do not change."""
    import torch

    from virtex_models.visual import TorchvisionBackbone

    module = _module()
    torch.manual_seed(0)
    backbone = TorchvisionBackbone("resnet18").eval()
    images = torch.randn(200, 3, 32, 32) * 2.0 + 0.5
    weights = {
        k: v.clone()
        for k, v in backbone.state_dict().items()
        if "running" not in k and "num_batches" not in k
    }
    assert torch.equal(backbone.bn1.running_mean, torch.zeros(64))
    module.calibrate_batchnorm(backbone, images)
    with torch.no_grad():
        conv = backbone.conv1(images)
    torch.testing.assert_close(
        backbone.bn1.running_mean, conv.mean((0, 2, 3)), rtol=1e-4, atol=1e-5
    )
    # Two equal batches: the average of their unbiased variances.
    halves = conv.split(100)
    expected_var = sum(h.transpose(0, 1).reshape(64, -1).var(1) for h in halves) / 2
    torch.testing.assert_close(backbone.bn1.running_var, expected_var, rtol=1e-4, atol=1e-5)
    assert not backbone.training
    after = backbone.state_dict()
    assert all(torch.equal(after[k], v) for k, v in weights.items())
