"""The detectron2 installer: route choice, sha256 check, the pure-Python rebuild of an sdist."""

from __future__ import annotations

import ast
import http.server
import io
import socket
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import pytest

from virtex_eval.detectron2 import install


def _fake_sdist(path: Path) -> Path:
    """A pb1-detectron2-shaped sdist: package, model-zoo config, a setup.py that must not run."""
    files = {
        "pb1-detectron2-0.6/setup.py": "raise SystemExit('the original setup.py ran')\n",
        "pb1-detectron2-0.6/detectron2/__init__.py": "__version__ = '0.6'\n",
        "pb1-detectron2-0.6/detectron2/model_zoo/__init__.py": "",
        "pb1-detectron2-0.6/detectron2/model_zoo/configs/COCO/x.yaml": "VERSION: 2\n",
        "pb1-detectron2-0.6/projects/PointRend/point_rend/__init__.py": "",
        "pb1-detectron2-0.6/projects/DeepLab/deeplab/__init__.py": "",
        "pb1-detectron2-0.6/projects/Panoptic-DeepLab/panoptic_deeplab/__init__.py": "",
        "pb1-detectron2-0.6/pb1_detectron2.egg-info/SOURCES.txt": "setup.py\n",
    }
    with tarfile.open(path, "w:gz") as archive:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_patched_setup_py_needs_no_torch_and_no_compiler() -> None:
    text = install.patched_setup_py()
    tree = ast.parse(text)
    imported = {
        name.split(".")[0]
        for node in ast.walk(tree)
        for name in (
            [alias.name for alias in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else []
        )
    }
    assert imported == {"setuptools"}
    assert "ext_modules" not in text
    assert "fvcore>=0.1.5,<0.1.6" in text


def test_sdist_with_another_digest_is_refused(tmp_path: Path) -> None:
    sdist = _fake_sdist(tmp_path / "pb1-detectron2-0.6.tar.gz")
    with pytest.raises(ValueError, match=r"sha256 [0-9a-f]{64} is not the expected"):
        install.build_from_sdist(sdist)


def test_sdist_rebuilds_as_pure_python_wheel_with_model_zoo_configs(tmp_path: Path) -> None:
    sdist = _fake_sdist(tmp_path / "pb1-detectron2-0.6.tar.gz")
    install.build_from_sdist(sdist, expected_sha256=install.sha256_of(sdist), wheel_dir=tmp_path)
    (wheel,) = tmp_path.glob("*.whl")
    assert wheel.name == "detectron2-0.6+pb1.nocsrc-py3-none-any.whl"
    names = zipfile.ZipFile(wheel).namelist()
    assert "detectron2/model_zoo/configs/COCO/x.yaml" in names
    assert "detectron2/projects/point_rend/__init__.py" in names
    assert not any(name.endswith((".so", ".pyd")) for name in names)


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        pass


def test_reachability_needs_an_http_answer_within_the_timeout() -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/detectron2"
    try:
        assert install.github_reachable(5.0, url=url)
    finally:
        server.shutdown()
        server.server_close()
    assert not install.github_reachable(2.0, url=url)  # closed port
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        start = time.perf_counter()
        assert not install.github_reachable(0.5, url=f"http://127.0.0.1:{silent.getsockname()[1]}")
        assert time.perf_counter() - start < 2


def test_dry_run_names_the_route() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "virtex_eval.detectron2.install", "--dry-run", "--method", "sdist"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "detectron2 install route: sdist" in result.stdout
    helped = subprocess.run(
        [sys.executable, "-m", "virtex_eval.detectron2.install", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "pb1-detectron2" in helped.stdout


def test_sdist_is_fetched_from_the_simple_index_named_by_pip_index_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A local PEP 691 index: the JSON listing names the file by a relative URL.
    payload = b"sdist bytes"
    listing = (
        b'{"meta": {"api-version": "1.1"}, "name": "pb1-detectron2", "files": ['
        b'{"filename": "pb1-detectron2-0.5.tar.gz", "url": "../../files/old.tar.gz"},'
        b'{"filename": "pb1-detectron2-0.6.tar.gz", "url": "../../files/new.tar.gz"}]}'
    )
    routes = {"/simple/pb1-detectron2/": listing, "/files/new.tar.gz": payload}
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(f"{self.path} {self.headers.get('Accept')}")
            body = routes.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{server.server_port}/simple")
        path = install._download_sdist(tmp_path)
    finally:
        server.shutdown()
    assert path == tmp_path / "pb1-detectron2-0.6.tar.gz"
    assert path.read_bytes() == payload
    assert seen[0] == "/simple/pb1-detectron2/ application/vnd.pypi.simple.v1+json"
    assert seen[1].startswith("/files/new.tar.gz")
