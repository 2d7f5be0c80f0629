"""Install detectron2 into the running interpreter: ``python -m virtex_eval.detectron2.install``.

Three routes, tried in order (``--method auto``):

1. ``present``: an importable detectron2 is kept as it is.
2. ``source``: official detectron2 from GitHub (``pip install git+https://...``, compiles its C++
   and CUDA ops; needs a compiler and minutes), only when github.com answers within ``--timeout``
   seconds.
3. ``sdist``: the ``pb1-detectron2==0.6`` source distribution from the package index, whose
   Python files are upstream detectron2 v0.6 (Apache-2.0). As published it cannot be used: its
   sdist lacks the C++ sources, its ``setup.py`` imports torch and does not package the model-zoo
   YAML files. We check its sha256, replace ``setup.py`` by a pure-Python one (no extension; the
   model-zoo configs packaged) and ``pip install`` the result as ``detectron2 0.6+pb1.nocsrc``.
   Standard Mask R-CNN / Faster R-CNN work with it (NMS and ROIAlign come from torchvision);
   rotated boxes, deformable convolutions and the C++ COCO evaluator do not.
   :mod:`virtex_eval.detectron2.compat` supplies the rest at import time.

Every route first installs detectron2's pure-Python dependencies (:data:`DEPENDENCIES`).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "DEPENDENCIES",
    "PB1_SHA256",
    "PB1_SPEC",
    "UPSTREAM_PROBE",
    "UPSTREAM_URL",
    "build_from_sdist",
    "detectron2_present",
    "github_reachable",
    "main",
    "patched_setup_py",
    "sha256_of",
]

PB1_SPEC = "pb1-detectron2==0.6"
PB1_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
UPSTREAM_URL = "git+https://github.com/facebookresearch/detectron2.git"
UPSTREAM_PROBE = "https://github.com/facebookresearch/detectron2"
#: detectron2 v0.6's own requirements, less those it needs only for optional features
#: (black: formatting of saved lazy configs; pydot, future: caffe2 export).
DEPENDENCIES = (
    "fvcore>=0.1.5,<0.1.6",
    "iopath>=0.1.7,<0.1.10",
    "yacs>=0.1.8",
    "termcolor>=1.1",
    "tabulate",
    "cloudpickle",
    "omegaconf>=2.1",
    "hydra-core>=1.1",
    "pycocotools>=2.0.2",
    "matplotlib",
    "tensorboard",
    "Pillow>=7.1",
    "tqdm>4.29.0",
)

#: The ``setup.py`` written over the sdist's. It imports neither torch nor any extension builder,
#: so it builds in seconds without a compiler; ``detectron2._C`` is then absent (see compat.py).
_SETUP_PY = """\
# Written by virtex_eval.detectron2.install over the setup.py of pb1-detectron2 0.6: the same
# Python files, no C++ extension (the sdist has no C++ sources), model-zoo configs packaged.
from setuptools import find_packages, setup

PROJECTS = {{
    "detectron2.projects.point_rend": "projects/PointRend/point_rend",
    "detectron2.projects.deeplab": "projects/DeepLab/deeplab",
    "detectron2.projects.panoptic_deeplab": "projects/Panoptic-DeepLab/panoptic_deeplab",
}}

