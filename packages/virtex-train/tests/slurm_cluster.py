"""A real single-node Slurm cluster (munge + slurmctld + slurmd) in one scratch directory.

Used by ``test_slurm.py`` (as a fixture) and by ``.ci/slurm-up`` (``python3 slurm_cluster.py up``).
Standard library only, so that the system ``python3`` can run it before any virtual environment
exists.

Everything lives under one directory: munge key, socket, pid and log files, slurm.conf, state and
spool folders. Nothing under ``/etc`` is read or written, the daemons run as the invoking user
(``SlurmUser``/``SlurmdUser`` are set to it), and client commands find the cluster through
``SLURM_CONF``. Root is needed only to install the Debian packages (``slurmctld slurmd
slurm-client munge``).

Settings that matter (measured on a 2-core machine, Slurm 22.05):

- ``KillWait=5`` and ``SchedulerParameters=bf_interval=1,sched_interval=1``: with the defaults a
  requeued job waits minutes before it runs again; with these it is back in 6-11 s.
- ``ProctrackType=proctrack/linuxproc`` and ``TaskPlugin=task/none``: no cgroups (containers
  rarely allow them).
- ``CPUs`` never above ``os.cpu_count()``: slurmd refuses to register a node that claims more.
- Every folder above the munge socket must be world-searchable, so the scratch directory is
  made with ``mkdtemp`` and opened to 0755 (pytest's ``tmp_path`` is 0700).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

#: Binaries a cluster needs; the Debian package that ships each.
BINARIES = {
    "munged": "munge",
    "slurmctld": "slurmctld",
    "slurmd": "slurmd",
    "sbatch": "slurm-client",
    "srun": "slurm-client",
    "squeue": "slurm-client",
    "scontrol": "slurm-client",
    "scancel": "slurm-client",
    "sinfo": "slurm-client",
}
DEFAULT_DIR = Path("/tmp/virtex-slurm")
PARTITION = "debug"
NODE = "localhost"
DAEMONS = ("munged", "slurmctld", "slurmd")


def missing_binaries() -> list[str]:
    """Names of the binaries in ``BINARIES`` that are not on ``PATH`` (or ``/usr/sbin``)."""
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin" + os.pathsep + "/sbin"
    return [name for name in BINARIES if shutil.which(name, path=path) is None]


def unavailable_reason() -> str | None:
    """Why no cluster can be started here, or None when one can."""
    missing = missing_binaries()
    if missing:
        packages = " ".join(sorted({BINARIES[name] for name in missing}))
        return (
            f"Slurm is not installed ({', '.join(missing)} not found): run `sudo .ci/slurm-up` or "
            f"`apt-get install --no-install-recommends {packages}`"
        )
    return None


def _which(name: str) -> str:
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin" + os.pathsep + "/sbin"
    found = shutil.which(name, path=path)
    if found is None:
        raise RuntimeError(unavailable_reason() or f"{name} not found")
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class SlurmCluster:
    """A running single-node cluster whose files are all under ``root``.

    Attributes:
        root: the scratch directory (conf, munge, state, spool, logs, pid files).
        owned: True when this object started the daemons (``stop`` then stops them).
    """

    root: Path
    owned: bool = False
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def partition(self) -> str:
        return PARTITION

    @property
    def slurm_user(self) -> str | None:
        """The user the daemons run as (``SlurmUser`` in slurm.conf)."""
        for line in self.conf.read_text().splitlines():
            if line.startswith("SlurmUser="):
                return line.split("=", 1)[1].strip()
        return None

    def runs_jobs_of(self, user: str) -> bool:
        """Daemons running as root run anyone's jobs; others only their own user's."""
        return self.slurm_user in ("root", user)

    def env(self) -> dict[str, str]:
        """The environment for client commands (sbatch, squeue, submitit) against this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Runs a Slurm client command against this cluster and returns its captured output."""
        return subprocess.run(
            [_which(command[0]), *command[1:]],
            env=self.env(),
            capture_output=True,
            text=True,
            check=check,
            timeout=30,
        )

    def is_up(self) -> bool:
        """slurmctld answers and the node is usable (idle, mixed or allocated)."""
        try:
            ping = self.run("scontrol", "ping", check=False)
            if ping.returncode != 0 or "UP" not in ping.stdout:
                return False
            state = self.run("sinfo", "-h", "-n", NODE, "-o", "%T", check=False).stdout
        except (OSError, subprocess.TimeoutExpired):
            return False
        return any(word in state for word in ("idle", "mixed", "allocated", "completing"))

    def job_ids(self) -> list[str]:
        out = self.run("squeue", "-h", "-o", "%i", check=False).stdout
        return [line.strip() for line in out.splitlines() if line.strip()]

    def log_tail(self, lines: int = 30) -> str:
        """The end of each daemon's log file, for error messages."""
        parts = []
        for name in DAEMONS:
            log = self.root / f"{name}.log"
            if log.exists():
                text = log.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {log} ---\n" + "\n".join(text))
        return "\n".join(parts)

    def stop(self, timeout: float = 30.0) -> None:
        """Cancels every job, waits for the queue to drain, then stops the daemons.

        Stopping slurmd alone would leave running jobs behind, hence the scancel first.
        """
        ids = self.job_ids() if self.conf.exists() else []
        if ids:
            self.run("scancel", *ids, check=False)
            deadline = time.monotonic() + timeout
            while self.job_ids() and time.monotonic() < deadline:
                time.sleep(0.5)
        for name in reversed(DAEMONS):
            _terminate(self.root / f"{name}.pid", self.processes.get(name))


