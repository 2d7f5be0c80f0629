"""``RunLock``: one run at a time per run directory (``OUT/.lock``).

The lock is a file created with ``O_CREAT | O_EXCL`` holding JSON about its owner (host, pid,
Slurm job id, a random token, start time). Its modification time is the owner's heartbeat: a
daemon thread touches it every ``heartbeat_s`` seconds.

Why a file and not ``fcntl``/``flock``: the run directory usually lives on a cluster's shared
file system (NFS, Lustre, GPFS, BeeGFS). ``fcntl`` locks there depend on a lock daemon or a mount
option (Lustre ``-o flock``, NFSv3 ``lockd``) and silently lock nothing where it is missing, and
they say nothing about who holds them. Exclusive creation is atomic on NFSv3+ and on the
parallel file systems, and the file can name its holder in the error the second run prints.

A lock is *stale*, and taken over, when

- its host is this host and its pid is no longer a live process (a crash, ``kill -9``);
- its heartbeat is older than ``lease_s`` (another host, which cannot check the pid), measured
  with the file system's own clock (the mtime of a probe file written next to it), so clock
  skew between nodes does not matter;
- it names the Slurm job id this process runs under, with a lower ``SLURM_RESTART_COUNT``: a
  requeued job (preemption, time-out) is the same run continuing, usually on another node, while
  the old node's heartbeat may look fresh. Two runs started in one allocation (``salloc``) share
  the job id but not a restart count apart, so they still exclude each other.

Taking over renames the stale file to a unique name (one contender wins the rename), checks that
what it moved is the file it judged stale (same token), and creates a new lock exclusively.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["LockHolder", "RunLock", "RunLockedError"]

LOCK_NAME = ".lock"


class RunLockedError(RuntimeError):
    """Another live run holds the run directory; the message names it."""


@dataclass(frozen=True)
class LockHolder:
    """Who holds a run directory.

    Attributes:
        host: ``socket.gethostname()`` of the holder.
        pid: its process id.
        slurm_job_id: ``SLURM_JOB_ID`` of the holder (``None`` outside Slurm).
        started: ``time.time()`` at acquisition.
        token: random, distinguishes two holders with equal host/pid over time.
        slurm_restart: ``SLURM_RESTART_COUNT`` of the holder (0 before any requeue).
    """

    host: str
    pid: int
    slurm_job_id: str | None
    started: float
    token: str
    slurm_restart: int = 0

    @classmethod
    def me(cls) -> LockHolder:
        return cls(
            host=socket.gethostname(),
            pid=os.getpid(),
            slurm_job_id=os.environ.get("SLURM_JOB_ID") or None,
            started=time.time(),
            token=secrets.token_hex(8),
            slurm_restart=_restart_count(),
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> LockHolder | None:
        """Parse a lock file's content; ``None`` if it is not one (cut by a crash ...)."""
        try:
            raw: Any = json.loads(data.decode("utf-8"))
            return cls(
                host=str(raw["host"]),
                pid=int(raw["pid"]),
                slurm_job_id=None if raw.get("slurm_job_id") is None else str(raw["slurm_job_id"]),
                started=float(raw["started"]),
                token=str(raw["token"]),
                slurm_restart=int(raw.get("slurm_restart") or 0),
            )
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return None

    def describe(self) -> str:
        job = f", Slurm job {self.slurm_job_id}" if self.slurm_job_id else ""
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"host {self.host}, pid {self.pid}{job}, since {since}"


def _restart_count() -> int:
    value = os.environ.get("SLURM_RESTART_COUNT", "0")
    return int(value) if value.isdigit() else 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


class RunLock:
    """Hold ``directory/.lock`` while a run writes ``directory``.

    Args:
        directory: the run directory (created if missing).
        heartbeat_s: how often the owner touches the lock.
        lease_s: how old a heartbeat may be before a lock of another host counts as stale
            (several heartbeats, so a slow file system does not lose a live run's lock).

    Use as a context manager, or :meth:`acquire` / :meth:`release`.
    """

    def __init__(
        self, directory: str | os.PathLike[str], heartbeat_s: float = 60.0, lease_s: float = 600.0
    ) -> None:
        if lease_s <= heartbeat_s:
            raise ValueError(f"lease_s ({lease_s}) must exceed heartbeat_s ({heartbeat_s})")
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.heartbeat_s = heartbeat_s
        self.lease_s = lease_s
        self.holder: LockHolder | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ acquire / release
    def acquire(self) -> LockHolder:
        """Take the lock (taking over a stale one).

        Raises:
            RunLockedError: a live run holds it, naming host, pid and Slurm job.
            OSError: the directory cannot be created or written.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        me = LockHolder.me()
        for _ in range(5):  # a few rounds: a contender may take over between our steps
            if self._create(me):
                self.holder = me
                self._start_heartbeat()
                return me
            current, data = self._read()
            if data is None:
                continue  # released between our create and our read
            reason = self._stale_reason(current)
            if reason is None:
                who = current.describe() if current else "a run that is starting"
                raise RunLockedError(
                    f"{self.directory} is in use by another run ({who}; lock "
                    f"{self.path}): wait for it to finish or choose another --output-dir"
                )
            self._take_over(data)
        raise RunLockedError(f"{self.path}: could not take the lock (other runs keep taking it)")

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.holder is not None:
            current, _ = self._read()
            if current is not None and current.token == self.holder.token:
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
            self.holder = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    # ------------------------------------------------------------------ internals
    def _create(self, me: LockHolder) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, json.dumps(asdict(me)).encode("utf-8") + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        return True

    def _read(self) -> tuple[LockHolder | None, bytes | None]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None, None
        return LockHolder.from_bytes(data), data

    def _age(self) -> float:
        """Seconds since the lock's last heartbeat, by the file system's clock."""
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return float("inf")
        handle, probe = tempfile.mkstemp(prefix=".lock-clock-", dir=self.directory)
        try:
            now = os.fstat(handle).st_mtime
        finally:
            os.close(handle)
            os.unlink(probe)
        return now - mtime

    def _stale_reason(self, current: LockHolder | None) -> str | None:
        if current is None:  # unreadable: a crash between create and write, or garbage
            return "unreadable" if self._age() > self.heartbeat_s else None
        job = os.environ.get("SLURM_JOB_ID")
        if job and current.slurm_job_id == job and _restart_count() > current.slurm_restart:
            return "requeued Slurm job"
        if current.host == socket.gethostname() and not _pid_alive(current.pid):
            return "process gone"
        if self._age() > self.lease_s:
            return "heartbeat expired"
        return None

    def _take_over(self, judged: bytes) -> None:
        aside = self.path.with_name(f"{LOCK_NAME}.stale-{secrets.token_hex(6)}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another contender moved it first
        try:
            if aside.read_bytes() != judged:  # we moved a fresh lock taken meanwhile: restore
                with contextlib.suppress(FileExistsError):
                    os.link(aside, self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                aside.unlink()

    def _start_heartbeat(self) -> None:
        self._stop.clear()

        def beat() -> None:
            while not self._stop.wait(self.heartbeat_s):
                with contextlib.suppress(OSError):
                    os.utime(self.path)

        self._thread = threading.Thread(target=beat, name="virtex-run-lock", daemon=True)
        self._thread.start()
