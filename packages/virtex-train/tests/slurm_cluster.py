"""A real Slurm test cluster (munge + slurmctld + one slurmd per node) in one scratch directory.

Used by ``test_slurm*.py`` (as fixtures) and by ``.ci/slurm-up`` (``python3 slurm_cluster.py
up [--nodes N]``). Standard library only, so that the system ``python3`` can run it before any
virtual environment exists.

One node (the default) is ``localhost``: slurmd on the host, everything on 127.0.0.1. With
``--nodes N`` (N >= 2, root or CAP_NET_ADMIN) each node is a network namespace on a Linux bridge
(``virtex-br0``, 10.77.0.0/24; the host side is 10.77.0.1, node i is 10.77.0.(i+1)) with its
own host name ``node<i>`` (a UTS namespace) and one ``/etc/hosts`` line; munged and slurmctld
run on the host. That is what a real cluster looks like to torch.distributed: every node
advertises its own name and address. Facts that shaped it (Slurm 22.05, measured):

- slurmd is started as ``nsenter --net=/run/netns/NS unshare --uts sh -c 'hostname nodeI;
  exec slurmd ...'``. ``ip netns exec`` would remount ``/sys``, where slurmd then finds no
  cgroup hierarchy and exits.
- One host name shared by all nodes makes gloo advertise 127.0.0.1, and the remote rank gets
  "Connection refused".
- ``SlurmdTimeout=15``: a node whose processes were all killed is DOWN, and its job requeued,
  ~25 s later (default 300 s); ``ReturnToService=2`` returns it when its slurmd registers again.

Everything lives under one directory: munge key, socket, pid and log files, slurm.conf, state and
spool folders, and ``cluster.json`` (the nodes and the network objects made, which ``down``
removes). Nothing under ``/etc`` is read or written except the hosts lines of a multi-node cluster
(marked with the directory, removed by ``down``). The daemons run as the invoking user
(``SlurmUser``/``SlurmdUser``), and client commands find the cluster through ``SLURM_CONF``. Root
is needed to install the Debian packages (``slurmctld slurmd slurm-client munge``) and to make
the namespaces.

Other settings that matter (measured on a 2-core machine):

- ``KillWait=5`` and ``SchedulerParameters=bf_interval=1,sched_interval=1``: with the defaults a
  requeued job waits minutes before it runs again; with these it is back in 6-11 s.
- ``ProctrackType=proctrack/linuxproc`` and ``TaskPlugin=task/none``: no cgroups (containers
  rarely allow them).
- ``CPUs`` never above ``os.cpu_count()``: slurmd refuses to register a node that claims more
  (the namespaces share the host's cores, so every node claims them all).
- Every folder above the munge socket must be world-searchable, so the scratch directory is
  made with ``mkdtemp`` and opened to 0755 (pytest's ``tmp_path`` is 0700).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
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
#: What a multi-node cluster needs besides Slurm (iproute2, util-linux).
NETWORK_BINARIES = ("ip", "nsenter", "unshare")
DEFAULT_DIR = Path("/tmp/virtex-slurm")
PARTITION = "debug"
NODE = "localhost"
DAEMONS = ("munged", "slurmctld")
BRIDGE = "virtex-br0"
SUBNET = "10.77.0"
HOST_ADDRESS = f"{SUBNET}.1"
HOSTS_FILE = Path("/etc/hosts")
#: Bit of CAP_NET_ADMIN in /proc/self/status CapEff.
_CAP_NET_ADMIN = 12


def _search_path() -> str:
    return os.environ.get("PATH", "") + os.pathsep + "/usr/sbin" + os.pathsep + "/sbin"


def missing_binaries() -> list[str]:
    """Names of the binaries in ``BINARIES`` that are not on ``PATH`` (or ``/usr/sbin``)."""
    return [name for name in BINARIES if shutil.which(name, path=_search_path()) is None]


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


def multinode_unavailable_reason() -> str | None:
    """Why no multi-node cluster (network namespaces) can be made here, or None when one can."""
    reason = unavailable_reason()
    if reason is not None:
        return reason
    missing = [name for name in NETWORK_BINARIES if shutil.which(name, path=_search_path()) is None]
    if missing:
        return f"{', '.join(missing)} not found (install iproute2 and util-linux)"
    try:
        status = Path("/proc/self/status").read_text()
        effective = int(
            next(line for line in status.splitlines() if line.startswith("CapEff:")).split()[1], 16
        )
    except (OSError, StopIteration, ValueError):
        effective = 0
    if not effective >> _CAP_NET_ADMIN & 1:
        return (
            "network namespaces need root (CAP_NET_ADMIN): run `sudo .ci/slurm-up --nodes 2` "
            "before the tests"
        )
    return None


def _which(name: str) -> str:
    found = shutil.which(name, path=_search_path())
    if found is None:
        raise RuntimeError(unavailable_reason() or f"{name} not found")
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def node_names(count: int) -> list[str]:
    """``[localhost]`` for one node, else ``node1 .. nodeN``."""
    return [NODE] if count == 1 else [f"node{i}" for i in range(1, count + 1)]


def namespace(node: str) -> str:
    """The network namespace of a node of a multi-node cluster."""
    return f"virtex-{node}"


def node_address(node: str) -> str:
    return "127.0.0.1" if node == NODE else f"{SUBNET}.{int(node.removeprefix('node')) + 1}"


@dataclass
class SlurmCluster:
    """A running cluster whose files are all under ``root``.

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

    def _layout(self) -> dict[str, object]:
        try:
            layout: dict[str, object] = json.loads((self.root / "cluster.json").read_text())
        except (OSError, ValueError):
            layout = {}
        return layout

    @property
    def nodes(self) -> list[str]:
        """Node names (``localhost``, or ``node1 .. nodeN``)."""
        nodes = self._layout().get("nodes", [NODE])
        assert isinstance(nodes, list)
        return [str(node) for node in nodes]

    @property
    def multinode(self) -> bool:
        return len(self.nodes) > 1

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

    def node_states(self) -> dict[str, str]:
        """``{node: state}`` as sinfo reports it (``idle``, ``down*``, ...); {} when no answer."""
        try:
            out = self.run("sinfo", "-h", "-N", "-o", "%N %T", check=False).stdout
        except (OSError, subprocess.TimeoutExpired):
            return {}
        return dict(line.split(None, 1) for line in out.splitlines() if " " in line.strip())

    def controller_up(self) -> bool:
        try:
            ping = self.run("scontrol", "ping", check=False)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return ping.returncode == 0 and "UP" in ping.stdout

    def is_up(self) -> bool:
        """slurmctld answers, every slurmd runs and every node is usable (idle, mixed, allocated
        or completing)."""
        if not self.controller_up() or not all(self.slurmd_alive(node) for node in self.nodes):
            return False
        states = self.node_states()
        usable = ("idle", "mixed", "allocated", "completing")
        # A trailing `*` means "not responding": its slurmd is gone.
        return all(
            any(states.get(node, "").startswith(word) for word in usable)
            and not states.get(node, "").endswith("*")
            for node in self.nodes
        )

    def slurmd_pid_file(self, node: str) -> Path:
        return self.root / f"slurmd-{node}.pid"

    def slurmd_alive(self, node: str) -> bool:
        pid = _read_pid(self.slurmd_pid_file(node))
        return pid is not None and _alive(pid)

    def job_ids(self) -> list[str]:
        out = self.run("squeue", "-h", "-o", "%i", check=False).stdout
        return [line.strip() for line in out.splitlines() if line.strip()]

    def log_tail(self, lines: int = 30) -> str:
        """The end of each daemon's log file, for error messages."""
        parts = []
        names = [*DAEMONS, *(f"slurmd-{node}" for node in self.nodes)]
        for name in names:
            log = self.root / f"{name}.log"
            if log.exists():
                text = log.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {log} ---\n" + "\n".join(text))
        return "\n".join(parts)

    def status(self) -> str:
        """One line per node: its state and whether its slurmd runs."""
        states = self.node_states()
        lines = []
        for node in self.nodes:
            where = f"netns {namespace(node)}, " if self.multinode else ""
            alive = "running" if self.slurmd_alive(node) else "not running"
            lines.append(
                f"  {node} ({where}{node_address(node)}): {states.get(node, 'unknown')}, "
                f"slurmd {alive}"
            )
        return "\n".join(lines)

    def namespace_pids(self, node: str) -> list[int]:
        """Every process in ``node``'s network namespace (slurmd, slurmstepd, job tasks)."""
        out = subprocess.run(
            [_which("ip"), "netns", "pids", namespace(node)],
            capture_output=True,
            text=True,
            check=False,
            timeout=20,
        ).stdout
        return [int(pid) for pid in out.split()]

    def kill_node(self, node: str) -> list[int]:
        """SIGKILL every process of ``node`` (a power loss); returns their ids."""
        if not self.multinode:
            raise ValueError("kill_node needs a multi-node cluster")
        pids = self.namespace_pids(node)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pids

    def revive(self, timeout: float = 60.0) -> list[str]:
        """Starts slurmd again on every node whose slurmd is gone; waits until all are usable.

        Returns the restarted nodes.
        """
        restarted = [node for node in self.nodes if not self.slurmd_alive(node)]
        for node in restarted:
            if self.multinode:
                for pid in self.namespace_pids(node):  # leftovers of the lost node
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            self._start_slurmd(node)
        if restarted:
            _wait_for(self.is_up, timeout, self, "the restarted node(s)")
        return restarted

    def _start_slurmd(self, node: str) -> None:
        slurmd = [_which("slurmd"), "-D", "-f", str(self.conf), "-N", node]
        if self.multinode:
            inner = f"hostname {node} && exec {' '.join(slurmd)}"
            command = [
                _which("nsenter"),
                f"--net=/run/netns/{namespace(node)}",
                _which("unshare"),
                "--uts",
                "sh",
                "-c",
                inner,
            ]
        else:
            command = slurmd
        self._spawn(f"slurmd-{node}", command)
        self.slurmd_pid_file(node).write_text(f"{self.processes[f'slurmd-{node}'].pid}\n")

    def _spawn(self, name: str, command: Sequence[str]) -> None:
        # A new session: the daemons outlive `.ci/slurm-up` and ignore the terminal's Ctrl-C.
        with (self.root / f"{name}.out").open("wb") as out:
            self.processes[name] = subprocess.Popen(
                list(command),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def stop(self, timeout: float = 30.0) -> None:
        """Cancels every job, waits for the queue to drain, stops the daemons and removes the
        namespaces, bridge and hosts lines of a multi-node cluster.

        Stopping slurmd alone would leave running jobs behind, hence the scancel first.
        """
        if self.conf.exists() and self.controller_up():
            ids = self.job_ids()
            if ids:
                self.run("scancel", *ids, check=False)
                deadline = time.monotonic() + timeout
                while self.job_ids() and time.monotonic() < deadline:
                    time.sleep(0.5)
        for node in self.nodes:
            _terminate(self.slurmd_pid_file(node), self.processes.get(f"slurmd-{node}"))
        _terminate(self.root / "slurmd.pid", None)  # a cluster started by an earlier version
        for name in reversed(DAEMONS):
            _terminate(self.root / f"{name}.pid", self.processes.get(name))
        remove_network(self.root)


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


# --------------------------------------------------------------------------- network namespaces


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [_which("ip"), *args], capture_output=True, text=True, check=False, timeout=20
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")
    return result


def _hosts_marker(root: Path) -> str:
    return f"# virtex-slurm {root}"


def _edit_hosts(edit: Callable[[list[str]], list[str]]) -> None:
    # In place, not through a rename: in containers /etc/hosts is often a bind mount.
    with HOSTS_FILE.open("r+") as hosts:
        lines = hosts.read().splitlines()
        hosts.seek(0)
        hosts.truncate()
        hosts.write("".join(line + "\n" for line in edit(lines)))


def make_network(root: Path, nodes: list[str]) -> None:
    """The bridge, one namespace + veth pair per node and the hosts lines, recorded in
    ``root/cluster.json`` as they are made (so that ``remove_network`` undoes a partial set-up).

    Raises:
        RuntimeError: another multi-node test cluster holds the bridge, or an ``ip`` command
            failed (its message).
    """
    layout_file = root / "cluster.json"
    made: list[str] = []

    def record(item: str) -> None:
        made.append(item)
        layout_file.write_text(json.dumps({"nodes": nodes, "network": made}) + "\n")

    if _ip("link", "show", BRIDGE, check=False).returncode == 0:
        raise RuntimeError(
            f"the bridge {BRIDGE} exists: another multi-node test cluster runs here (stop it with "
            "`.ci/slurm-up --down` and its VIRTEX_SLURM_DIR), or remove it (`ip link del "
            f"{BRIDGE}`)"
        )
    for node in nodes:
        if _ip("netns", "pids", namespace(node), check=False).returncode == 0:
            raise RuntimeError(
                f"the network namespace {namespace(node)} exists (another test cluster?): "
                f"remove it with `ip netns del {namespace(node)}`"
            )
    record(f"link:{BRIDGE}")
    _ip("link", "add", BRIDGE, "type", "bridge")
    _ip("addr", "add", f"{HOST_ADDRESS}/24", "dev", BRIDGE)
    _ip("link", "set", BRIDGE, "up")
    for node in nodes:
        ns, veth = namespace(node), f"vtx-{node}"
        record(f"netns:{ns}")
        _ip("netns", "add", ns)
        record(f"link:{veth}")
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("link", "set", veth, "master", BRIDGE)
        _ip("link", "set", veth, "up")
        _ip("-n", ns, "addr", "add", f"{node_address(node)}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
    record("hosts")
    marker = _hosts_marker(root)
    _edit_hosts(lambda lines: [*lines, *(f"{node_address(n)} {n}  {marker}" for n in nodes)])


def remove_network(root: Path) -> None:
    """Undoes ``make_network``: kills what still runs in the namespaces, deletes them, the veth
    pairs and the bridge, and drops the hosts lines; a no-op for a single-node cluster."""
    layout_file = root / "cluster.json"
    try:
        layout = json.loads(layout_file.read_text())
    except (OSError, ValueError):
        return
    made = [str(item) for item in layout.get("network", [])]
    marker = _hosts_marker(root)
    for item in reversed(made):
        kind, _, name = item.partition(":")
        if kind == "hosts":
            _edit_hosts(lambda lines: [line for line in lines if not line.endswith(marker)])
        elif kind == "netns":
            out = _ip("netns", "pids", name, check=False).stdout
            for pid in out.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            _ip("netns", "del", name, check=False)
        elif kind == "link":
            _ip("link", "del", name, check=False)
    layout_file.write_text(json.dumps({"nodes": layout.get("nodes", [NODE]), "network": []}) + "\n")


# --------------------------------------------------------------------------- slurm.conf, start


def slurm_conf(root: Path, *, user: str, nodes: list[str], cpus: int, memory_mb: int) -> str:
    """The text of a minimal slurm.conf for ``nodes`` (see ``node_names``)."""
    ctld_port, slurmd_port = _free_port(), _free_port()
    if nodes == [NODE]:
        controller = f"{NODE}(127.0.0.1)"
    else:
        controller = f"{socket.gethostname()}({HOST_ADDRESS})"
    node_lines = "\n".join(
        f"NodeName={node} NodeAddr={node_address(node)} CPUs={cpus} RealMemory={memory_mb} "
        "State=UNKNOWN"
        for node in nodes
    )
    return f"""\
# A test cluster of {len(nodes)} node(s) written by slurm_cluster.py; every path is under {root}.
ClusterName=virtex
SlurmctldHost={controller}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
AuthInfo=socket={root}/munge/munge.socket,cred_expire=5
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=bf_interval=1,sched_interval=1
KillWait=5
MinJobAge=300
SlurmdTimeout=15
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
JobCompType=jobcomp/none
{node_lines}
PartitionName={PARTITION} Nodes={",".join(nodes)} Default=YES MaxTime=INFINITE State=UP
"""


def attach(root: Path) -> SlurmCluster | None:
    """The cluster already running under ``root``, or None."""
    cluster = SlurmCluster(Path(root))
    if cluster.conf.exists() and cluster.is_up():
        return cluster
    return None


def start(
    root: Path | None = None,
    *,
    nodes: int = 1,
    cpus: int | None = None,
    timeout: float = 60.0,
) -> SlurmCluster:
    """Starts munged, slurmctld and ``nodes`` slurmd under ``root`` (a fresh ``mkdtemp`` folder
    if None); ``nodes >= 2`` makes the network namespaces first.

    Any earlier cluster state under ``root`` is discarded (and its network removed).

    Raises:
        RuntimeError: Slurm is not installed, namespaces cannot be made, or the cluster did not
            come up within ``timeout`` seconds (the message holds the end of each daemon's log).
    """
    reason = unavailable_reason() if nodes == 1 else multinode_unavailable_reason()
    if reason is not None:
        raise RuntimeError(reason)
    if root is None:
        root = Path(tempfile.mkdtemp(prefix="virtex-slurm-"))
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    SlurmCluster(root).stop()  # leftovers of an earlier cluster in the same folder
    for name in ("state", "spool", "munge"):
        shutil.rmtree(root / name, ignore_errors=True)
        (root / name).mkdir(mode=0o755)
    for log in root.glob("*.log"):
        log.unlink()

    names = node_names(nodes)
    (root / "cluster.json").write_text(json.dumps({"nodes": names, "network": []}) + "\n")
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o600)
    user = getpass.getuser()
    cpus = min(cpus or os.cpu_count() or 1, os.cpu_count() or 1)
    conf = slurm_conf(root, user=user, nodes=names, cpus=cpus, memory_mb=4000)
    (root / "slurm.conf").write_text(conf)

    cluster = SlurmCluster(root, owned=True)
    try:
        if nodes > 1:
            make_network(root, names)
        cluster._spawn(
            "munged",
            [
                _which("munged"),
                "-F",
                f"--key-file={key}",
                f"--socket={root}/munge/munge.socket",
                f"--pid-file={root}/munged.pid",
                f"--seed-file={root}/munge/munge.seed",
                f"--log-file={root}/munged.log",
            ],
        )
        _wait_for(lambda: (root / "munge" / "munge.socket").exists(), 10, cluster, "munged")
        (root / "munged.pid").write_text(f"{cluster.processes['munged'].pid}\n")
        cluster._spawn("slurmctld", [_which("slurmctld"), "-D", "-c", "-f", str(cluster.conf)])
        (root / "slurmctld.pid").write_text(f"{cluster.processes['slurmctld'].pid}\n")
        for node in names:
            cluster._start_slurmd(node)
        _wait_for(cluster.is_up, timeout, cluster, "the nodes")
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _wait_for(
    ready: Callable[[], object], timeout: float, cluster: SlurmCluster, what: str
) -> None:
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
        f"{cluster.status()}\n{cluster.log_tail()}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"default {DEFAULT_DIR}")
    parser.add_argument(
        "--nodes", type=int, default=1, help="nodes of a new cluster (default 1; 2+ needs root)"
    )
    args = parser.parse_args(argv)
    root: Path = args.dir
    existing = SlurmCluster(root)
    if args.action == "status":
        up = existing.conf.exists() and existing.is_up()
        print(f"Slurm test cluster in {root}: {'up' if up else 'down'}")
        if existing.conf.exists() and existing.controller_up():
            print(existing.status())
        return 0 if up else 1
    if args.action == "down":
        existing.stop()
        print(f"Slurm test cluster in {root} stopped")
        return 0
    if args.nodes < 1:
        parser.error(f"--nodes must be >= 1, got {args.nodes}")
    try:
        running = existing.conf.exists() and existing.controller_up()
        legacy = (root / "slurmd.pid").exists()  # started by an earlier version of this file
        if running and (len(existing.nodes) != args.nodes or legacy):
            if existing.job_ids():
                print(
                    f"error: the cluster in {root} has {len(existing.nodes)} node(s), not "
                    f"{args.nodes}, and jobs in its queue: stop it first (--down)",
                    file=sys.stderr,
                )
                return 1
            existing.stop()  # an idle cluster of another shape: replaced
            running = False
        if running:
            restarted = existing.revive()
            what = f"; restarted slurmd on {', '.join(restarted)}" if restarted else ""
            print(f"Slurm test cluster already up in {root}{what}")
            cluster = existing
        else:
            cluster = start(root, nodes=args.nodes)
            print(f"Slurm test cluster of {args.nodes} node(s) started in {root}")
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(cluster.status())
    print(f"export SLURM_CONF={cluster.conf}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
