"""The HTML run report: content, self-containment, and rendering in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from virtex_eval.cli.report import report_command
from virtex_eval.report import read_run, render_table, write_report


def _make_run(root: Path) -> Path:
    """A run directory as virtex_train writes it (contract layout), plus metrics files."""
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    lines = []
    for step in range(20, 220, 20):
        lines.append(
            {
                "step": step,
                "split": "train",
                "loss": 10.0 / step**0.5,
                "forward": 5.0 / step**0.5,
                "backward": 5.0 / step**0.5,
                "lr/visual": 0.2 * step / 200,
                "lr/other": 1e-5 * step / 200,
                "images_per_s": 50.0 + step % 7,
            }
        )
        if step % 100 == 0:
            lines.append({"step": step, "split": "val", "loss": 9.0 / step**0.5, "seconds": 1.5})
    text = "\n".join(json.dumps(line) for line in lines) + '\n{"step": 220, "spl'  # cut by a crash
    (run / "metrics.jsonl").write_text(text)
    samples = [
        {"step": 100, "image_id": 1, "caption": "an old caption", "references": ["x"]},
        {"step": 200, "image_id": 1, "caption": "a red <square>", "references": ["a red square"]},
        {"step": 200, "image_id": 2, "caption": "two blue circles", "references": ["blue"]},
        {"step": 200, "image_id": 3, "caption": "an image not on disk", "references": []},
    ]
    (run / "samples.jsonl").write_text("\n".join(json.dumps(s) for s in samples) + "\n")
    (run / "config.yaml").write_text("seed: 0\noptim:\n  cnn_lr: 0.2\n")
    (run / "tokenizer.json").write_text(json.dumps({"format": "virtex-tokenizer", "x": 1}))
    scores = {"CIDEr": 0.91234, "BLEU-4": 0.3012, "num_images": 5000}
    scores["decoder"] = {"mode": "beam", "beam_size": 5}
    (run / "caption_metrics.json").write_text(json.dumps(scores))
    (run / "ablation.json").write_text(
        json.dumps({"R-50 H1024": {"voc07": 0.82, "CIDEr": 0.9}, "R-50 H2048": {"voc07": 0.84}})
    )
    (run / "eval").mkdir()
    (run / "eval" / "voc07.json").write_text(json.dumps({"mAP": 0.8812, "per_class": [0.1, 0.2]}))
    (run / "results.json").write_text(json.dumps([{"image_id": 1, "caption": "x"}]))
    (run / "checkpoints" / "ignored.json").write_text(json.dumps({"secret": 1}))
    images = root / "val"
    images.mkdir()
    Image.new("RGB", (320, 240), (200, 20, 20)).save(images / "000000000001.jpg")
    Image.new("RGB", (100, 80), (20, 20, 200)).save(images / "COCO_val2014_000000000002.png")
    return run


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _tags(text: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(text)
    return parser.tags


def test_report_holds_curves_tables_and_samples(tmp_path: Path) -> None:
    run = _make_run(tmp_path)
    path = write_report(run, images=tmp_path / "val")
    assert path == run / "report.html"
    text = path.read_text()
    images = [attrs for tag, attrs in _tags(text) if tag == "img"]
    plots = [a for a in images if (a["src"] or "").startswith("data:image/png;base64,")]
    photos = [a for a in images if (a["src"] or "").startswith("data:image/jpeg;base64,")]
    # Loss (+ components), learning rates, throughput; "seconds" is not plotted.
    assert [a["alt"] for a in plots] == ["Loss", "Learning rate", "Throughput (images/s)"]
    for attrs in plots + photos:  # every embedded image decodes
        data = base64.b64decode((attrs["src"] or "").split(",", 1)[1])
        assert Image.open(io.BytesIO(data)).size[0] > 0
    # Samples of the last validation step only; images 1 and 2 found, 3 missing (noted).
    assert [a["alt"] for a in photos] == ["image 1", "image 2"]
    assert "an old caption" not in text and "a red &lt;square&gt;" in text
    assert "no image file found" in text and "for 1 image id(s)" in text
    # Tables: scalars, nested dict, matrix of dicts; files under checkpoints/ and lists skipped.
    assert "caption_metrics.json" in text and "0.9123" in text and "5000" in text
    assert "<h3>ablation.json</h3>" in text and "R-50 H2048" in text
    assert "eval/voc07.json" in text and "0.8812" in text
    assert "tokenizer.json" not in text and "results.json" not in text and "secret" not in text
    assert "metrics.jsonl: skipped 1 malformed line(s): 13" in text
    assert "last step" in text and "cnn_lr" in text
    # Self-contained: no external references at all.
    assert not re.search(r"""(src|href)=["'](?!data:)""", text)


