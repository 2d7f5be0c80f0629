"""``virtex-train pretrain``: a run end to end, resume, quickstart, errors, SIGTERM."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))

from _tiny import make_tiny_data

from virtex_models.pretrained import load_objective
from virtex_train import quickstart
from virtex_train.cli import main
from virtex_train.config import load_config

pytestmark = pytest.mark.timeout(240)

TINY = [
    "data.transform.image_size=32",
    "model.textual.width=32",
    "model.textual.ffn=64",
    "model.decoder.beam_size=2",
    "model.decoder.max_steps=6",
    "train.batch_size=4",
    "train.num_workers=0",
    "train.log_every=1",
    "train.val_every=2",
    "train.val_batches=1",
    "train.sample_captions=2",
    "train.checkpoint_every=2",
    "train.num_steps=4",
    # The quickstart runs without Lookahead; these runs keep it, so that its state is checked.
    "optim.lookahead.enabled=true",
]


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    data = make_tiny_data(root / "data")
    paths = [
        f"data.train_lmdb={data.train_lmdb}",
        f"data.val_lmdb={data.val_lmdb}",
        f"data.tokenizer={data.tokenizer}",
    ]
    path = root / "tiny.yaml"
    path.write_text(load_config(None, [*paths, *TINY]).to_yaml())
    return path


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_pretrain_writes_the_run_directory_and_resumes(config_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(main, ["pretrain", str(config_file), "-o", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert f"checkpoint:  {out / 'checkpoints' / 'final.pt'}" in result.output
    assert "samples:" in result.output and "a reference:" in result.output

    # The run directory of the contract.
    assert load_config(out / "config.yaml") == load_config(config_file)
    assert (out / "tokenizer.json").read_text() == Path(
        load_config(config_file).data.tokenizer
    ).read_text()
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_0000004.pt"
    assert any((out / "tb").iterdir())
    metrics = _lines(out / "metrics.jsonl")
    train = [m for m in metrics if m["split"] == "train"]
    assert [m["step"] for m in train] == [1, 2, 3, 4]
    assert {"loss", "lr/visual", "lr/other", "images_per_s", "forward", "backward"} <= set(train[0])
    assert [m["step"] for m in metrics if m["split"] == "val"] == [2, 4]
    samples = _lines(out / "samples.jsonl")
    assert len(samples) == 4 and all(s["references"] for s in samples)
    assert {"step", "image_id", "caption", "references"} == set(samples[0])

    # A self-contained checkpoint, read with weights_only=True.
    checkpoint = torch.load(out / "checkpoints" / "final.pt", weights_only=True)
    assert checkpoint["step"] == 4 and checkpoint["format_version"] == 1
    assert load_config(config_file).to_yaml() == checkpoint["config"]
    assert {"optimizer", "scheduler", "scaler", "rng", "sampler", "versions", "tokenizer"} <= set(
        checkpoint
    )
    assert "lookahead" in checkpoint["optimizer"]
    # Evaluation's preprocessing as typed fields: the config's 32 px, its eval resize (the
    # quickstart's 32: the whole image) and ImageNet statistics.
    assert checkpoint["preprocessing"] == {
        "image_size": 32,
        "eval_resize": 32,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }
    model, spec = load_objective(out / "checkpoints" / "final.pt")
    assert spec.config.textual.width == 32

    # --resume with more steps continues from step 4 (the run directory's config.yaml is used).
    result = runner.invoke(
        main, ["pretrain", "train.num_steps=6", "-o", str(out), "--resume", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert "finished 6 steps" in result.output
    steps = [m["step"] for m in _lines(out / "metrics.jsonl") if m["split"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert torch.load(out / "checkpoints" / "final.pt", weights_only=True)["step"] == 6


def _closed_form_lr(peak: float, step: int, kind: str, warmup: int, total: int) -> float:
    """The learning rate of 1-based step ``step``, written out: linear warm-up to the peak over
    ``warmup`` steps, then cosine or linear decay to 0 over the remaining ``total - warmup``
    steps. Step ``s`` is the ``s``-th update, so its decay progress is ``(s - 1 - warmup)``."""
    if step <= warmup:
        return peak * step / warmup
    progress = (step - 1 - warmup) / (total - warmup)
    if kind == "cosine":
        return peak * (1 + math.cos(math.pi * progress)) / 2
    return peak * (1 - progress)


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_logged_learning_rates_follow_the_configured_schedule(
    config_file: Path, tmp_path: Path, kind: str
) -> None:
    total, warmup, cnn_lr, lr = 6, 2, 0.05, 0.003
    args = [
        f"optim.schedule.kind={kind}", f"optim.schedule.warmup_steps={warmup}",
        f"optim.cnn_lr={cnn_lr}", f"optim.lr={lr}", f"train.num_steps={total}",
        f"train.val_every={total}", f"train.checkpoint_every={total}",
        "train.sample_captions=0",
    ]  # fmt: skip
    result = CliRunner().invoke(
        main, ["pretrain", str(config_file), *args, "-o", str(tmp_path), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    train = [m for m in _lines(tmp_path / "metrics.jsonl") if m["split"] == "train"]
    assert [m["step"] for m in train] == list(range(1, total + 1))
    # By hand, cosine: 1/2, 1, then (1 + cos(pi t)) / 2 for t = 0, 1/4, 1/2, 3/4.
    factors = [_closed_form_lr(1.0, m["step"], kind, warmup, total) for m in train]
    if kind == "cosine":
        assert factors == pytest.approx([0.5, 1.0, 1.0, 0.853553, 0.5, 0.146447], abs=1e-6)
    for record, factor in zip(train, factors, strict=True):
        assert record["lr/visual"] == pytest.approx(cnn_lr * factor, rel=1e-9), record
        assert record["lr/other"] == pytest.approx(lr * factor, rel=1e-9), record
    # What the optimiser last used is the last step's rate, not the next one's.
    groups = torch.load(tmp_path / "checkpoints" / "final.pt", weights_only=True)["optimizer"]
    for group in groups["param_groups"]:
        peak = cnn_lr if group["name"].startswith("visual") else lr
        assert group["lr"] == pytest.approx(peak * factors[-1], rel=1e-9), group["name"]


def test_unknown_key_is_a_usage_error_naming_it(config_file: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["pretrain", str(config_file), "train.num_stpes=3", "-o", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "train.num_stpes" in result.output
    assert "Traceback" not in result.output


def test_missing_config_and_missing_data_are_named(config_file: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["pretrain", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "nope.yaml does not exist" in result.output
    missing = tmp_path / "val.lmdb"
    result = CliRunner().invoke(
        main, ["pretrain", str(config_file), f"data.val_lmdb={missing}", "-o", str(tmp_path / "r")]
    )
    assert result.exit_code == 1
    assert f"data.val_lmdb: {missing} does not exist" in result.output


def test_quickstart_builds_data_and_trains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(quickstart, "QUICKSTART_IMAGES", {"train": 12, "val": 4})
    result = CliRunner().invoke(main, ["pretrain", *TINY, "train.num_steps=2", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "built-in data ready" in result.output
    assert (tmp_path / "data/synth/train.lmdb").exists()
    assert (tmp_path / "runs/quickstart/checkpoints/final.pt").exists()
    # The grounding summary covers every val image, with the shuffled baseline beside it.
    assert "grounding on 4 val images" in result.output
    assert "names the largest object's colour" in result.output and "shuffled" in result.output
    # A second quickstart reuses the data and refuses to overwrite the run.
    result = CliRunner().invoke(main, ["pretrain", *TINY, "--no-progress"])
    assert result.exit_code == 1 and "already holds a run" in result.output
    assert "generating" not in result.output and "note:" not in result.output
    # The built-in captions name the largest object first; data from an older release does not.
    captions = tmp_path / "data/synth/annotations/captions_val.json"
    written = json.loads(captions.read_text())
    assert written["info"]["caption_order"] == "salience"
    del written["info"]["caption_order"]
    captions.write_text(json.dumps(written))
    result = CliRunner().invoke(main, ["pretrain", *TINY, "--no-progress"])
    assert "built with captions in random order, not salience" in result.output


def test_sigterm_saves_and_exits_resumable(config_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "virtex_train.cli", "pretrain", str(config_file)]
    args = ["train.num_steps=100000", "train.checkpoint_every=100000", "train.val_every=100000"]
    process = subprocess.Popen(
        [*command, *args, "-o", str(out), "--no-progress"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 143, output
    assert "interrupted (SIGTERM) at step" in output and "--resume" in output
    latest = (out / "checkpoints" / "latest").read_text().strip()
    step = torch.load(out / "checkpoints" / latest, weights_only=True)["step"]
    assert step >= 2
    assert not (out / "checkpoints" / "final.pt").exists()


@pytest.mark.parametrize(
    "kind", ["captioning", "masked_lm", "token_classification", "multilabel_classification"]
)
def test_every_objective_trains_through_the_same_loop(
    config_file: Path, tmp_path: Path, kind: str
) -> None:
    annotations = Path(load_config(config_file).data.train_lmdb).parent / "annotations"
    instances = [
        f"data.train_instances={annotations / 'instances_train.json'}",
        f"data.val_instances={annotations / 'instances_val.json'}",
    ]
    args = [f"model.kind={kind}", "train.num_steps=2", *instances]
    result = CliRunner().invoke(
        main, ["pretrain", str(config_file), *args, "-o", str(tmp_path), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    model, spec = load_objective(tmp_path / "checkpoints" / "final.pt")
    assert spec.config.kind == kind
    if kind == "multilabel_classification":
        assert spec.num_classes == 6  # the synthetic shapes
    samples = tmp_path / "samples.jsonl"
    assert samples.exists() == (kind == "captioning")  # only captioning decodes captions
