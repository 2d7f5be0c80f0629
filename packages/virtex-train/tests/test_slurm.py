"""``virtex-train submit``: sbatch parameters, the job callable, checkpoint + requeue + resume.

Fast tests use submitit's local executor (same signal and requeue code path as on Slurm). Tests
marked ``slurm`` run against a real single-node cluster (``slurm_cluster.py``): the one
``.ci/slurm-up`` started, else a private one started here; skipped when Slurm is not installed.
"""

from __future__ import annotations

import getpass
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from click.testing import CliRunner

from virtex_train.cli_submit import submit_command
from virtex_train.config import ExperimentConfig, load_config
from virtex_train.distributed import detect_env
from virtex_train.slurm import (
    RunInterrupted,
    SlurmResources,
    TaskEnvironment,
    TrainJob,
    checkpoint_step,
    make_executor,
    rendezvous_port,
    sbatch_script,
    slurm_parameters,
    submit,
)

sys.path.insert(0, str(Path(__file__).parent))
import slurm_cluster

# The stand-in trainer below runs inside submitit jobs, which cannot import this test module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

STEP_SECONDS = 0.05


# --------------------------------------------------------------------------- stand-in trainer


def _save(output_dir: Path, step: int) -> None:
    directory = output_dir / "checkpoints"
    directory.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:07d}.pt"
    (directory / name).write_text(f"{step}\n")
    tmp = directory / "latest.tmp"
    tmp.write_text(name + "\n")
    os.replace(tmp, directory / "latest")


def fake_pretraining(config: ExperimentConfig, output_dir: Path, *, resume: bool = False) -> Path:
    """The trainer's run-directory and signal contract without a model.

    Checkpoints every ``train.checkpoint_every`` steps and, on SIGTERM, after the current step
    (like ``Trainer``); resumes from ``checkpoints/latest``; appends one JSON line per attempt
    and rank to ``attempts.jsonl``.
    """
    rank = int(os.environ.get("RANK", "0"))
    start = (checkpoint_step(output_dir) or 0) if resume else 0
    stop: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
    keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    record: dict[str, Any] = {
        "rank": rank,
        "start": start,
        "env": {key: os.environ.get(key) for key in keys},
        "slurm_job": os.environ.get("SLURM_JOB_ID"),
        "slurm_restarts": os.environ.get("SLURM_RESTART_COUNT", "0"),
    }
    step = start
    try:
        while step < config.train.num_steps:
            time.sleep(STEP_SECONDS)
            step += 1
            every = config.train.checkpoint_every
            last = step == config.train.num_steps
            if rank == 0 and (last or stop or (every and step % every == 0)):
                _save(output_dir, step)
            if stop:
                break
    finally:
        signal.signal(signal.SIGTERM, previous)
    record.update(end=step, stopped=bool(stop))
    with (output_dir / "attempts.jsonl").open("a") as log:
        log.write(json.dumps(record) + "\n")
    return output_dir / "checkpoints" / f"step_{step:07d}.pt"


def attempts(output_dir: Path) -> list[dict[str, Any]]:
    path = output_dir / "attempts.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, logs: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    text = "\n".join(
        f"--- {path.name}\n{path.read_text(errors='replace')[-2000:]}"
        for path in sorted(logs.glob("*_log.*"))
    )
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{text}")


