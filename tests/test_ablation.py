"""The task ablation in miniature (``demo/ablation.py --preset fast``), end to end.

One run of the fast preset (4.5 min on 2 idle cores) from nothing: built-in data, five
pretrainings, probes, captioning; then its outputs and what the run shows about learning. The
learning thresholds are the margins measured on the 2-core machine (demo/README.md), not hopes.
What the fast preset does NOT show is not asserted: every pretrained backbone beating random
init on the probes (measured: only token and multilabel classification do, on num_objects), and
captions that are better grounded than the same captions shuffled across images.
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
CHANCE = {"num_objects": 0.25, "background": 0.25}


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
        timeout=1200,
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
    assert set(data["cider"]) == {"bicaptioning", "captioning"}
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
    # The fast preset's budget: 5 min on an idle 2-core machine; a loaded CI runner gets slack.
    assert ablation["seconds"] < 900


def test_pretraining_learns(ablation: dict[str, Any]) -> None:
    """Every objective's training loss falls. The fast preset's probes do NOT show every
    pretrained backbone beating random init (demo/README.md), so no margin over random init is
    asserted; the probes must be above chance, and random init keeps the background texture
    (measured 0.94), which shows the probe reads information that is in the features."""
    out, data = ablation["out"], ablation["json"]
    for objective in ROWS[:-1]:
        lines = (out / "runs" / objective / "metrics.jsonl").read_text().splitlines()
        losses = [json.loads(line)["loss"] for line in lines if '"train"' in line]
        assert losses[-1] < 0.95 * losses[0], objective
    for row in ROWS:
        for task, chance in CHANCE.items():
            assert data[row][task] > chance + 0.1, (row, task)  # measured >= 0.42
    assert data["random_init"]["background"] > 0.8


def test_captions_use_the_image(ablation: dict[str, Any]) -> None:
    bicap = ablation["json"]["meta"]["captioning"]["bicaptioning"]
    # The model's val loss is lower with the right image than with another image of the split
    # (measured 2.80 vs 2.84): its predictions depend on the image, if only a little.
    assert bicap["val_loss"] < bicap["val_loss_shuffled_images"]
    # Most val captions name a shape or a colour that is in the image (measured 0.74; the same
    # captions shuffled across images: 0.74 too, so this is mostly the language prior).
    assert bicap["grounded"] > 0.5
    assert ablation["json"]["cider"]["bicaptioning"] > 0.2  # measured 0.54


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