setup(
    name="detectron2",
    version="{version}",
    author="FAIR",
    url="https://github.com/facebookresearch/detectron2",
    description="detectron2 v0.6 Python files (from pb1-detectron2 0.6) without compiled ops",
    license="Apache-2.0",
    packages=find_packages(include=("detectron2", "detectron2.*")) + list(PROJECTS),
    package_dir=PROJECTS,
    package_data={{"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]}},
    python_requires=">=3.6",
    install_requires={requires!r},
)
"""

#: Version of what the sdist route installs: upstream 0.6, local label naming its origin.
SDIST_VERSION = "0.6+pb1.nocsrc"


def detectron2_present() -> bool:
    """Whether ``detectron2`` can be found (without importing it)."""
    return importlib.util.find_spec("detectron2") is not None


def github_reachable(timeout: float = 3.0, url: str = UPSTREAM_PROBE) -> bool:
    """Whether ``url`` answers an HTTPS ``HEAD`` request within ``timeout`` seconds.

    An HTTP answer, not a TCP connection, is the test: some sandboxes accept every connection
    through a proxy and fail later. Name resolution has no timeout of its own, so the probe runs
    in a daemon thread that is abandoned when the time is up.
    """
    result: list[bool] = []

    def probe() -> None:
        try:
            request = urllib.request.Request(url, method="HEAD")
            with urllib.request.urlopen(request, timeout=timeout) as response:
                result.append(response.status < 400)
        except (OSError, ValueError):
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def sha256_of(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def patched_setup_py(version: str = SDIST_VERSION) -> str:
    """The pure-Python ``setup.py`` written over the sdist's."""
    return _SETUP_PY.format(version=version, requires=list(DEPENDENCIES))


def _pip(*args: str, quiet: bool = True) -> None:
    command = [sys.executable, "-m", "pip", *args]
    if quiet:
        command.append("--quiet")
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def _modern_setuptools() -> bool:
    # setuptools >= 70.1 builds wheels without the separate ``wheel`` package; with it present
    # the build needs no isolated environment (no download, works offline).
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return False
    parts = [int(p) for p in version.split(".")[:2] if p.isdigit()]
    return parts >= [70, 1]


def _unpack(sdist: Path, into: Path) -> Path:
    with tarfile.open(sdist) as archive:
        archive.extractall(into, filter="data")
    roots = [p for p in into.iterdir() if p.is_dir()]
    if len(roots) != 1 or not (roots[0] / "detectron2" / "__init__.py").is_file():
        raise RuntimeError(f"{sdist}: not a detectron2 source distribution")
    return roots[0]


def build_from_sdist(
    sdist: str | os.PathLike[str],
    *,
    expected_sha256: str | None = PB1_SHA256,
    wheel_dir: str | os.PathLike[str] | None = None,
) -> None:
    """Build (``wheel_dir`` given) or install the pure-Python detectron2 from a pb1 sdist.

    Args:
        sdist: the ``pb1-detectron2-0.6.tar.gz`` file.
        expected_sha256: refuse a file whose digest differs (``None``: no check, for tests).
        wheel_dir: write the wheel there instead of installing it.

    Raises:
        ValueError: the digest differs.
        RuntimeError: the archive holds no detectron2 package.
        subprocess.CalledProcessError: pip failed.
    """
    path = Path(sdist)
    if expected_sha256 is not None:
        digest = sha256_of(path)
        if digest != expected_sha256:
            raise ValueError(f"{path}: sha256 {digest} is not the expected {expected_sha256}")
    with tempfile.TemporaryDirectory(prefix="virtex-d2-") as scratch:
        root = _unpack(path, Path(scratch))
        (root / "setup.py").write_text(patched_setup_py(), encoding="utf-8")
        for stale in root.glob("*.egg-info"):
            # The sdist's own metadata names pb1-detectron2; setuptools would reuse its file list.
            for item in sorted(stale.rglob("*"), reverse=True):
                item.unlink() if item.is_file() else item.rmdir()
            stale.rmdir()
        isolation = ["--no-build-isolation"] if _modern_setuptools() else []
        if wheel_dir is not None:
            _pip("wheel", "--no-deps", *isolation, "-w", str(wheel_dir), str(root))
        else:
            _pip("install", "--no-deps", *isolation, str(root))


def _download_sdist(into: Path) -> Path:
    # Not `pip download`: pip prepares the sdist's metadata (running its setup.py), and pip >= 25
    # then refuses it ("Distributions from PyPI cannot declare direct URL dependencies": its
    # `all` extra names panopticapi by URL). So the file comes straight from the index's simple
    # API (PEP 691 JSON; $PIP_INDEX_URL or PyPI) and build_from_sdist checks its sha256.
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/") + "/"
    page = urllib.parse.urljoin(index, "pb1-detectron2/")
    request = urllib.request.Request(
        page, headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        listing = json.load(response)
    names = {"pb1-detectron2-0.6.tar.gz", "pb1_detectron2-0.6.tar.gz"}
    files = [entry for entry in listing.get("files", []) if entry.get("filename") in names]
    if not files:
        raise RuntimeError(f"{page} lists no sdist of {PB1_SPEC}")
    target = into / files[0]["filename"]
    with urllib.request.urlopen(urllib.parse.urljoin(page, files[0]["url"]), timeout=120) as r:
        target.write_bytes(r.read())
    return target


def _check_import() -> None:
    # A fresh interpreter: the shims must work before anything of detectron2 is imported.
    code = (
        "from virtex_eval.detectron2 import compat; compat.apply(); "
        "import detectron2, detectron2.engine, detectron2.evaluation, detectron2.modeling; "
        "print('detectron2', detectron2.__version__, 'imports fine')"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m virtex_eval.detectron2.install",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Routes: present (keep an importable detectron2), source (official detectron2 "
        "from GitHub, compiled), sdist (pb1-detectron2 0.6 rebuilt as pure Python).",
    )
    parser.add_argument(
        "--method",
        choices=("auto", "present", "source", "sdist"),
        default="auto",
        help="auto: present, else source when github.com answers, else sdist",
    )
    parser.add_argument(
        "--timeout", type=float, default=3.0, help="seconds to wait for github.com (auto)"
    )
    parser.add_argument(
        "--sdist", type=Path, help="a local pb1-detectron2-0.6.tar.gz (no download; sha256 checked)"
    )
    parser.add_argument(
        "--no-deps", action="store_true", help="do not install detectron2's dependencies"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the chosen route only")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    method = args.method
    if method == "auto":
        if detectron2_present():
            method = "present"
        elif args.sdist is None and github_reachable(args.timeout):
            method = "source"
        else:
            method = "sdist"
    print(f"detectron2 install route: {method}", flush=True)
    if args.dry_run:
        return 0
    if method == "present":
        if not detectron2_present():
            print("error: --method present but detectron2 is not importable", file=sys.stderr)
            return 1
    else:
        if not args.no_deps:
            _pip("install", *DEPENDENCIES)
        if method == "source":
            # Upstream's own instructions; it compiles against the installed torch.
            _pip("install", "--no-build-isolation", UPSTREAM_URL, quiet=False)
        else:
            if not _modern_setuptools():
                # Running the sdist's setup.py (pip download) and building ours both need it
                # in this environment, not in an isolated one (the former imports torch).
                # Below 81 it still ships pkg_resources (detectron2.model_zoo imports it).
                _pip("install", "setuptools>=70.1,<81")
            with tempfile.TemporaryDirectory(prefix="virtex-d2-dl-") as scratch:
                sdist = args.sdist or _download_sdist(Path(scratch))
                build_from_sdist(sdist)
    _check_import()
    print(f"detectron2 ready ({method}) in {time.perf_counter() - start:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