def child_pids(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def small_config(num_steps: int, checkpoint_every: int) -> ExperimentConfig:
    return load_config(
        None,
        [
            f"train.num_steps={num_steps}",
            f"train.checkpoint_every={checkpoint_every}",
            "train.num_workers=0",
            "train.batch_size=4",
        ],
    )


# --------------------------------------------------------------------------- parameters


def test_one_task_per_gpu_on_every_node() -> None:
    resources = SlurmResources(
        nodes=4,
        gpus_per_node=8,
        time_min=1440,
        partition="gpu",
        account="vision",
        qos="high",
        cpus_per_task=10,
        mem="0",
        extra={"constraint": "a100"},
    )
    assert resources.world_size == 32
    params = slurm_parameters(resources)
    assert params["nodes"] == 4
    assert params["ntasks_per_node"] == 8
    assert params["gpus_per_node"] == 8
    assert params["time"] == 1440
    assert params["additional_parameters"] == {"requeue": True, "constraint": "a100", "mem": "0"}


def test_sbatch_script_holds_every_requested_option(tmp_path: Path) -> None:
    resources = SlurmResources(
        nodes=2,
        gpus_per_node=8,
        time_min=600,
        partition="gpu",
        account="vision",
        qos="high",
        cpus_per_task=9,
        mem="64G",
        job_name="virtex-r50",
        signal_delay_s=150,
        setup=("module load cuda",),
    )
    script = sbatch_script(tmp_path, resources)
    lines = set(script.splitlines())
    for expected in (
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --time=600",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=vision",
        "#SBATCH --qos=high",
        "#SBATCH --cpus-per-task=9",
        "#SBATCH --mem=64G",
        "#SBATCH --job-name=virtex-r50",
        "#SBATCH --signal=USR2@150",
        "#SBATCH --requeue",
        f"#SBATCH --output={tmp_path}/slurm/%j_0_log.out",
        "module load cuda",
    ):
        assert expected in lines, f"{expected!r} missing from\n{script}"
    assert f"-m submitit.core._submit {tmp_path}/slurm" in script
    assert "srun" in script


def test_cpu_job_has_no_gpu_request(tmp_path: Path) -> None:
    resources = SlurmResources(nodes=1, gpus_per_node=0, tasks_per_node=3, time_min=10)
    assert resources.world_size == 3
    script = sbatch_script(tmp_path, resources)
    assert "#SBATCH --ntasks-per-node=3" in script
    assert "gpus" not in script


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gpus_per_node": 8, "tasks_per_node": 2}, "one task per GPU"),
        ({"mem": "64GB"}, "not a Slurm size"),
        ({"time_min": 1, "signal_delay_s": 60}, "not shorter than the time limit"),
        ({"nodes": 0}, "nodes must be >= 1"),
        ({"extra": {"--bad option": "x"}}, "not an option name"),
        ({"collective_timeout_s": 0}, "collective_timeout_s must be > 0"),
        ({"max_peer_failures": -1}, "max_peer_failures must be >= 0"),
    ],
)
def test_bad_resources_are_refused_with_the_reason(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SlurmResources(**kwargs)


# --------------------------------------------------------------------------- in the job


def test_rendezvous_port_is_shared_by_a_job_and_varies_between_jobs() -> None:
    ports = {rendezvous_port(str(job)) for job in range(1000, 1200)}
    assert all(20000 <= port < 60000 for port in ports)
    assert len(ports) > 190  # crc32 spreads consecutive ids
    assert rendezvous_port("4242") == rendezvous_port("4242")


def test_exported_environment_is_what_the_trainer_detects() -> None:
    task = TaskEnvironment(
        rank=11,
        local_rank=3,
        world_size=16,
        local_world_size=8,
        master_addr="n1",
        master_port=23456,
    )
    environ: dict[str, str] = {"SLURM_PROCID": "11", "SLURM_NTASKS": "16", "SLURM_STEP_ID": "0"}
    task.export(environ)
    env = detect_env(environ)
    assert (env.rank, env.world_size, env.local_rank) == (11, 16, 3)
    assert (env.master_addr, env.master_port) == ("n1", 23456)


def test_checkpoint_step_reads_the_latest_pointer(tmp_path: Path) -> None:
    assert checkpoint_step(tmp_path) is None
    _save(tmp_path, 120)
    assert checkpoint_step(tmp_path) == 120
    (tmp_path / "checkpoints" / "latest").write_text("final.pt\n")
    with pytest.raises(ValueError, match="latest names 'final.pt'"):
        checkpoint_step(tmp_path)


def test_requeued_submission_is_the_same_run(tmp_path: Path) -> None:
    config = small_config(10, 5)
    job = TrainJob(
        config, tmp_path, fake_pretraining, collective_timeout_s=12.5, max_peer_failures=7
    )
    again = job.checkpoint().function
    assert isinstance(again, TrainJob)
    assert again is not job
    assert again.train_function is fake_pretraining
    # The requeued copy and the pickle submitit sends to the tasks (the stand-in trainer is
    # pickled by value, so it comes back as an equal function, not the same object).
    for copy in (again, cloudpickle.loads(cloudpickle.dumps(job))):
        assert (copy.config, copy.output_dir) == (config, tmp_path)
        assert copy.train_function.__name__ == "fake_pretraining"
        assert (copy.collective_timeout_s, copy.max_peer_failures) == (12.5, 7)


def test_a_peer_failure_requeues_once_per_attempt_up_to_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = tmp_path / "scontrol-calls"
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    scontrol = fake_bin / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    for key, value in {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "41", "RANK": "1"}.items():
        monkeypatch.setenv(key, value)
    job = TrainJob(small_config(10, 5), tmp_path, fake_pretraining, max_peer_failures=2)
    error = RuntimeError("[gloo] Timed out waiting 6000ms for recv operation to complete")

    def requeue_calls() -> list[str]:
        return calls.read_text().splitlines() if calls.exists() else []

    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    assert job.requeue_after_peer_failure(error)
    assert job.requeue_after_peer_failure(error)  # another rank of the same attempt
    assert requeue_calls() == ["requeue 41"]  # asked once
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert job.requeue_after_peer_failure(error)
    assert requeue_calls() == ["requeue 41", "requeue 41"]
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert not job.requeue_after_peer_failure(error)  # max_peer_failures=2 reached
    assert len(requeue_calls()) == 2
    request = tmp_path / "slurm" / "peer_failures" / "41.0"
    assert request.read_text() == f"rank 1: {error}\n"
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")  # no Slurm to requeue through
    monkeypatch.setenv("SLURM_RESTART_COUNT", "5")
    assert not job.requeue_after_peer_failure(error)


@pytest.fixture
def local_job_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """What submitit's local executor exports to a one-task job."""
    for key, value in {
        "SUBMITIT_EXECUTOR": "local",
        "SUBMITIT_LOCAL_JOB_ID": "777",
        "SUBMITIT_LOCAL_NTASKS": "1",
        "SUBMITIT_LOCAL_JOB_NUM_NODES": "1",
        "SUBMITIT_LOCAL_NODEID": "0",
        "SUBMITIT_LOCAL_GLOBALID": "0",
        "SUBMITIT_LOCAL_LOCALID": "0",
    }.items():
        monkeypatch.setenv(key, value)
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR2)}
    yield
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


