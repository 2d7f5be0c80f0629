"""The collective timeout: a rank whose peer stops answering fails instead of hanging.

Two gloo processes on 127.0.0.1 (no Slurm): the peer SIGSTOPs itself after a few all-reduces
and the other rank's next all-reduce must fail within the configured timeout.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from virtex_train import distributed
from virtex_train.distributed import (
    COLLECTIVE_TIMEOUT_ENV,
    DEFAULT_COLLECTIVE_TIMEOUT_S,
    DistEnv,
    collective_timeout,
    is_peer_failure,
)


def test_timeout_comes_from_the_environment_else_the_default() -> None:
    assert collective_timeout({}).total_seconds() == DEFAULT_COLLECTIVE_TIMEOUT_S == 300
    assert collective_timeout({COLLECTIVE_TIMEOUT_ENV: "7.5"}).total_seconds() == 7.5
    # Below a second and up to the limit (1e9 s) are fine.
    for good in ("0.5", "1", "1e9"):
        assert collective_timeout({COLLECTIVE_TIMEOUT_ENV: good}).total_seconds() == float(good)
    # "inf" and 1e20 would overflow datetime.timedelta (an OverflowError traceback).
    for bad in ("0", "-0.5", "-3", "soon", "nan", "inf", "1.0000001e9", "1e20"):
        with pytest.raises(ValueError, match=f"{COLLECTIVE_TIMEOUT_ENV}='{bad}' is not a pos"):
            collective_timeout({COLLECTIVE_TIMEOUT_ENV: bad})


def test_peer_failures_are_told_from_other_errors() -> None:
    # The messages gloo raised in this file's stall test and on a killed peer (torch 2.x).
    gloo_timeout = "[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 5000ms for recv"
    assert is_peer_failure(RuntimeError(gloo_timeout))
    assert is_peer_failure(
        RuntimeError("[gloo/transport/tcp/pair.cc:534] Connection reset by peer")
    )
    assert is_peer_failure(RuntimeError("Application timeout caused pair closure"))
    assert is_peer_failure(dist.DistBackendError("NCCL error"))
    assert not is_peer_failure(RuntimeError("CUDA out of memory"))
    assert not is_peer_failure(ValueError("Timed out"))  # not an error of a collective


WORKER = textwrap.dedent(
    """
    import os, signal, time
    import torch
    from virtex_train import distributed

    env = distributed.detect_env()
    distributed.setup(env, "cpu")
    for step in range(1000):
        if env.rank == 1 and step == 3:
            os.kill(os.getpid(), signal.SIGSTOP)  # stops answering; its sockets stay open
        started = time.monotonic()
        try:
            distributed.all_reduce_sum(torch.ones(4))
        except RuntimeError as error:
            waited = time.monotonic() - started
            peer = distributed.is_peer_failure(error)
            print(f"FAILED step={step} waited={waited:.2f} peer={peer}", flush=True)
            # os._exit, not sys.exit: the process group still holds the failed operation,
            # and its worker thread can abort the interpreter's normal shutdown (SIGABRT,
            # "terminate called without an active exception"), which would hide the code.
            os._exit(3)
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_two_ranks(tmp_path: Path, code: str, timeout_s: float) -> list[subprocess.Popen[str]]:
    """Ranks 0 and 1 of a 2-process job on 127.0.0.1 running ``code``, output piped."""
    script = tmp_path / "worker.py"
    script.write_text(code)
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(sys.path),
            "OMP_NUM_THREADS": "1",
            "RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            COLLECTIVE_TIMEOUT_ENV: str(timeout_s),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    return procs


@pytest.mark.timeout(120)
def test_a_stalled_peer_fails_the_collective_within_the_timeout(tmp_path: Path) -> None:
    timeout_s = 3.0
    procs = _start_two_ranks(tmp_path, WORKER, timeout_s)
    try:
        output, _ = procs[0].communicate(timeout=90)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)
    assert procs[0].returncode == 3, output
    line = next(line for line in output.splitlines() if line.startswith("FAILED"))
    fields = dict(item.split("=") for item in line.split()[1:])
    assert fields["step"] == "3"
    assert fields["peer"] == "True"
    # Not before the timeout, and not much after it (a hang would wait for the 90 s above).
    assert timeout_s - 0.1 <= float(fields["waited"]) < timeout_s + 10


COLLECTIVES = textwrap.dedent(
    """
    import torch
    import torch.distributed as dist
    from virtex_train import distributed

    env = distributed.detect_env()
    assert distributed.setup(env, "cpu") == torch.device("cpu")
    assert dist.get_backend() == "gloo" and dist.get_world_size() == 2
    total = distributed.all_reduce_sum(torch.tensor([env.rank + 1.0, 10.0]))
    largest = distributed.all_reduce_max(torch.tensor([5.0 * env.rank, -1.0 - env.rank]))
    gathered = distributed.all_gather_objects({"rank": env.rank})
    distributed.barrier()
    print(f"RESULT {total.tolist()} {largest.tolist()} {gathered}", flush=True)
    distributed.teardown()
    assert not dist.is_initialized()
    distributed.teardown()  # a second call is harmless
    """
)


@pytest.mark.timeout(120)
def test_collectives_of_two_gloo_ranks(tmp_path: Path) -> None:
    procs = _start_two_ranks(tmp_path, COLLECTIVES, 60.0)
    try:
        outputs = [proc.communicate(timeout=100)[0] for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)
    # Sums 1 + 2 and 10 + 10; maxima of (0, 5) and (-1, -2); objects in rank order.
    expected = "RESULT [3.0, 20.0] [5.0, -1.0] [{'rank': 0}, {'rank': 1}]"
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output
        assert expected in output.splitlines(), output


def test_one_process_collectives_are_the_identity() -> None:
    assert not dist.is_initialized()
    tensor = torch.tensor([1.5, -2.0])
    assert distributed.all_reduce_sum(tensor) is tensor and tensor.tolist() == [1.5, -2.0]
    assert distributed.all_reduce_max(tensor) is tensor and tensor.tolist() == [1.5, -2.0]
    assert distributed.all_gather_objects({"a": 1}) == [{"a": 1}]
    distributed.barrier()
    distributed.teardown()
    # No process group for one process; the device is the one asked for (or CUDA when there
    # is one and none is asked for).
    assert distributed.setup(DistEnv(), "cpu") == torch.device("cpu")
    default = "cuda" if torch.cuda.is_available() else "cpu"
    assert distributed.setup(DistEnv(), None).type == default
    assert not dist.is_initialized()
