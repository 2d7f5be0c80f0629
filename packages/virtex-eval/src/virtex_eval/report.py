"""One self-contained HTML page about a training run (``virtex-eval report RUN_DIR``).

It reads the run directory of the contract (``OUT/metrics.jsonl``, ``OUT/samples.jsonl``,
``OUT/config.yaml``, any metrics ``*.json``) and writes a single HTML file whose plots and images
are embedded as base64 data (no external file, script or font): it can be mailed or archived.

- Training curves (matplotlib, PNG): train/val loss and loss components, learning rates
  (``lr/*``), throughput (``images_per_s``) and any other numeric series, against ``step``.
- Metrics tables: every ``*.json`` under the run directory holding a dict (captioning scores,
  ``ablation.json``, VOC07 results, zero-shot ...): numbers and short strings as key/value rows,
  dicts of dicts of numbers as a matrix (rows = outer keys); lists (e.g. COCO results) and the
  tokenizer are skipped.
- Validation samples of the last validation step (``samples.jsonl``): predicted caption and
  references, with the image when ``--images DIR`` holds a file named after the image id
  (``000000397133.jpg``, ``COCO_val2014_000000397133.jpg`` or ``397133.png``); without it the
  grid shows captions only.

A short inline script records, once the page has loaded, how many images decoded
(``<body data-images-loaded="N">``): the headless-browser test reads it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from virtex_eval.images import IMAGE_EXTENSIONS, ImageFileError, load_image
from virtex_models.atomic_file import atomic_write_text

__all__ = ["RunData", "build_report", "read_jsonl", "read_run", "write_report"]

_SKIP_DIRS = {"checkpoints", "tb", "__pycache__"}
_MAX_JSON_BYTES = 5_000_000
_THUMBNAIL = 256


@dataclass
class RunData:
    """What the report shows, read from a run directory."""

    root: Path
    metrics: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    config: str | None = None
    tables: dict[str, Any] = field(default_factory=dict)  # relative path -> parsed JSON dict
    notes: list[str] = field(default_factory=list)


def read_jsonl(path: Path, notes: list[str]) -> list[dict[str, Any]]:
    """The JSON objects of a ``.jsonl`` file; malformed lines are skipped and noted (a line cut
    by a crash is normal for a run in progress)."""
    records: list[dict[str, Any]] = []
    bad: list[int] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad.append(number)
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            bad.append(number)
    if bad:
        lines = ", ".join(str(n) for n in bad[:10]) + (" ..." if len(bad) > 10 else "")
        notes.append(f"{path.name}: skipped {len(bad)} malformed line(s): {lines}")
    return records


def _metrics_files(root: Path) -> Iterable[Path]:
    for path in sorted(root.rglob("*.json")):
        relative = path.relative_to(root)
        if any(part in _SKIP_DIRS for part in relative.parts[:-1]):
            continue
        if path.name == "tokenizer.json" or path.stat().st_size > _MAX_JSON_BYTES:
            continue
        yield path


def read_run(root: str | os.PathLike[str]) -> RunData:
    """Read a run directory.

    Raises:
        ValueError: ``root`` is not a directory.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: no such run directory")
    data = RunData(root=root)
    if (root / "metrics.jsonl").is_file():
        data.metrics = read_jsonl(root / "metrics.jsonl", data.notes)
    else:
        data.notes.append("no metrics.jsonl: no training curves")
    if (root / "samples.jsonl").is_file():
        data.samples = read_jsonl(root / "samples.jsonl", data.notes)
    if (root / "config.yaml").is_file():
        data.config = (root / "config.yaml").read_text(encoding="utf-8")
    for path in _metrics_files(root):
        relative = str(path.relative_to(root))
        try:
            parsed = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            data.notes.append(f"{relative}: not valid JSON ({error}); skipped")
            continue
        if isinstance(parsed, dict) and parsed.get("format") != "virtex-tokenizer":
            data.tables[relative] = parsed
    return data


