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
import torch.distributed as dist

from virtex_train.distributed import (
    COLLECTIVE_TIMEOUT_ENV,
    DEFAULT_COLLECTIVE_TIMEOUT_S,
    collective_timeout,
    is_peer_failure,
)


def test_timeout_comes_from_the_environment_else_the_default() -> None:
    assert collective_timeout({}).total_seconds() == DEFAULT_COLLECTIVE_TIMEOUT_S == 300
    assert collective_timeout({COLLECTIVE_TIMEOUT_ENV: "7.5"}).total_seconds() == 7.5
    for bad in ("0", "-3", "soon", "nan"):
        with pytest.raises(ValueError, match=f"{COLLECTIVE_TIMEOUT_ENV}='{bad}'"):
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


@pytest.mark.timeout(120)
def test_a_stalled_peer_fails_the_collective_within_the_timeout(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = _free_port()
    timeout_s = 3.0
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
