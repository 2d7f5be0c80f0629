"""Multi-node runs on a real two-node Slurm cluster: network namespaces ``node1``/``node2`` on a
bridge, each with its own host name and slurmd (``slurm_cluster.py``, ``.ci/slurm-up --nodes 2``).

- 2 nodes x 1 CPU task through ``virtex-train submit``: the losses and weights of a single
  process on the combined batch;
- one job that is preempted (``scontrol requeue``), then has a peer stopped (SIGSTOP: the other
  rank's collective times out and requeues the job), then loses node2 (every process of its
  namespace SIGKILLed: Slurm requeues the job when it notices); it resumes each time and ends
  with the weights of the uninterrupted run, every step logged once;
- ``torchrun --nnodes 2 --rdzv-backend c10d`` started in both namespaces, no Slurm.

Skipped, with the reason, where network namespaces cannot be made (not root / no CAP_NET_ADMIN)
or Slurm is not installed. The model is made deterministic (frozen BatchNorm, no dropout, no
random crop/flip/jitter, one caption per image, every caption the same number of tokens) so that
two ranks of 2 images compute exactly what one process of 4 does, up to float summation order.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from virtex_train.cli_submit import submit_command
from virtex_train.config import load_config
from virtex_train.slurm import checkpoint_step

sys.path.insert(0, str(Path(__file__).parent))
import slurm_cluster
from _tiny import TinyData, ToyCaptions, toy_model

pytestmark = pytest.mark.slurm

WORKER = Path(__file__).parent / "_ddp_worker.py"
#: Enough steps after the third attempt's first checkpoint for the test to kill node2 first.
NUM_STEPS = 32
CHECKPOINT_EVERY = 4
#: Short, so that the stalled-peer phase costs seconds (the default is 300 s).
COLLECTIVE_TIMEOUT_S = 6
#: Words of every caption, in an order that varies with the image: all captions tokenise to the
#: same length, so that a rank's mean over its tokens is the mean over its images.
WORDS = ("a", "red", "small", "circle", "left", "of", "the", "blue", "square")


# --------------------------------------------------------------------------- cluster and data


@pytest.fixture(scope="module")
def cluster2() -> Iterator[slurm_cluster.SlurmCluster]:
    """The multi-node cluster `.ci/slurm-up --nodes 2` started (SLURM_CONF or /tmp/virtex-slurm),
    else a private one started here; skipped where namespaces cannot be made."""
    reason = slurm_cluster.multinode_unavailable_reason()
    if reason is not None:
        pytest.skip(f"no multi-node test cluster: {reason}")
    candidates = [Path(os.environ["SLURM_CONF"]).parent] if "SLURM_CONF" in os.environ else []
    candidates.append(slurm_cluster.DEFAULT_DIR)
    for root in candidates:
        running = slurm_cluster.attach(root)
        if running is not None and running.multinode and running.runs_jobs_of(getpass.getuser()):
            yield running
            return
    started = slurm_cluster.start(nodes=2)
    try:
        yield started
    finally:
        started.stop()


def uniform_caption_data(root: Path) -> TinyData:
    """16 + 8 synthetic 32 px images, one caption each, every caption of the same token count."""
    from virtex_data.lmdb_writer import build_lmdb
    from virtex_data.synth import generate
    from virtex_data.tokenizer import CaptionTokenizer

    data = TinyData(root, root / "train.lmdb", root / "val.lmdb", root / "tokenizer.json")
    generate(root, train=16, val=8, size=32, workers=1, progress=False)
    captions: list[str] = []
    for split in ("train", "val"):
        path = root / "annotations" / f"captions_{split}.json"
        coco = json.loads(path.read_text())
        ids = sorted({a["image_id"] for a in coco["annotations"]})
        coco["annotations"] = []
        for n, image_id in enumerate(ids):
            words = WORDS[n % len(WORDS) :] + WORDS[: n % len(WORDS)]  # a rotation
            caption = " ".join(words)
            coco["annotations"].append({"id": n, "image_id": image_id, "caption": caption})
            captions.append(caption)
        path.write_text(json.dumps(coco))
    tokenizer = CaptionTokenizer.train(captions, vocab_size=120)
    lengths = {len(tokenizer.encode(caption)) for caption in captions}
    assert len(lengths) == 1, f"captions tokenise to {sorted(lengths)} tokens: pick other words"
    tokenizer.save(data.tokenizer)
    for split in ("train", "val"):
        build_lmdb(
            root / "annotations" / f"captions_{split}.json",
            root / split,
            root / f"{split}.lmdb",
            progress=False,
        )
    return data


def overrides(data: TinyData) -> list[str]:
    return [
        f"data.train_lmdb={data.train_lmdb}",
        f"data.val_lmdb={data.val_lmdb}",
        f"data.tokenizer={data.tokenizer}",
        "data.max_caption_length=20",
        "data.transform.image_size=32",
        "data.transform.crop_scale=[1.0, 1.0]",
        "data.transform.crop_ratio=[1.0, 1.0]",
        "data.transform.hflip=0",
        "data.transform.color_jitter=null",
        "model.visual.name=resnet18",
        "model.visual.frozen=true",  # BatchNorm in eval mode: no per-rank batch statistics
        "model.textual.layers=1",
        "model.textual.width=32",
        "model.textual.heads=2",
        "model.textual.ffn=64",
        "model.textual.dropout=0",
        f"train.num_steps={NUM_STEPS}",
        f"train.checkpoint_every={CHECKPOINT_EVERY}",
        "train.batch_size=4",
        "train.num_workers=0",
        "train.val_every=0",
        "train.log_every=1",
        "train.precision=fp32",
        # The settings this equivalence was measured with (the quickstart has since dropped
        # Lookahead): Lookahead halves each step's distance, and the ulp-level differences of
        # another summation order with it.
        "optim.lookahead.enabled=true",
    ]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> TinyData:
    return uniform_caption_data(tmp_path_factory.mktemp("uniform-data"))


# --------------------------------------------------------------------------- jobs


@dataclass(frozen=True)
class Submitted:
    job_id: str
    out: Path


def submit_two_nodes(
    cluster: slurm_cluster.SlurmCluster, data: TinyData, out: Path, *extra: str
) -> Submitted:
    """``virtex-train submit ... --nodes 2 --gpus-per-node 0`` (the command-line entry point)."""
    args = [
        *overrides(data),
        "-o",
        str(out),
        "--nodes",
        "2",
        "--gpus-per-node",
        "0",
        "--cpus-per-task",
        "1",
        "--time",
        "10",
        "--partition",
        cluster.partition,
        *extra,
    ]
    env = {"SLURM_CONF": str(cluster.conf), "OMP_NUM_THREADS": "1"}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)  # inherited by the job (sbatch exports the environment)
        result = CliRunner().invoke(submit_command, args)
    assert result.exit_code == 0, result.output
    match = re.search(r"submitted job (\d+)", result.output)
    assert match is not None, result.output
    return Submitted(match.group(1), out)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, run: Submitted) -> float:
    """Polls ``predicate`` until true; returns the seconds waited, or fails with the job's logs."""
    start = time.monotonic()
    while time.monotonic() < start + timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.1)
    logs = "\n".join(
        f"--- {path.name}\n{path.read_text(errors='replace')[-2500:]}"
        for path in sorted((run.out / "slurm").glob("*_log.*"))
    )
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{logs}")