# --------------------------------------------------------------------------------- plots
def _series(records: Sequence[Mapping[str, Any]], split: str, key: str) -> tuple[list, list]:
    steps, values = [], []
    for record in records:
        value = record.get(key)
        if record.get("split", "train") != split or not isinstance(record.get("step"), int | float):
            continue
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            steps.append(record["step"])
            values.append(value)
    return steps, values


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def training_plots(records: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """``[(title, base64 PNG)]`` of the curves in ``metrics.jsonl`` records."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    keys: dict[str, set[str]] = {}
    for record in records:
        split = str(record.get("split", "train"))
        for key, value in record.items():
            if key not in ("step", "split") and isinstance(value, int | float):
                keys.setdefault(key, set()).add(split)
    groups: list[tuple[str, list[str]]] = []
    loss_keys = [k for k in keys if k == "loss" or k in ("forward", "backward")]
    if loss_keys:
        groups.append(("Loss", sorted(loss_keys, key=lambda k: (k != "loss", k))))
    lr_keys = sorted(k for k in keys if k.startswith("lr/") or k == "lr")
    if lr_keys:
        groups.append(("Learning rate", lr_keys))
    if "images_per_s" in keys:
        groups.append(("Throughput (images/s)", ["images_per_s"]))
    used = {k for _, group in groups for k in group} | {"seconds"}
    for key in sorted(set(keys) - used)[:8]:
        groups.append((key, [key]))
    plots = []
    for title, group in groups:
        figure, axes = plt.subplots(figsize=(6.4, 3.4))
        plotted: list[float] = []
        for key in group:
            for split in sorted(keys[key]):
                steps, values = _series(records, split, key)
                if not steps:
                    continue
                plotted.extend(values)
                dashed = key != "loss" and title == "Loss"  # loss components
                axes.plot(
                    steps,
                    values,
                    marker=None if split == "train" else "o",
                    linestyle="--" if dashed else "-",
                    markersize=3,
                    label=f"{split} {key}",
                )
        if plotted and min(plotted) > 0 and max(plotted) / min(plotted) > 100:
            axes.set_yscale("log")  # e.g. a backbone LR 10^4 times the head's
        axes.set_xlabel("step")
        axes.set_title(title)
        axes.grid(alpha=0.3)
        if axes.lines:
            axes.legend(fontsize=8)
        plots.append((title, _png(figure)))
        plt.close(figure)
    return plots


# --------------------------------------------------------------------------------- tables
def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return html.escape(str(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4f}" if value == 0 or 1e-3 <= abs(value) < 1e4 else f"{value:.4g}"
    text = value if isinstance(value, str) else json.dumps(value)
    return html.escape(text if len(text) <= 200 else text[:200] + " ...")


def _matrix(data: Mapping[str, Mapping[str, Any]]) -> str:
    columns: list[str] = []
    for row in data.values():
        columns.extend(k for k in row if k not in columns and not isinstance(row[k], dict | list))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        f"<tr><th>{html.escape(str(name))}</th>"
        + "".join(f"<td>{_cell(row[c]) if c in row else ''}</td>" for c in columns)
        + "</tr>"
        for name, row in data.items()
    )
    return f"<table><thead><tr><th></th>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_table(data: Mapping[str, Any], depth: int = 0) -> str:
    """HTML of a metrics dict: scalar entries as key/value rows, a dict of dicts of scalars as a
    matrix, other nested dicts recursively (lists of scalars inline, other lists omitted)."""
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict | list)}
    short_lists = {
        k: v
        for k, v in data.items()
        if isinstance(v, list) and len(v) <= 20 and all(not isinstance(x, dict | list) for x in v)
    }
    nested = {k: v for k, v in data.items() if isinstance(v, dict)}
    parts = []
    rows = {**scalars, **short_lists}
    if rows:
        body = "".join(
            f"<tr><th>{html.escape(str(k))}</th><td>{_cell(v)}</td></tr>" for k, v in rows.items()
        )
        parts.append(f"<table><tbody>{body}</tbody></table>")
    if nested and depth < 3:
        flat = all(
            all(not isinstance(x, dict | list) for x in row.values()) for row in nested.values()
        )
        if flat and len(nested) > 1:
            parts.append(_matrix(nested))
        else:
            for key, value in nested.items():
                parts.append(f"<h4>{html.escape(str(key))}</h4>{render_table(value, depth + 1)}")
    return "".join(parts) or "<p class='note'>(no numbers)</p>"


# --------------------------------------------------------------------------------- samples
def _image_index(folder: Path) -> dict[int | str, Path]:
    index: dict[int | str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        index.setdefault(path.stem, path)
        digits = re.search(r"(\d+)$", path.stem)
        if digits:
            index.setdefault(int(digits.group(1)), path)
    return index


def _thumbnail(path: Path) -> str:
    image = load_image(path)
    image.thumbnail((_THUMBNAIL, _THUMBNAIL))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _sample_cards(
    samples: Sequence[Mapping[str, Any]], images: Path | None, limit: int, notes: list[str]
) -> tuple[int | None, str]:
    steps = [s["step"] for s in samples if isinstance(s.get("step"), int)]
    if not steps:
        return None, ""
    last = max(steps)
    chosen = [s for s in samples if s.get("step") == last][:limit]
    index = _image_index(images) if images is not None else {}
    cards = []
    missing = 0
    for sample in chosen:
        image_id = sample.get("image_id")
        path = index.get(image_id) if isinstance(image_id, int | str) else None
        if path is None and image_id is not None:
            path = index.get(str(image_id))
        picture = ""
        if path is not None:
            try:
                data = _thumbnail(path)
                alt = html.escape(f"image {image_id}")
                picture = f'<img alt="{alt}" src="data:image/jpeg;base64,{data}">'
            except ImageFileError as error:
                notes.append(f"samples: {error}")
        elif images is not None:
            missing += 1
        references = "".join(
            f"<li>{html.escape(str(r))}</li>" for r in sample.get("references") or []
        )
        cards.append(
            "<div class='card'>"
            + picture
            + f"<p class='id'>image {html.escape(str(image_id))}</p>"
            + f"<p><b>predicted:</b> {html.escape(str(sample.get('caption', '')))}</p>"
            + (f"<p><b>references:</b></p><ul>{references}</ul>" if references else "")
            + "</div>"
        )
    if missing:
        notes.append(f"samples: no image file found in {images} for {missing} image id(s)")
    return last, "<div class='grid'>" + "".join(cards) + "</div>"


# --------------------------------------------------------------------------------- page
_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: left; }
td { font-variant-numeric: tabular-nums; }
.plots img { max-width: 48%; margin: .5%; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 1em; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: .6em; font-size: .9em; }
.card img { width: 100%; border-radius: 4px; }
.id { color: #777; margin: .2em 0; } .note { color: #a60; }
pre { background: #f6f6f6; padding: .8em; overflow-x: auto; font-size: .8em; }
"""
_CHECK = (
    "<script>window.addEventListener('load', function () {"
    " var ok = Array.prototype.filter.call(document.images,"
    " function (i) { return i.complete && i.naturalWidth > 0; }).length;"
    " document.body.setAttribute('data-images-loaded', String(ok)); });</script>"
)


def build_report(run: RunData, *, images: Path | None = None, samples: int = 24) -> str:
    """The HTML page of a run."""
    notes = list(run.notes)
    title = f"VirTex run report: {run.root.resolve().name}"
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{html.escape(str(run.root.resolve()))} &mdash; generated "
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}</p>",
    ]
    train = [r for r in run.metrics if r.get("split", "train") == "train"]
    val = [r for r in run.metrics if r.get("split") == "val"]
    summary: dict[str, Any] = {}
    if train:
        summary["last step"] = max(r.get("step", 0) for r in train)
        last = train[-1]
        if _is_number(last.get("loss")):
            summary["last train loss"] = last["loss"]
    if val and _is_number(val[-1].get("loss")):
        summary["last val loss"] = val[-1]["loss"]
        summary["best val loss"] = min(r["loss"] for r in val if _is_number(r.get("loss")))
    if val and _is_number(val[-1].get("distinct_captions")):
        summary["last val distinct captions"] = val[-1]["distinct_captions"]
    if summary:
        parts.append("<h2>Summary</h2>" + render_table(summary))
    collapsed = [r["step"] for r in val if r.get("collapse_warning")]
    if collapsed:  # virtex-train's validation check: nearly one caption for every image
        parts.append(
            f"<p><strong>Warning: caption collapse</strong> at step(s) "
            f"{html.escape(', '.join(str(step) for step in collapsed))}: fewer distinct "
            "greedy captions than train.collapse_threshold of the validation images.</p>"
        )
    parts.append("<h2>Training curves</h2>")
    plots = training_plots(run.metrics) if run.metrics else []
    if plots:
        parts.append("<div class='plots'>")
        for plot_title, data in plots:
            parts.append(
                f'<img alt="{html.escape(plot_title)}" src="data:image/png;base64,{data}">'
            )
        parts.append("</div>")
    else:
        parts.append("<p class='note'>No training metrics.</p>")
    parts.append("<h2>Metrics</h2>")
    if run.tables:
        for name, table in run.tables.items():
            parts.append(f"<h3>{html.escape(name)}</h3>{render_table(table)}")
    else:
        parts.append("<p class='note'>No metrics JSON files in the run directory.</p>")
    if run.samples:
        step, grid = _sample_cards(run.samples, images, samples, notes)
        parts.append(f"<h2>Validation samples (step {step})</h2>{grid}")
    if run.config:
        parts.append(
            "<h2>Configuration</h2><details><summary>config.yaml</summary>"
            f"<pre>{html.escape(run.config)}</pre></details>"
        )
    if notes:
        items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
        parts.append(f"<h2>Notes</h2><ul class='note'>{items}</ul>")
    parts.append(_CHECK + "</body></html>")
    return "\n".join(parts)


def write_report(
    run_dir: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    *,
    images: str | os.PathLike[str] | None = None,
    samples: int = 24,
) -> Path:
    """Build the report of ``run_dir`` and write it (default ``RUN_DIR/report.html``)."""
    run = read_run(run_dir)
    image_dir = Path(images) if images is not None else None
    if image_dir is not None and not image_dir.is_dir():
        raise ValueError(f"{image_dir}: no such image directory")
    target = Path(output) if output is not None else run.root / "report.html"
    text = build_report(run, images=image_dir, samples=samples)
    return atomic_write_text(target, text)
