"""Hostile and broken input to ``virtex-train``: one-line errors, nothing lost (issues 16, 23).

Every CLI case asserts the exit status, that the message is one ``Error:`` line naming the file
or key, that no traceback is printed, and that the run directory is byte for byte unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
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

from virtex_train.checkpoint import CheckpointError, CheckpointManager, load_checkpoint
from virtex_train.cli import main
from virtex_train.config import ConfigError, load_config
from virtex_train.runlock import LOCK_NAME, RunLock, RunLockedError

pytestmark = pytest.mark.timeout(240)

TINY = [
    "data.transform.image_size=32",
    "model.textual.width=32",
    "model.textual.ffn=64",
    "model.decoder.max_steps=4",
    "train.batch_size=4",
    "train.num_workers=0",
    "train.val_every=2",
    "train.val_batches=1",
    "train.sample_captions=1",
    "train.checkpoint_every=2",
    "train.num_steps=2",
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny config, and a finished 2-step run made from it (copied per test)."""
    root = tmp_path_factory.mktemp("reliability")
    data = make_tiny_data(root / "data")
    paths = [
        f"data.train_lmdb={data.train_lmdb}",
        f"data.val_lmdb={data.val_lmdb}",
        f"data.tokenizer={data.tokenizer}",
    ]
    config = root / "tiny.yaml"
    config.write_text(load_config(None, [*paths, *TINY]).to_yaml())
    run = root / "finished"
    result = CliRunner().invoke(main, ["pretrain", str(config), "-o", str(run), "--no-progress"])
    assert result.exit_code == 0, result.output
    return config, run


