"""Fetching weights: local paths or URLs, cached, verified by SHA-256, written atomically."""

from __future__ import annotations

import hashlib
import os
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, BinaryIO

import torch

from virtex_models.atomic_file import atomic_write

__all__ = ["cache_name", "default_cache_dir", "fetch", "sha256_of"]

_CHUNK = 1 << 20


def default_cache_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints/virtex`` (``torch.hub.get_dir()`` based)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / "virtex"


def sha256_of(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_name(url: str) -> str:
    """The default cache file name of ``url``: a digest of the whole URL, then its file name."""
    key = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    return f"{key}-{Path(urllib.parse.urlparse(url).path).name or 'weights.pt'}"


def _is_url(source: str) -> bool:
    return urllib.parse.urlparse(source).scheme in ("http", "https", "file")


def fetch(
    source: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    filename: str | None = None,
    progress: bool = True,
) -> Path:
    """A local file for ``source``, downloading URLs into ``cache_dir`` once.

    A download goes to a temporary file next to its destination, is hashed while it is
    written, checked against ``sha256`` (when given) and only then renamed into place, so the
    cache never holds a partial or corrupt file. A cached file is re-verified when ``sha256``
    is given.

    Args:
        source: a path, or an ``http(s)://`` / ``file://`` URL.
        sha256: expected hex digest (``None``: not checked).
        cache_dir: where downloads go (default :func:`default_cache_dir`).
        filename: cache file name (default: ``<16 hex digits of the URL's SHA-256>-<last path
            component>``, so two URLs that end in the same file name, or differ only in their
            query, never share a cache entry).
        progress: show a tqdm bar while downloading (when tqdm is installed).

    Raises:
        FileNotFoundError: a local ``source`` that does not exist.
        ValueError: a digest mismatch, naming the file or URL and both digests.
    """
    text = os.fspath(source)
    if not _is_url(text):
        path = Path(text)
        if not path.is_file():
            raise FileNotFoundError(f"no weights file at {path}")
        if sha256 is not None and (actual := sha256_of(path)) != sha256.lower():
            raise ValueError(f"{path}: sha256 {actual} does not match the expected {sha256}")
        return path
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    name = filename or cache_name(text)
    destination = folder / name
    if destination.is_file():
        if sha256 is None or sha256_of(destination) == sha256.lower():
            return destination
        destination.unlink()  # a stale or corrupt cache entry: download again
    digest = hashlib.sha256()

    def write(out: BinaryIO) -> None:
        with urllib.request.urlopen(text) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            bar = _progress(total, name) if progress else None
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                out.write(chunk)
                digest.update(chunk)
                if bar is not None:
                    bar.update(len(chunk))
            if bar is not None:
                bar.close()
        actual = digest.hexdigest()
        if sha256 is not None and actual != sha256.lower():  # nothing is moved into the cache
            raise ValueError(f"{text}: sha256 {actual} does not match the expected {sha256}")

    return atomic_write(destination, write)


def _progress(total: int | None, name: str) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional here: hubconf needs only torch + torchvision
        return None
    return tqdm(total=total, unit="B", unit_scale=True, desc=f"download {name}")