def job_info(cluster: slurm_cluster.SlurmCluster, job_id: str) -> dict[str, str]:
    text = cluster.run("scontrol", "show", "job", job_id, "-o", check=False).stdout
    return dict(item.split("=", 1) for item in text.split() if "=" in item)


def running_attempt(cluster: slurm_cluster.SlurmCluster, job_id: str, restarts: int) -> bool:
    info = job_info(cluster, job_id)
    return info.get("JobState") == "RUNNING" and info.get("Restarts") == str(restarts)


def wait_finished(cluster: slurm_cluster.SlurmCluster, run: Submitted, timeout: float) -> None:
    """Both tasks wrote their result (no accounting here: job.result() could wait forever)."""

    def done() -> bool:
        results = [run.out / "slurm" / f"{run.job_id}_{task}_result.pkl" for task in (0, 1)]
        return all(path.exists() for path in results) and job_info(cluster, run.job_id).get(
            "JobState"
        ) in ("COMPLETED", None)

    wait_for(done, timeout, f"job {run.job_id} to finish", run)
    assert job_info(cluster, run.job_id).get("JobState", "COMPLETED") == "COMPLETED"


def train_losses(out: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in records if r["split"] == "train"]


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(out / "checkpoints" / "final.pt", weights_only=True)
    model: dict[str, torch.Tensor] = checkpoint["model"]
    return model


