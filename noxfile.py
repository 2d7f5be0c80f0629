"""Sessions for the virtex monorepo.

The README's test command is ``nox -s lint layering typecheck tests tests-portable tests-slurm``
(what ``.ci/run`` calls).
Every install goes through ``constraints.txt`` so that no session resolves a torch other than the
tested 2.14.1 / torchvision 0.29.1 (each other build is gigabytes). Environments are reused between
runs: a second run only re-installs our four packages.

``typecheck``, ``tests``, ``tests-portable``, ``tests-slurm`` and ``demo`` share one environment,
``.nox/virtex``, that this file creates and updates itself (those sessions have no nox environment
of their own): each environment holding the tested torch (a CUDA build) takes 5.6 GB, and three of
them plus the tests' temporary files once filled a CI machine's disk. Delete ``.nox/virtex``
to start it afresh.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nox

nox.options.reuse_venv = "yes"
nox.options.sessions = ["lint", "layering", "typecheck", "tests", "tests-portable", "tests-slurm"]
nox.options.error_on_missing_interpreters = True

ROOT = Path(__file__).parent
PYTHON = "3.11"
CONSTRAINTS = ("-c", str(ROOT / "constraints.txt"))
PACKAGES = {name: f"packages/virtex-{name}" for name in ("data", "models", "train", "eval")}
#: Internal dependencies of each package (ARCHITECTURE.md's dependency direction).
INTERNAL = {
    "data": [],
    "models": [],
    "train": ["data", "models"],
    "eval": ["data", "models"],
}
LINT_TOOLS = ("ruff==0.17.6",)
TYPECHECK_TOOLS = ("mypy==2.4.1", "types-PyYAML", "types-tqdm")


SHARED_ENV = ROOT / ".nox" / "virtex"


class SharedEnv:
    """``.nox/virtex``: the one environment with torch, created when missing (see the top)."""

    def __init__(self, session: nox.Session, *extra: str) -> None:
        """Create the environment if needed; install our four packages (editable, ``[test]``)."""
        self.session = session
        self.bin = SHARED_ENV / "bin"
        if not (self.bin / "python").exists():
            # virtualenv is what nox itself uses (it comes with nox): the same seeded pip.
            session.run(
                sys.executable, "-m", "virtualenv", "--python", f"python{PYTHON}", str(SHARED_ENV)
            )
        editable = [arg for name in PACKAGES for arg in ("-e", f"{PACKAGES[name]}[test]")]
        self.run("python", "-m", "pip", "install", *CONSTRAINTS, *editable, *extra)

    def run(self, program: str, *args: str, env: dict[str, str] | None = None) -> None:
        """``program`` from the environment's bin/, with the environment first on PATH."""
        environ = {
            "VIRTUAL_ENV": str(SHARED_ENV),
            "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
            **(env or {}),
        }
        self.session.run(str(self.bin / program), *args, env=environ, external=True)

    def pytest(self, *paths: str) -> None:
        # One torch thread per process: the suite runs on a shared 2-core machine where more
        # threads only contend (measured: detectron2 iterations 10x slower with 2 threads).
        env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        self.run("pytest", *paths, *self.session.posargs, env=env)


TEST_PATHS = (*(f"{path}/tests" for path in PACKAGES.values()), "tests")


def _install_detectron2(shared: SharedEnv) -> None:
    # detectron2 is not on the package index: the installer keeps an importable one, else builds
    # it (packages/virtex-eval/docs/DETECTRON2.md); a reused environment only re-checks the import.
    shared.run(
        "python",
        "-m",
        "virtex_eval.detectron2.install",
        env={"PIP_CONSTRAINT": str(ROOT / "constraints.txt")},
    )


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """All four packages in one environment: every package's tests and the root tests/."""
    shared = SharedEnv(session, "pytest-timeout")
    _install_detectron2(shared)
    shared.pytest(*TEST_PATHS)


#: What ``tests-portable`` limits the CPU kernels to, by the capability this CPU has natively:
#: always a different kernel set from the ``tests`` session's (torch's ATen dispatch level and
#: oneDNN's instruction set; both are read when torch starts).
SECOND_KERNELS = {
    "avx512": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "avx2": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"},
}