def _snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``folder`` (names starting with . included)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _copy_run(run: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(run, to)
    return to


def _one_line_error(result: object, *needles: str) -> str:
    """The ``Error:`` line of a failed CliRunner result; checks exit 1 and no traceback."""
    output: str = result.output  # type: ignore[attr-defined]
    assert result.exit_code == 1, output  # type: ignore[attr-defined]
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    assert output.rstrip().splitlines()[-1] == errors[0], output  # nothing after it
    assert len(errors[0]) < 700, errors[0]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


# ----------------------------------------------------------------------------- run lock
def test_a_second_lock_names_the_holder_and_release_frees_it(tmp_path: Path) -> None:
    first = RunLock(tmp_path / "run")
    first.acquire()
    holder = json.loads((tmp_path / "run" / LOCK_NAME).read_text())
    assert holder["host"] == socket.gethostname() and holder["pid"] == os.getpid()
    with pytest.raises(RunLockedError, match=rf"host {socket.gethostname()}, pid {os.getpid()}"):
        RunLock(tmp_path / "run").acquire()
    first.release()
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    with RunLock(tmp_path / "run"):  # free again
        pass


def _write_lock(
    folder: Path, host: str, pid: int, job: str | None = None, age: float = 0, restart: int = 0
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    started = time.time() - age
    record = {"host": host, "pid": pid, "slurm_job_id": job, "started": started, "token": "t0"}
    record["slurm_restart"] = restart
    path.write_text(json.dumps(record))
    os.utime(path, (started, started))
    return path


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_crashed_run_on_this_host_does_not_leave_the_lock_stuck(tmp_path: Path) -> None:
    _write_lock(tmp_path, socket.gethostname(), _dead_pid())
    with RunLock(tmp_path) as lock:  # taken over: the pid is gone
        assert lock.holder is not None and lock.holder.pid == os.getpid()
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no stale copies left


def test_other_hosts_hold_until_their_heartbeat_expires(tmp_path: Path) -> None:
    # A live pid here means nothing for another host: only the heartbeat (mtime) counts.
    _write_lock(tmp_path, "node-elsewhere", _dead_pid(), age=5)
    with pytest.raises(RunLockedError, match="host node-elsewhere"):
        RunLock(tmp_path, heartbeat_s=10, lease_s=60).acquire()
    _write_lock(tmp_path, "node-elsewhere", 1, age=120)  # silent for twice the lease
    with RunLock(tmp_path, heartbeat_s=10, lease_s=60) as lock:
        assert lock.holder is not None and lock.holder.host == socket.gethostname()


def test_the_heartbeat_keeps_a_live_lock_fresh(tmp_path: Path) -> None:
    lock = RunLock(tmp_path, heartbeat_s=0.05, lease_s=1.0)
    lock.acquire()
    path = tmp_path / LOCK_NAME
    os.utime(path, (time.time() - 100, time.time() - 100))
    deadline = time.time() + 10
    while time.time() - path.stat().st_mtime > 50 and time.time() < deadline:
        time.sleep(0.05)
    assert time.time() - path.stat().st_mtime < 50  # touched again by the heartbeat thread
    lock.release()


def test_a_requeued_slurm_job_takes_over_its_own_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_lock(tmp_path, "node-before-requeue", 4242, job="777", age=1, restart=1)
    monkeypatch.setenv("SLURM_JOB_ID", "778")  # another job: refused
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    with pytest.raises(RunLockedError, match="Slurm job 777"):
        RunLock(tmp_path).acquire()
    monkeypatch.setenv("SLURM_JOB_ID", "777")  # the same job, not requeued (salloc): refused
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    with pytest.raises(RunLockedError, match="Slurm job 777"):
        RunLock(tmp_path).acquire()
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")  # the same job, requeued: takes over
    with RunLock(tmp_path) as lock:
        assert lock.holder is not None and lock.holder.slurm_job_id == "777"
        assert lock.holder.slurm_restart == 2


def test_release_leaves_a_lock_that_another_run_took_over(tmp_path: Path) -> None:
    lock = RunLock(tmp_path)
    lock.acquire()
    _write_lock(tmp_path, "someone-else", 1)
    lock.release()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["host"] == "someone-else"


_HOLD = """
import sys, time
from virtex_train.runlock import RunLock
lock = RunLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
time.sleep(120)
"""


def test_two_trainings_into_one_folder_the_second_stops_naming_the_first(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    config, _ = setup
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        before = _snapshot(out)
        result = CliRunner().invoke(main, ["pretrain", str(config), "-o", str(out)])
        _one_line_error(result, "in use by another run", f"pid {holder.pid}", str(out))
        assert _snapshot(out) == before
    finally:
        holder.kill()
        holder.wait()


_RANK = """
import sys
from virtex_train.config import load_config
from virtex_train.pretrain import pretrain
try:
    pretrain(load_config(sys.argv[1]), sys.argv[2], device="cpu", progress=False,
             handle_signals=False)
    print("ran")
except Exception as error:
    print(type(error).__name__, error)
"""


def test_a_refused_lock_stops_every_rank_not_only_rank_0(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    """Two gloo ranks into a held directory: both stop at once (rank 1 must not wait in DDP)."""
    config, _ = setup
    out = tmp_path / "run"
    held = RunLock(out)
    held.acquire()
    port = 29500 + os.getpid() % 1000
    ranks = []
    for rank in (0, 1):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank)}
        env.update(
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), PYTHONPATH=os.pathsep.join(sys.path)
        )
        ranks.append(
            subprocess.Popen(
                [sys.executable, "-c", _RANK, str(config), str(out)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        )
    try:
        outputs = [process.communicate(timeout=150)[0].strip() for process in ranks]
    finally:
        for process in ranks:
            process.kill()
        held.release()
    assert outputs[0].startswith("RunLockedError") and f"pid {os.getpid()}" in outputs[0]
    assert outputs[1].startswith("PretrainError") and "rank 0 could not take" in outputs[1]


# ----------------------------------------------------------------------------- resume
def test_resume_with_another_optimizer_writes_nothing_and_stays_resumable(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    config, finished = setup
    run = _copy_run(finished, tmp_path / "run")
    before = _snapshot(run)
    args = ["pretrain", str(config), "-o", str(run), "--resume", "--no-progress"]
    result = CliRunner().invoke(main, [*args, "optim.kind=adamw", "train.num_steps=4"])
    _one_line_error(result, "optim.kind", "sgd", "adamw", "step_0000002.pt")
    assert _snapshot(run) == before  # config.yaml, metrics, checkpoints: all unchanged

    wider = CliRunner().invoke(main, [*args, "model.textual.width=64", "train.num_steps=4"])
    _one_line_error(wider, "cannot resume", "shape")
    assert _snapshot(run) == before

    result = CliRunner().invoke(main, [*args, "train.num_steps=4"])  # the original still resumes
    assert result.exit_code == 0, result.output
    assert load_checkpoint(run / "checkpoints" / "final.pt")["step"] == 4


def test_resume_of_a_finished_run_leaves_no_stray_file(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    config, finished = setup
    run = _copy_run(finished, tmp_path / "run")
    names = sorted(_snapshot(run))
    for _ in range(2):
        result = CliRunner().invoke(
            main, ["pretrain", str(config), "-o", str(run), "--resume", "--no-progress"]
        )
        assert result.exit_code == 0, result.output
    # Nothing new: no .final.pt.tmp-<pid>, no lock, no write probe (metrics/tb may be rewritten).
    assert sorted(_snapshot(run)) == names
    assert not list(run.rglob(".*")), list(run.rglob(".*"))


def test_finalize_twice_on_the_same_file_leaves_one_name(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path)
    path = tmp_path / "step_0000002.pt"
    torch.save({"x": 1}, path)
    manager.finalize(path)
    manager.finalize(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final.pt", "step_0000002.pt"]
    assert os.path.samefile(tmp_path / "final.pt", path)


def test_latest_pointing_outside_the_checkpoints_folder_is_refused(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    config, finished = setup
    run = _copy_run(finished, tmp_path / "run")
    outside = tmp_path / "x.pt"
    outside.write_bytes((run / "checkpoints" / "final.pt").read_bytes())
    (run / "checkpoints" / "latest").write_text("../../x.pt\n")
    with pytest.raises(CheckpointError, match=r"outside .*checkpoints"):
        CheckpointManager(run / "checkpoints").latest()
    before = _snapshot(run)
    result = CliRunner().invoke(main, ["pretrain", str(config), "-o", str(run), "--resume"])
    _one_line_error(result, "latest", "../../x.pt", "outside")
    assert _snapshot(run) == before


# ----------------------------------------------------------------------------- checkpoints
def test_a_tokenizer_passed_as_checkpoint_says_what_it_is(setup: tuple[Path, Path]) -> None:
    _, finished = setup
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(finished / "tokenizer.json")
    message = str(caught.value)
    assert "tokenizer.json: not a PyTorch checkpoint (it is JSON text)" in message
    assert "expected a PyTorch checkpoint" in message
    assert "weights_only" not in message and "\n" not in message


# ----------------------------------------------------------------------------- device
@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a GPU")
def test_device_cuda_without_a_gpu_is_one_line(setup: tuple[Path, Path], tmp_path: Path) -> None:
    config, _ = setup
    result = CliRunner().invoke(
        main, ["pretrain", str(config), "-o", str(tmp_path / "r"), "--device", "cuda"]
    )
    _one_line_error(result, "--device cuda", "not available", "available: cpu")
    assert not (tmp_path / "r").exists()  # refused before anything was made


# ----------------------------------------------------------------------------- one-line errors
def test_broken_inputs_are_one_line_errors_naming_the_file(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    config, finished = setup
    cases = {
        # A tokenizer file that is not one: virtex_data's ValueError.
        "tokenizer": [f"data.tokenizer={finished / 'config.yaml'}"],
        # An LMDB path naming a JSON file: LmdbFormatError.
        "lmdb": [f"data.train_lmdb={finished / 'tokenizer.json'}"],
        # More images per batch than the data set holds (16 training images).
        "batch": ["train.batch_size=64"],
    }
    needles = {
        "tokenizer": ["config.yaml"],
        "lmdb": ["tokenizer.json"],
        "batch": ["train.batch_size=64", "16 images"],
    }
    for name, overrides in cases.items():
        out = tmp_path / name
        result = CliRunner().invoke(
            main, ["pretrain", str(config), *overrides, "-o", str(out), "--no-progress"]
        )
        _one_line_error(result, *needles[name])
        assert not list(out.rglob("*")), name  # nothing written


def test_debug_shows_the_traceback(setup: tuple[Path, Path], tmp_path: Path) -> None:
    config, finished = setup
    args = ["pretrain", str(config), f"data.tokenizer={finished / 'config.yaml'}"]
    args += ["-o", str(tmp_path / "r")]
    result = CliRunner().invoke(main, ["--debug", *args])
    assert result.exit_code == 1 and isinstance(result.exception, ValueError)
    result = CliRunner().invoke(main, [*args, "--debug"])  # after the subcommand too
    assert result.exit_code == 1 and isinstance(result.exception, ValueError)
    assert "VIRTEX_DEBUG" not in os.environ  # this invocation only
    quiet = CliRunner().invoke(main, args)
    assert quiet.exit_code == 1 and "Traceback" not in quiet.output
    result = CliRunner().invoke(main, args, env={"VIRTEX_DEBUG": "1"})
    assert isinstance(result.exception, ValueError)


def test_unwritable_output_folder_is_refused_before_any_work(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    config, _ = setup
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = CliRunner().invoke(main, ["pretrain", str(config), "-o", str(blocker / "run")])
    _one_line_error(result, "--output-dir is not writable", str(blocker / "run"))
    assert blocker.read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_is_refused_before_any_work(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    config, _ = setup
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        result = CliRunner().invoke(main, ["pretrain", str(config), "-o", str(folder)])
        _one_line_error(result, "not writable", str(folder))
    finally:
        folder.chmod(0o755)


# ----------------------------------------------------------------------------- configs
# The anchors live inside a known key's value, so no "unknown key" check stops it first.
_BOMB = "\n".join(
    [
        "train:",
        "  batch_size:",
        '    - &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]',
        *(
            f"    - &{n} [{', '.join([f'*{p}'] * 9)}]"
            for p, n in zip("abcdefgh", "bcdefghi", strict=True)
        ),
        "",
    ]
)


def test_a_yaml_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    path = tmp_path / "b.yaml"
    path.write_text(_BOMB)
    assert len(_BOMB) < 600  # 9**9 = 387 million strings once expanded
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="aliases expand to more than") as caught:
        load_config(path)
    assert time.perf_counter() - start < 5
    assert len(str(caught.value)) < 300
    result = CliRunner().invoke(main, ["pretrain", str(path), "-o", str(tmp_path / "r")])
    _one_line_error(result, "b.yaml", "aliases expand to more than")


def test_small_aliases_still_work_and_big_values_are_not_printed(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("optim:\n  betas: &b [0.9, 0.98]\ntrain:\n  num_steps: 10\n")
    assert load_config(path).optim.betas == (0.9, 0.98)
    big = tmp_path / "big.yaml"  # a wrong type holding a long list: the message stays short
    big.write_text("train:\n  batch_size: [" + ", ".join(["123456789"] * 5000) + "]\n")
    with pytest.raises(ConfigError, match="train.batch_size") as caught:
        load_config(big)
    assert len(str(caught.value)) < 300


def test_a_non_utf8_config_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("train:\n  num_steps: 10 # café\n".encode("latin-1"))
    result = CliRunner().invoke(main, ["pretrain", str(path), "-o", str(tmp_path / "r")])
    _one_line_error(result, "latin1.yaml", "not UTF-8")