def assert_same_weights(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    largest = max(float((got[name] - t).abs().max()) for name, t in expected.items() if t.numel())
    print(f"largest weight difference: {largest:.3g}")  # shown with -s: 0 means bitwise equal
    for name, tensor in expected.items():
        # float32 sums in another order differ by a few ulp per step (test_distributed.py).
        torch.testing.assert_close(got[name], tensor, rtol=1e-5, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def uninterrupted(
    cluster2: slurm_cluster.SlurmCluster,
    data: TinyData,
    tmp_path_factory: pytest.TempPathFactory,
) -> Submitted:
    """A 2-node run left alone; submitted once, not waited for (tests wait for it)."""
    return submit_two_nodes(cluster2, data, tmp_path_factory.mktemp("two-nodes"))


# --------------------------------------------------------------------------- tests


def test_interrupted_two_node_job_resumes_after_preemption_stall_and_node_loss(
    cluster2: slurm_cluster.SlurmCluster,
    data: TinyData,
    uninterrupted: Submitted,
    torchrun_pair: TorchrunPair,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # Runs while `uninterrupted` and `torchrun_pair` (started by the fixtures) train: their work
    # fills this test's waits for Slurm.
    run = submit_two_nodes(
        cluster2,
        data,
        tmp_path_factory.mktemp("interrupted"),
        "--collective-timeout",
        str(COLLECTIVE_TIMEOUT_S),
    )
    timings: dict[str, float] = {}

    def step() -> int:
        return checkpoint_step(run.out) or 0

    # 1. Preemption: what an administrator's (or a preempting job's) requeue does.
    wait_for(lambda: step() >= CHECKPOINT_EVERY, 120, "a first checkpoint", run)
    cluster2.run("scontrol", "requeue", run.job_id)
    timings["preempted->running"] = wait_for(
        lambda: running_attempt(cluster2, run.job_id, 1), 120, "the requeued job", run
    )
    resumed = step()
    assert resumed >= CHECKPOINT_EVERY

    # 2. A stalled peer: rank 1 (node2) stops answering; rank 0's collective times out and the
    # job requeues itself instead of hanging until its time limit.
    wait_for(lambda: step() > resumed, 120, "a checkpoint of the second attempt", run)
    (task,) = task_pids(cluster2, "node2", run)
    os.kill(task, signal.SIGSTOP)
    request = run.out / "slurm" / "peer_failures" / f"{run.job_id}.1"
    timings["stalled->requeue requested"] = wait_for(
        request.exists, COLLECTIVE_TIMEOUT_S + 30, "the stalled peer's requeue", run
    )
    assert "rank 0" in request.read_text()
    timings["requeue requested->running"] = wait_for(
        lambda: running_attempt(cluster2, run.job_id, 2), 120, "the job after the stall", run
    )
    resumed = step()

    # 3. node2 loses power: every process of its namespace is killed (slurmd included).
    wait_finished(cluster2, uninterrupted, 180)  # both have a process on node2 too
    torchrun_pair.wait()
    wait_for(lambda: step() > resumed, 120, "a checkpoint of the third attempt", run)
    killed = cluster2.kill_node("node2")
    assert killed, "nothing ran in node2's namespace"
    timings["node lost->down"] = wait_for(
        lambda: cluster2.node_states().get("node2", "").startswith("down"),
        90,
        "Slurm to mark node2 down",
        run,
    )
    assert cluster2.revive() == ["node2"]
    back = time.monotonic()
    wait_finished(cluster2, run, 180)
    timings["node back->finished"] = time.monotonic() - back
    print(f"timings (s): {json.dumps({k: round(v, 1) for k, v in timings.items()})}")

    info = job_info(cluster2, run.job_id)
    assert info["Restarts"] == "3", info
    log = (cluster2.root / "slurmctld.log").read_text(errors="replace")
    assert f"JobId={run.job_id}" in log
    # Resumed each time, never restarted from scratch: every step logged once.
    assert [s for s, _ in train_losses(run.out)] == list(range(1, NUM_STEPS + 1))
    # Deterministic run (see the module docstring): three interruptions change nothing.
    assert_same_weights(final_weights(run.out), final_weights(uninterrupted.out))
    expected = dict(train_losses(uninterrupted.out))
    assert dict(train_losses(run.out)) == pytest.approx(expected, rel=1e-5)


def task_pids(cluster: slurm_cluster.SlurmCluster, node: str, run: Submitted) -> list[int]:
    """The job's task processes (``python -m submitit.core._submit OUT/slurm``) on ``node``."""
    pids = []
    for pid in cluster.namespace_pids(node):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"submitit.core._submit" in argv and str(run.out / "slurm").encode() in argv:
            pids.append(pid)
    return pids


def test_two_nodes_equal_one_process_on_the_combined_batch(
    cluster2: slurm_cluster.SlurmCluster,
    data: TinyData,
    uninterrupted: Submitted,
    tmp_path: Path,
) -> None:
    wait_finished(cluster2, uninterrupted, 180)
    info = job_info(cluster2, uninterrupted.job_id)
    assert info["NodeList"] in ("node[1-2]", "node1,node2"), info
    assert info["NumNodes"] == "2", info
    # The single-process reference: the same run in this process, world size 1, the global
    # batch of 4 in one piece (the 2 ranks each take every second image of the same order).
    from virtex_train.pretrain import run_pretraining

    config = load_config(None, overrides(data))
    run_pretraining(config, tmp_path / "one-process")
    two = train_losses(uninterrupted.out)
    one = train_losses(tmp_path / "one-process")
    assert [s for s, _ in two] == [s for s, _ in one] == list(range(1, NUM_STEPS + 1))
    assert [loss for _, loss in two] == pytest.approx([loss for _, loss in one], rel=1e-5)
    assert_same_weights(final_weights(uninterrupted.out), final_weights(tmp_path / "one-process"))


class TorchrunPair:
    """``torchrun --nnodes 2`` started in each namespace (``_ddp_worker.py``, 4 plain steps)."""

    steps = 4

    def __init__(self, cluster: slurm_cluster.SlurmCluster, out: Path) -> None:
        self.out = out
        slurmd_port = next(
            int(line.split("=", 1)[1])
            for line in cluster.conf.read_text().splitlines()
            if line.startswith("SlurmdPort=")
        )
        port = 29400 if slurmd_port != 29400 else 29401
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.outputs: dict[str, str] = {}
        for node in ("node1", "node2"):
            torchrun = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                "--nproc-per-node=1",
                "--rdzv-backend=c10d",
                f"--rdzv-endpoint=node1:{port}",
                "--rdzv-id=virtex-test",
                "--max-restarts=0",
                str(WORKER),
                str(out),
                str(self.steps),
                "plain",
            ]
            # Its own host name, as on a real node: gloo advertises the address it resolves to.
            script = f"hostname {node} && exec " + " ".join(torchrun)
            namespace = f"--net=/run/netns/{slurm_cluster.namespace(node)}"
            self.procs[node] = subprocess.Popen(
                ["nsenter", namespace, "unshare", "--uts", "sh", "-c", script],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )

    def wait(self, timeout: float = 180) -> dict[str, str]:
        """Waits for both (killing them after ``timeout``); returns their output by node."""
        deadline = time.monotonic() + timeout
        try:
            for node, proc in self.procs.items():
                if node not in self.outputs:
                    remaining = max(1.0, deadline - time.monotonic())
                    self.outputs[node], _ = proc.communicate(timeout=remaining)
        finally:
            for proc in self.procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
        return self.outputs


@pytest.fixture(scope="module")
def torchrun_pair(
    cluster2: slurm_cluster.SlurmCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TorchrunPair]:
    """Started once, early: it runs while the Slurm jobs wait for Slurm."""
    pair = TorchrunPair(cluster2, tmp_path_factory.mktemp("torchrun"))
    yield pair
    pair.wait(timeout=1)


def test_torchrun_rendezvous_across_the_two_nodes(torchrun_pair: TorchrunPair) -> None:
    """``torchrun --nnodes 2 --rdzv-backend c10d --rdzv-endpoint node1:PORT``, no Slurm."""
    outputs = torchrun_pair.wait()
    for node, proc in torchrun_pair.procs.items():
        assert proc.returncode == 0, f"{node}:\n{outputs[node]}"
    steps = torchrun_pair.steps
    ranks = [torch.load(torchrun_pair.out / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert [r["step"] for r in ranks] == [steps, steps]
    for a, b in zip(ranks[0]["params"], ranks[1]["params"]):
        assert torch.equal(a, b)  # one model, kept in step over the bridge
    # The same steps in one process on the combined batch (as in test_distributed.py).
    toy = ToyCaptions(16)
    model = toy_model(dropout=0.0, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for index in range(steps):
        epoch, within = divmod(index, 2)
        order = torch.randperm(16, generator=torch.Generator().manual_seed(epoch)).tolist()
        optimizer.zero_grad()
        parts = [order[r::2][4 * within : 4 * within + 4] for r in range(2)]
        loss = sum(model(toy.collate(part)).loss for part in parts) / 2
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    assert ranks[0]["losses"] == pytest.approx(losses, rel=1e-5)
