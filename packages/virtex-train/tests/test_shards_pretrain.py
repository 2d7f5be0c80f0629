"""``virtex-train pretrain`` streaming ``data.train_shards``: the quickstart trains and resumes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))

from _tiny import make_tiny_data

from virtex_data.shard_writer import build_shards
from virtex_train.cli import main
from virtex_train.config import ConfigError, load_config
from virtex_train.pretrain import PretrainError, pretrain

pytestmark = pytest.mark.timeout(240)

TINY = [
    "data.transform.image_size=32",
    "data.shuffle_buffer=4",
    "model.textual.width=32",
    "model.textual.ffn=64",
    "model.decoder.max_steps=6",
    "train.batch_size=4",
    "train.num_workers=0",
    "train.log_every=1",
    "train.val_every=2",
    "train.val_batches=1",
    "train.sample_captions=2",
    "train.checkpoint_every=2",
    "train.num_steps=2",
]


@pytest.fixture(scope="module")
def shard_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quickstart config with its training data as 4 shards of 4 images."""
    root = tmp_path_factory.mktemp("shards")
    data = make_tiny_data(root / "data")
    annotations = data.root / "annotations"
    build_shards(
        annotations / "captions_train.json",
        data.root / "train",
        root / "shards",
        shard_size=4,
        progress=False,
    )
    paths = [
        f"data.train_shards={root / 'shards'}/{{00000..00003}}.tar",
        f"data.val_lmdb={data.val_lmdb}",
        f"data.tokenizer={data.tokenizer}",
    ]
    path = root / "shards.yaml"
    path.write_text(load_config(None, [*paths, *TINY]).to_yaml())
    return path


def test_quickstart_trains_from_shards_and_resumes_mid_epoch(
    shard_config: Path, tmp_path: Path
) -> None:
    config = load_config(shard_config)
    assert config.data.train_lmdb is None
    out = tmp_path / "run"
    result = CliRunner().invoke(
        main, ["pretrain", str(shard_config), "-o", str(out), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in metrics if m["split"] == "train"]
    assert [m["step"] for m in train] == [1, 2] and all(m["loss"] > 0 for m in train)
    checkpoint = torch.load(out / "checkpoints" / "step_0000002.pt", weights_only=True)
    state = checkpoint["sampler"]
    assert state["kind"] == "shards" and state["num_shards"] == 4
    rank = state["ranks"][0]
    # 2 steps x 4 images of a 16-image epoch: 8 samples, from completed and in-flight shards.
    assert rank["samples"] == 8 and rank["epoch"] == 0
    in_flight = sum(n for _, n in rank["in_flight"])
    assert 4 * len(rank["completed"]) + in_flight == 8

    # Resume with more steps: it says which shards it re-reads, then trains on.
    more = load_config(out / "config.yaml", ["train.num_steps=5"])
    resumed = pretrain(more, out, resume=True, device="cpu", progress=False)
    assert resumed.step == 5
    final = torch.load(out / "checkpoints" / "final.pt", weights_only=True)
    assert final["sampler"]["ranks"][0]["samples"] == 8 + 3 * 4


def test_resume_message_names_the_shards_in_flight(
    shard_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    pretrain(load_config(shard_config), out, device="cpu", progress=False)
    state = torch.load(out / "checkpoints" / "final.pt", weights_only=True)["sampler"]
    in_flight = state["ranks"][0]["in_flight"]
    assert in_flight  # 8 samples through a buffer of 4 + 1: some shard is still open
    capsys.readouterr()
    pretrain(load_config(out / "config.yaml"), out, resume=True, device="cpu", progress=False)
    printed = capsys.readouterr().out
    assert "rank 0 resumes epoch 0" in printed
    for shard, count in in_flight:
        assert f"{shard:05d}.tar ({count})" in printed


def test_shard_config_errors(shard_config: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="both set"):
        load_config(shard_config, ["data.train_lmdb=x.lmdb"])
    missing = load_config(shard_config, [f"data.train_shards={tmp_path}/{{0..2}}.tar"])
    with pytest.raises(PretrainError, match="3 of 3 shards do not exist"):
        pretrain(missing, tmp_path / "run", device="cpu", progress=False)
    multilabel = load_config(shard_config, ["model.kind=multilabel_classification"])
    with pytest.raises(PretrainError, match="cannot train from shards"):
        pretrain(multilabel, tmp_path / "run2", device="cpu", progress=False)


_RANK = """
import sys
from virtex_train.config import load_config
from virtex_train.pretrain import pretrain
result = pretrain(load_config(sys.argv[1]), sys.argv[2], device="cpu", progress=False)
print("step", result.step)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_two_gloo_ranks_pretrain_from_disjoint_shards(shard_config: Path, tmp_path: Path) -> None:
    """`pretrain` under DDP: each rank streams its own shards; rank 0's checkpoint holds both."""
    out = tmp_path / "run"
    port = _free_port()
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank)}
        env.update(
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            PYTHONPATH=os.pathsep.join(sys.path),
            OMP_NUM_THREADS="1",
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _RANK, str(shard_config), str(out)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    for proc in procs:
        output, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0 and "step 2" in output, output
    state = torch.load(out / "checkpoints" / "final.pt", weights_only=True)["sampler"]
    assert state["world_size"] == 2 and len(state["ranks"]) == 2
    # 2 steps x a global batch of 4 = 2 samples per rank per step.
    assert [r["samples"] for r in state["ranks"]] == [4, 4]
    opened = [{*r["completed"], *(s for s, _ in r["in_flight"])} for r in state["ranks"]]
    assert opened[0] and opened[1] and not opened[0] & opened[1]


def test_sigterm_mid_epoch_checkpoints_what_was_trained_and_resumes(
    shard_config: Path, tmp_path: Path
) -> None:
    """SIGTERM with a DataLoader worker prefetching: the checkpoint counts trained batches only."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "virtex_train.cli", "pretrain", str(shard_config)]
    args = ["train.num_steps=100000", "train.checkpoint_every=100000", "train.val_every=100000"]
    args += ["train.num_workers=1"]
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
    latest = (out / "checkpoints" / "latest").read_text().strip()
    checkpoint = torch.load(out / "checkpoints" / latest, weights_only=True)
    step, rank = checkpoint["step"], checkpoint["sampler"]["ranks"][0]
    # 4 images per step; the worker prefetched more, which the state must not count.
    assert step >= 2 and rank["samples"] == 4 * step
    # This epoch's consumed samples (16 per epoch): whole completed shards + in-flight counts.
    this_epoch = 4 * step - 16 * rank["epoch"]
    assert 4 * len(rank["completed"]) + sum(n for _, n in rank["in_flight"]) == this_epoch

    resumed = CliRunner().invoke(
        main,
        [
            "pretrain",
            str(out / "config.yaml"),
            f"train.num_steps={step + 1}",
            "-o",
            str(out),
            "--resume",
            "--no-progress",
        ],
    )
    assert resumed.exit_code == 0, resumed.output
    assert f"rank 0 resumes epoch {rank['epoch']}" in resumed.output