@pytest.mark.usefixtures("local_job_environment")
def test_task_environment_of_the_second_task(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUBMITIT_LOCAL_NTASKS", "2")
    monkeypatch.setenv("SUBMITIT_LOCAL_GLOBALID", "1")
    monkeypatch.setenv("SUBMITIT_LOCAL_LOCALID", "1")
    task = TaskEnvironment.from_submitit()
    assert (task.rank, task.local_rank, task.world_size, task.local_world_size) == (1, 1, 2, 2)
    assert task.master_port == rendezvous_port("777")


@pytest.mark.usefixtures("local_job_environment")
def test_a_finished_run_returns_its_checkpoint(tmp_path: Path) -> None:
    result = TrainJob(small_config(6, 3), tmp_path, fake_pretraining)()
    assert result == tmp_path / "checkpoints" / "step_0000006.pt"
    (record,) = attempts(tmp_path)
    assert record["env"]["RANK"] == "0"
    assert record["env"]["WORLD_SIZE"] == "1"
    assert record["env"]["MASTER_PORT"] == str(rendezvous_port("777"))


@pytest.mark.usefixtures("local_job_environment")
def test_sigterm_without_requeue_signal_is_an_error_not_a_result(tmp_path: Path) -> None:
    def interrupted_run(
        config: ExperimentConfig, output_dir: Path, *, resume: bool = False
    ) -> Path:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        previous = signal.signal(signal.SIGALRM, lambda *_: os.kill(os.getpid(), signal.SIGTERM))
        try:
            return fake_pretraining(config, output_dir, resume=resume)
        finally:
            signal.signal(signal.SIGALRM, previous)

    with pytest.raises(RunInterrupted, match="stopped at step [0-9]+ of 1000 on a signal"):
        TrainJob(small_config(1000, 0), tmp_path, interrupted_run)()
    (record,) = attempts(tmp_path)
    assert record["stopped"]
    assert 0 < record["end"] < 1000
    assert checkpoint_step(tmp_path) == record["end"]  # saved where it stopped


# --------------------------------------------------------------------------- local executor


@dataclass(frozen=True)
class LightTrain:
    num_steps: int
    checkpoint_every: int


@dataclass(frozen=True)
class LightConfig:
    """The part of ``ExperimentConfig`` TrainJob and the stand-in read; unpickling it in the job
    imports no torch (importing ``virtex_train.config`` costs 4-8 s per process here)."""

    train: LightTrain


def test_local_executor_requeue_resumes_from_the_checkpoint(tmp_path: Path) -> None:
    resources = SlurmResources(gpus_per_node=0, time_min=5)
    config: Any = LightConfig(LightTrain(num_steps=120, checkpoint_every=20))
    executor = make_executor(tmp_path, resources, cluster="local")
    job = executor.submit(TrainJob(config, tmp_path, fake_pretraining))
    logs = tmp_path / "slurm"
    wait_for(lambda: (checkpoint_step(tmp_path) or 0) >= 20, 60, "a first checkpoint", logs)
    # Slurm signals every task; submitit's LocalJob._interrupt() signals only the controller,
    # which does not forward SIGUSR2.
    (task,) = child_pids(job._process.pid)
    os.kill(task, signal.SIGUSR2)
    wait_for(lambda: job.done(), 60, "the requeued job to finish", logs)
    assert job.result() == tmp_path / "checkpoints" / "step_0000120.pt"
    first, second = attempts(tmp_path)
    assert first["start"] == 0
    assert first["stopped"]
    assert 20 <= first["end"] < 120
    assert second["start"] == first["end"]  # resumed where the first attempt checkpointed
    assert second["end"] == 120
    assert not second["stopped"]


# --------------------------------------------------------------------------- command line


def test_dry_run_prints_the_batch_script_and_submits_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [
        "train.batch_size=64",
        "train.num_workers=1",  # a CPU per loader process, plus one
        "--output-dir",
        str(out),
        "--nodes",
        "2",
        "--gpus-per-node",
        "8",
        "--partition",
        "gpu",
        "--time",
        "120",
        "--account",
        "vision",
        "--qos",
        "high",
        "--mem",
        "0",
        "--slurm-arg",
        "constraint=a100",
        "--dry-run",
    ]
    result = CliRunner().invoke(submit_command, args)
    assert result.exit_code == 0, result.output
    assert "16 task(s): 2 node(s) x 8 (1 GPU, 2 CPU(s) each); 4 images per task" in result.output
    for line in (
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --cpus-per-task=2",  # quickstart: train.num_workers=1, plus the trainer
        "#SBATCH --constraint=a100",
        "#SBATCH --job-name=virtex-run",
    ):
        assert line in result.output.splitlines()
    assert not out.exists()


def test_batch_that_does_not_split_over_the_tasks_is_refused_before_queueing(
    tmp_path: Path,
) -> None:
    args = ["train.batch_size=32", "-o", str(tmp_path), "--nodes", "3", "--time", "60"]
    result = CliRunner().invoke(submit_command, [*args, "--dry-run"])
    assert result.exit_code != 0
    assert "train.batch_size=32 does not split over 24 tasks" in result.output


def test_submit_without_slurm_says_so_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    # No CONFIG: the quickstart, whose built-in data would be generated in ./data/synth.
    args = ["-o", "run", "--time", "60"]
    result = CliRunner().invoke(submit_command, args, env={"PATH": str(tmp_path)})
    assert result.exit_code != 0
    assert "srun not found" in result.output
    assert not (tmp_path / "run").exists()
    assert not (tmp_path / "data").exists()


def test_time_limit_is_required(tmp_path: Path) -> None:
    result = CliRunner().invoke(submit_command, ["-o", str(tmp_path), "--dry-run"])
    assert result.exit_code != 0
    assert "--time" in result.output


def test_bad_override_names_the_key(tmp_path: Path) -> None:
    args = ["train.num_stepz=3", "-o", str(tmp_path), "--time", "60", "--dry-run"]
    result = CliRunner().invoke(submit_command, args)
    assert result.exit_code != 0
    assert "num_stepz" in result.output


def test_cli_registers_submit() -> None:
    from virtex_train.cli import main

    result = CliRunner().invoke(main, ["submit", "--help"])
    assert result.exit_code == 0, result.output
    assert "--gpus-per-node" in result.output


# --------------------------------------------------------------------------- real Slurm


@pytest.fixture(scope="module")
def cluster() -> Iterator[slurm_cluster.SlurmCluster]:
    """The cluster `.ci/slurm-up` started (SLURM_CONF or /tmp/virtex-slurm), else a private one."""
    candidates = [Path(os.environ["SLURM_CONF"]).parent] if "SLURM_CONF" in os.environ else []
    candidates.append(slurm_cluster.DEFAULT_DIR)
    reason = slurm_cluster.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    for root in candidates:
        running = slurm_cluster.attach(root)
        if running is not None and running.runs_jobs_of(getpass.getuser()):
            yield running
            return
    started = slurm_cluster.start()
    try:
        yield started
    finally:
        started.stop()


def scontrol_job(cluster: slurm_cluster.SlurmCluster, job_id: str) -> dict[str, str]:
    text = cluster.run("scontrol", "show", "job", job_id, "-o").stdout
    return dict(item.split("=", 1) for item in text.split() if "=" in item)


def recorded_pretraining(
    config: ExperimentConfig, output_dir: Path, *, resume: bool = False
) -> Path:
    """The real ``run_pretraining``, plus one line per attempt: the checkpoint it started from."""
    from virtex_train.pretrain import run_pretraining

    keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    record: dict[str, Any] = {
        "env": {key: os.environ.get(key) for key in keys},
        "start": checkpoint_step(output_dir) or 0,
        "slurm_job": os.environ.get("SLURM_JOB_ID"),
        "slurm_restarts": os.environ.get("SLURM_RESTART_COUNT", "0"),
    }
    result = run_pretraining(config, output_dir, resume=resume)
    record.update(end=checkpoint_step(output_dir), returned=result.name)
    with (output_dir / "attempts.jsonl").open("a") as log:
        log.write(json.dumps(record) + "\n")
    return result


def tiny_experiment(root: Path, num_steps: int, checkpoint_every: int) -> ExperimentConfig:
    from _tiny import make_tiny_data

    data = make_tiny_data(root)
    return load_config(
        None,
        [
            f"data.train_lmdb={data.train_lmdb}",
            f"data.val_lmdb={data.val_lmdb}",
            f"data.tokenizer={data.tokenizer}",
            "data.max_caption_length=20",
            "data.transform.image_size=32",
            "model.textual.width=32",
            "model.textual.heads=2",
            "model.textual.ffn=64",
            f"train.num_steps={num_steps}",
            f"train.checkpoint_every={checkpoint_every}",
            "train.batch_size=4",
            "train.num_workers=0",
            "train.val_every=0",
            "train.log_every=1",
            "train.precision=fp32",
        ],
    )


@pytest.mark.slurm
def test_slurm_time_out_checkpoints_requeues_and_resumes_the_real_trainer(
    cluster: slurm_cluster.SlurmCluster,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SLURM_CONF", str(cluster.conf))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    config = tiny_experiment(tmp_path_factory.mktemp("data"), num_steps=80, checkpoint_every=20)
    out = tmp_path_factory.mktemp("slurm-run")
    resources = SlurmResources(
        gpus_per_node=0, time_min=10, partition=cluster.partition, cpus_per_task=1
    )
    job = submit(config, out, resources, cluster="slurm", train_function=recorded_pretraining)
    logs = out / "slurm"
    wait_for(lambda: (checkpoint_step(out) or 0) >= 20, 120, "a first checkpoint", logs)
    job._interrupt(timeout=True)  # SIGUSR2 alone: what Slurm sends signal_delay_s before --time
    wait_for(lambda: job.paths.result_pickle.exists(), 150, "the requeued job's result", logs)
    assert job.result() == out / "checkpoints" / "final.pt"

    first, second = attempts(out)
    assert first["slurm_job"] == second["slurm_job"] == job.job_id
    assert (first["slurm_restarts"], second["slurm_restarts"]) == ("0", "1")
    assert scontrol_job(cluster, job.job_id).get("Restarts") == "1"
    assert first["start"] == 0
    assert 20 <= first["end"] < 80  # stopped early, with a checkpoint of the step it stopped at
    assert first["returned"] == f"step_{first['end']:07d}.pt"
    assert second["start"] == first["end"]  # the requeued job found that checkpoint
    assert second["end"] == 80
    # Resumed, not restarted: every step was logged exactly once across both attempts (a restart
    # from step 0 would append steps 1..first["end"] a second time).
    steps = [
        record["step"]
        for line in (out / "metrics.jsonl").read_text().splitlines()
        if (record := json.loads(line))["split"] == "train"
    ]
    assert steps == list(range(1, 81))


@pytest.mark.slurm
def test_slurm_tasks_form_one_ddp_run_of_the_real_trainer(
    cluster: slurm_cluster.SlurmCluster,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SLURM_CONF", str(cluster.conf))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    config = tiny_experiment(tmp_path_factory.mktemp("data"), num_steps=4, checkpoint_every=2)
    out = tmp_path_factory.mktemp("slurm-ranks")
    resources = SlurmResources(
        gpus_per_node=0, tasks_per_node=2, time_min=5, partition=cluster.partition, cpus_per_task=1
    )
    job = submit(config, out, resources, cluster="slurm", train_function=recorded_pretraining)
    wait_for(lambda: len(attempts(out)) == 2, 120, "both tasks", out / "slurm")
    assert job.results() == [out / "checkpoints" / "final.pt"] * 2
    records = sorted(attempts(out), key=lambda r: r["env"]["RANK"])
    assert [r["env"]["RANK"] for r in records] == ["0", "1"]
    assert [r["env"]["LOCAL_RANK"] for r in records] == ["0", "1"]
    assert {r["env"]["WORLD_SIZE"] for r in records} == {"2"}
    assert {r["env"]["MASTER_PORT"] for r in records} == {str(rendezvous_port(job.job_id))}
    (master,) = {r["env"]["MASTER_ADDR"] for r in records}
    assert master in cluster.nodes  # the job's one node
    assert {r["slurm_job"] for r in records} == {job.job_id}
    # One run of 4 steps (a process group of 2 formed through MASTER_ADDR/MASTER_PORT), logged
    # once by rank 0.
    train = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in train if r["split"] == "train"] == [1, 2, 3, 4]