def test_learning_rate_plot_shows_its_data(tmp_path: Path) -> None:
    # The lr plot's pixels: two curves of different colours, rising left to right.
    run = _make_run(tmp_path)
    text = write_report(run).read_text()
    src = next(a["src"] for t, a in _tags(text) if t == "img" and a.get("alt") == "Learning rate")
    assert src is not None
    pixels = np.asarray(
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB")
    )
    coloured = (pixels.max(axis=2) - pixels.min(axis=2)) > 80  # plotted lines, not grey axes
    assert coloured.sum() > 200


def test_render_table_shapes() -> None:
    flat = render_table({"CIDEr": 1.23456, "lr": 1e-5, "ok": True, "name": "x"})
    assert "1.2346" in flat and "1e-05" in flat and "True" in flat
    matrix = render_table({"a": {"x": 1.0, "y": 2.0}, "b": {"y": 3.0}})
    assert matrix.count("<tr>") == 3 and "<th>x</th><th>y</th>" in matrix
    assert render_table({}) == "<p class='note'>(no numbers)</p>"


def test_empty_run_and_bad_paths(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    text = write_report(tmp_path / "empty").read_text()
    assert "No training metrics" in text and "no metrics.jsonl" in text
    with pytest.raises(ValueError, match="no such run directory"):
        read_run(tmp_path / "missing")
    runner = CliRunner()
    result = runner.invoke(report_command, [str(tmp_path / "missing")])
    assert result.exit_code == 1 and "no such run directory" in result.output
    result = runner.invoke(
        report_command, [str(tmp_path / "empty"), "--images", str(tmp_path / "x")]
    )
    assert result.exit_code == 1 and "no such image directory" in result.output


def test_cli_writes_where_asked(tmp_path: Path) -> None:
    run = _make_run(tmp_path)
    target = tmp_path / "out" / "page.html"
    result = CliRunner().invoke(
        report_command, [str(run), "--output", str(target), "--samples", "1"]
    )
    assert result.exit_code == 0, result.output
    assert target.is_file() and f"wrote {target}" in result.output
    assert target.read_text().count("class='card'") == 1


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.mark.slow
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("needs chromium (apt-get install -y chromium)")
    run = _make_run(tmp_path)
    page = write_report(run, images=tmp_path / "val")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    # 1. The DOM after load: the page's own check counts images that decoded.
    dom = subprocess.run(
        [browser, *flags, "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    expected = page.read_text().count("<img ")
    assert f'data-images-loaded="{expected}"' in dom, dom[-500:]
    # 2. A screenshot: the plots and photos are drawn (not a blank page).
    shot = tmp_path / "shot.png"
    subprocess.run(
        [browser, *flags, f"--screenshot={shot}", "--window-size=1200,2400", page.as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (2400, 1200)
    red = (pixels[..., 0] > 150) & (pixels[..., 1] < 60) & (pixels[..., 2] < 60)
    assert red.sum() > 1000  # the red validation image
    non_white = (pixels.sum(axis=2) < 600).mean()
    assert non_white > 0.02


def test_caption_collapse_is_shown(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    records = [
        {"step": 10, "split": "val", "loss": 3.0, "distinct_captions": 0.5, "collapse_warning": 0},
        {"step": 20, "split": "val", "loss": 2.0, "distinct_captions": 0.02, "collapse_warning": 1},
    ]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    text = write_report(run).read_text()
    assert "Warning: caption collapse</strong> at step(s) 20:" in text
    assert "last val distinct captions" in text
    quiet = tmp_path / "quiet"
    quiet.mkdir()
    (quiet / "metrics.jsonl").write_text(json.dumps(records[0]) + "\n")
    assert "caption collapse" not in write_report(quiet).read_text()