@nox.session(venv_backend="none", name="tests-portable")
def tests_portable(session: nox.Session) -> None:
    """The default suite again on a second CPU kernel set and with 2 threads.

    Training numbers depend on the CPU's kernels (AVX-512 vs AVX2, oneDNN's ISA) and on the
    thread count; CI runs on whatever x86-64 machine it gets. ``tests`` runs the native kernels
    with 1 thread; this session limits the kernels one level down (AVX-512 -> AVX2, AVX2 -> no
    vector kernels) and runs 2 threads, so that an assertion tuned to one CPU fails here before
    it lands. detectron2's tests keep 1 thread (10x slower with 2 on 2 cores).
    """
    shared = SharedEnv(session, "pytest-timeout")
    _install_detectron2(shared)
    probe = "import torch; print(torch.backends.cpu.get_cpu_capability().lower())"
    native = session.run(str(shared.bin / "python"), "-c", probe, external=True, silent=True)
    level = "avx512" if "avx512" in str(native) else "avx2"
    kernels = SECOND_KERNELS[level]
    session.log(f"native kernels: {str(native).strip()}; running with {kernels}")
    marks = "not slow and not gpu and not slurm"
    shared.run(
        "pytest",
        *TEST_PATHS,
        "-m",
        f"{marks} and not detectron2",
        *session.posargs,
        env={**kernels, "OMP_NUM_THREADS": "2"},
    )
    shared.run(
        "pytest",
        "packages/virtex-eval/tests",
        "-m",
        f"{marks} and detectron2",
        *session.posargs,
        env={**kernels, "OMP_NUM_THREADS": "1"},
    )


@nox.session(venv_backend="none", name="tests-slurm")
def tests_slurm(session: nox.Session) -> None:
    """The `slurm` tests against a real two-node Slurm cluster started here (.ci/slurm-up).

    `.ci/slurm-up --nodes 2` installs Debian's munge/slurmctld/slurmd when missing (apt-get,
    through `sudo -n` when not root) and starts the daemons as the current user, each node in a
    network namespace (one node, and the multi-node tests skipped, where namespaces cannot be
    made); they are stopped and the namespaces removed when the session ends. See
    packages/virtex-train/docs/SLURM.md.
    """
    shared = SharedEnv(session)
    session.run(str(ROOT / ".ci" / "slurm-up"), "--nodes", "2", external=True)
    try:
        tests = ("test_slurm.py", "test_slurm_multinode.py")
        shared.pytest(*(f"packages/virtex-train/tests/{name}" for name in tests), "-m", "slurm")
    finally:
        session.run(str(ROOT / ".ci" / "slurm-up"), "--down", external=True)


def _package_session(name: str) -> None:
    @nox.session(python=PYTHON, name=f"tests-{name}", default=False)
    def package_tests(session: nox.Session) -> None:
        # A regular (non-editable) install of the package and only its declared dependencies:
        # this is what catches an import of something the package does not declare.
        internal = [PACKAGES[dep] for dep in INTERNAL[name]]
        session.install(*CONSTRAINTS, *internal, f"{PACKAGES[name]}[test]")
        env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        session.run("pytest", f"{PACKAGES[name]}/tests", *session.posargs, env=env)

    package_tests.__doc__ = f"virtex-{name} alone, with only its declared dependencies."


for _name in PACKAGES:
    _package_session(_name)


@nox.session(venv_backend="none", default=False)
def demo(session: nox.Session) -> None:
    """The task ablation in miniature (demo/ablation.py).

    Arguments after `--` replace the default `--preset default --output-dir runs/ablation`, e.g.
    `nox -s demo -- --preset fast --output-dir runs/x`.
    """
    shared = SharedEnv(session)
    arguments = session.posargs or ["--preset", "default", "--output-dir", "runs/ablation"]
    shared.run("python", "demo/ablation.py", *arguments)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over the whole repository."""
    session.install(*LINT_TOOLS)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(venv_backend="none")
def typecheck(session: nox.Session) -> None:
    """mypy over the four packages' sources."""
    shared = SharedEnv(session, *TYPECHECK_TOOLS)
    shared.run("mypy", *(f"{path}/src" for path in PACKAGES.values()))


@nox.session(python=PYTHON)
def layering(session: nox.Session) -> None:
    """The dependency direction between packages (no package installed: it reads sources)."""
    session.install("pytest")
    session.run("pytest", "tests/test_layering.py", "-p", "no:cacheprovider")


MUTATION_TOOLS = ("cosmic-ray==8.7.0",)


@nox.session(python=PYTHON, default=False)
def mutation(session: nox.Session) -> None:
    """Mutation testing (cosmic-ray) of the targets in mutation/targets.toml; see TESTING.md.

    cosmic-ray lives in this session's own environment; each mutant's tests run in the shared
    one (.nox/virtex). Arguments after `--` choose targets, e.g. `nox -s mutation -- cider-d`.
    Not part of the README's test command: it takes minutes per target.
    """
    SharedEnv(session)
    session.install(*MUTATION_TOOLS)
    session.run(
        "python", "mutation/run.py", "--python", str(SHARED_ENV / "bin" / "python"),
        *session.posargs,
    )  # fmt: skip