def _terminate(pid_file: Path, process: subprocess.Popen[bytes] | None) -> None:
    pid = process.pid if process is not None else _read_pid(pid_file)
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid_file.unlink(missing_ok=True)
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process is not None:
            if process.poll() is not None:
                break
        elif not _alive(pid):
            break
        time.sleep(0.1)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if process is not None:
            process.wait(5)
    pid_file.unlink(missing_ok=True)


def _read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (a child nobody waited for) counts as dead.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def slurm_conf(root: Path, *, user: str, cpus: int, memory_mb: int) -> str:
    """The text of a minimal slurm.conf for one node named ``localhost``."""
    ctld_port, slurmd_port = _free_port(), _free_port()
    return f"""\
# A single-node test cluster written by slurm_cluster.py; every path is under {root}.
ClusterName=virtex
SlurmctldHost={NODE}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
AuthInfo=socket={root}/munge/munge.socket,cred_expire=5
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=bf_interval=1,sched_interval=1
KillWait=5
MinJobAge=300
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
JobCompType=jobcomp/none
NodeName={NODE} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
"""


def attach(root: Path) -> SlurmCluster | None:
    """The cluster already running under ``root``, or None."""
    cluster = SlurmCluster(Path(root))
    if cluster.conf.exists() and cluster.is_up():
        return cluster
    return None


def start(
    root: Path | None = None, *, cpus: int | None = None, timeout: float = 60.0
) -> SlurmCluster:
    """Starts munged, slurmctld and slurmd under ``root`` (a fresh ``mkdtemp`` folder if None).

    Any earlier cluster state under ``root`` is discarded.

    Raises:
        RuntimeError: Slurm is not installed, or the cluster did not come up within ``timeout``
            seconds (the message holds the end of each daemon's log).
    """
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(reason)
    if root is None:
        root = Path(tempfile.mkdtemp(prefix="virtex-slurm-"))
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    for name in reversed(DAEMONS):  # leftovers of an earlier cluster in the same folder
        _terminate(root / f"{name}.pid", None)
    for name in ("state", "spool", "munge"):
        shutil.rmtree(root / name, ignore_errors=True)
        (root / name).mkdir(mode=0o755)
    os.chmod(root / "munge", 0o755)
    for name in DAEMONS:
        (root / f"{name}.log").unlink(missing_ok=True)

    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o600)
    user = getpass.getuser()
    cpus = min(cpus or os.cpu_count() or 1, os.cpu_count() or 1)
    (root / "slurm.conf").write_text(slurm_conf(root, user=user, cpus=cpus, memory_mb=4000))

    cluster = SlurmCluster(root, owned=True)
    commands = {
        "munged": [
            _which("munged"),
            "-F",
            f"--key-file={key}",
            f"--socket={root}/munge/munge.socket",
            f"--pid-file={root}/munged.pid",
            f"--seed-file={root}/munge/munge.seed",
            f"--log-file={root}/munged.log",
        ],
        "slurmctld": [_which("slurmctld"), "-D", "-c", "-f", str(cluster.conf)],
        "slurmd": [_which("slurmd"), "-D", "-f", str(cluster.conf), "-N", NODE],
    }
    try:
        for name, command in commands.items():
            # A new session: the daemons outlive `.ci/slurm-up` and ignore the terminal's Ctrl-C.
            with (root / f"{name}.out").open("wb") as out:
                cluster.processes[name] = subprocess.Popen(
                    command,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            if name == "munged":
                _wait_for(lambda: (root / "munge" / "munge.socket").exists(), 10, cluster, name)
            (root / f"{name}.pid").write_text(f"{cluster.processes[name].pid}\n")
        _wait_for(cluster.is_up, timeout, cluster, "the node")
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _wait_for(ready: object, timeout: float, cluster: SlurmCluster, what: str) -> None:
    assert callable(ready)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        for name, process in cluster.processes.items():
            if process.poll() is not None:
                out = (cluster.root / f"{name}.out").read_text(errors="replace")[-3000:]
                raise RuntimeError(
                    f"{name} exited with status {process.returncode} while starting the Slurm "
                    f"test cluster in {cluster.root}:\n{out}\n{cluster.log_tail()}"
                )
        time.sleep(0.2)
    raise RuntimeError(
        f"{what} of the Slurm test cluster in {cluster.root} was not ready after {timeout:.0f} s:\n"
        f"{cluster.log_tail()}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"default {DEFAULT_DIR}")
    args = parser.parse_args(argv)
    root: Path = args.dir
    if args.action == "status":
        up = attach(root) is not None
        print(f"Slurm test cluster in {root}: {'up' if up else 'down'}")
        return 0 if up else 1
    if args.action == "down":
        SlurmCluster(root).stop()
        print(f"Slurm test cluster in {root} stopped")
        return 0
    cluster = attach(root)
    if cluster is None:
        try:
            cluster = start(root)
        except RuntimeError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(f"Slurm test cluster started in {root}")
    else:
        print(f"Slurm test cluster already up in {root}")
    print(f"export SLURM_CONF={cluster.conf}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
