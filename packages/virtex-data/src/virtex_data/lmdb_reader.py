"""Random access to an LMDB file of image records, safe in DataLoader workers.

The environment is opened lazily, in the process that reads (each DataLoader worker opens its
own after the fork), read-only and without the lock file (``lock=False``, valid because a
finished file is never written again: the writer renames it into place only when complete).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lmdb
import msgpack

from virtex_data.lmdb_format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_KEY,
    ImageRecord,
    Manifest,
    decode_record,
    record_key,
)
from virtex_data.lmdb_writer import PARTIAL_SUFFIX
from virtex_data.normalize import NORMALIZATION_VERSION

__all__ = ["DEFAULT_READAHEAD", "LmdbFormatError", "LmdbReader", "read_manifest"]

#: Default for ``readahead``. Measured here (benchmarks/data_loading.py, ~160 KB records, random
#: order, cold page cache): 2,885 records/s with readahead against 662/s without (files: 3,677/s);
#: warm, both beat files. Records span many pages, so the kernel's readahead fetches one record
#: in one request instead of one 4 KB page fault at a time. See the package README.
DEFAULT_READAHEAD = True


class LmdbFormatError(ValueError):
    """An LMDB file this reader cannot use (message names the file and the problem)."""


#: One environment per (file, process): py-lmdb refuses to open a file twice in one process, and
#: several readers (e.g. a captioning and a multilabel dataset) may share a file.
_ENVIRONMENTS: dict[tuple[str, int], lmdb.Environment] = {}


def _shared(path: Path, readahead: bool, resolved: str | None = None) -> lmdb.Environment:
    key = (resolved or str(path.resolve()), os.getpid())
    env = _ENVIRONMENTS.get(key)
    if env is None:
        _drop_inherited(key[0])
        env = _ENVIRONMENTS[key] = _open(path, readahead)
    return env


def _drop_inherited(resolved: str) -> None:
    """Close handles of this file inherited through fork (never used, only closed).

    py-lmdb refuses to open a file that is open "in this process", and a forked DataLoader
    worker inherits its parent's handle. With ``lock=False`` and read-only, closing it in the
    child only unmaps the child's copy; the parent's handle is unaffected.
    """
    for key in [k for k in _ENVIRONMENTS if k[0] == resolved and k[1] != os.getpid()]:
        _ENVIRONMENTS.pop(key).close()


def _release(path: Path) -> None:
    env = _ENVIRONMENTS.pop((str(path.resolve()), os.getpid()), None)
    if env is not None:
        env.close()


def _open(path: Path, readahead: bool) -> lmdb.Environment:
    if not path.exists():
        partial = path.with_name(path.name + PARTIAL_SUFFIX)
        if partial.exists():
            raise LmdbFormatError(f"{path}: still being written ({partial.name} exists)")
        raise FileNotFoundError(f"LMDB file not found: {path}")
    if path.is_dir():
        raise LmdbFormatError(f"{path}: is a folder; virtex LMDB files are single files")
    try:
        return lmdb.open(
            str(path),
            subdir=False,
            readonly=True,
            lock=False,
            readahead=readahead,
            meminit=False,
            max_readers=2048,
        )
    except lmdb.Error as error:
        raise LmdbFormatError(f"{path}: not an LMDB file: {error}") from error


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read and validate the manifest of an LMDB file.

    Raises:
        LmdbFormatError: no manifest (incomplete or still being written), another format or
            format version, or another caption normalisation version.
    """
    source = Path(path)
    key = (str(source.resolve()), os.getpid())
    if key in _ENVIRONMENTS:
        with _ENVIRONMENTS[key].begin() as txn:
            data = txn.get(MANIFEST_KEY)
    else:  # a short-lived handle: the reader opens its own, with its readahead, when it reads
        _drop_inherited(key[0])
        env = _open(source, readahead=False)
        try:
            with env.begin() as txn:
                data = txn.get(MANIFEST_KEY)
        finally:
            env.close()
    if data is None:
        raise LmdbFormatError(
            f"{source}: no manifest record: the file is incomplete or still being written"
        )
    try:
        raw: Any = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as error:
        raise LmdbFormatError(f"{source}: unreadable manifest: {error!r}") from error
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
        raise LmdbFormatError(f"{source}: not a {FORMAT_NAME} file")
    if raw.get("format_version") != FORMAT_VERSION:
        raise LmdbFormatError(
            f"{source}: format version {raw.get('format_version')!r}, this reader reads "
            f"version {FORMAT_VERSION}; rebuild it with `virtex-data build-lmdb`"
        )
    if not raw.get("complete", False):
        raise LmdbFormatError(f"{source}: manifest says the file is incomplete")
    try:
        manifest = Manifest.from_bytes(data)
    except TypeError as error:
        raise LmdbFormatError(f"{source}: malformed manifest: {error}") from error
    if manifest.normalization_version != NORMALIZATION_VERSION:
        raise LmdbFormatError(
            f"{source}: captions normalised with version {manifest.normalization_version}, "
            f"this code uses {NORMALIZATION_VERSION}; rebuild the file"
        )
    if len(manifest.image_ids) != manifest.count:
        raise LmdbFormatError(f"{source}: manifest count does not match its image ids")
    return manifest


class LmdbReader:
    """Records of one LMDB file by index (``0 <= index < len(reader)``).

    Args:
        path: the LMDB file written by :func:`virtex_data.lmdb_writer.build_lmdb`.
        readahead: let the OS read ahead around each value (see :data:`DEFAULT_READAHEAD`).

    The manifest is validated on construction; the environment itself is opened at the first
    read in each process. Instances pickle without the environment.
    """

    def __init__(self, path: str | os.PathLike[str], readahead: bool = DEFAULT_READAHEAD) -> None:
        self.path = Path(path)
        self.readahead = readahead
        self.manifest = read_manifest(self.path)
        self._resolved = str(self.path.resolve())
        self._env: lmdb.Environment | None = None  # this process's handle, once opened

    def __len__(self) -> int:
        return self.manifest.count

    @property
    def image_ids(self) -> list[int]:
        """Image id of every record, by index."""
        return self.manifest.image_ids

    def _environment(self) -> lmdb.Environment:
        # Looked up per read (a dict access): a forked DataLoader worker gets its own handle,
        # never its parent's, and a handle closed by another reader of the file is reopened.
        self._env = _shared(self.path, self.readahead, self._resolved)
        return self._env

    def raw(self, index: int) -> bytes:
        """The stored bytes of record ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"{self.path}: record {index} out of range (0..{len(self) - 1})")
        with self._environment().begin(buffers=False) as txn:
            data = txn.get(record_key(index))
        if data is None:
            raise LmdbFormatError(f"{self.path}: record {index} is missing")
        return bytes(data)

    def __getitem__(self, index: int) -> ImageRecord:
        try:
            return decode_record(self.raw(index))
        except LmdbFormatError:
            raise
        except ValueError as error:
            raise LmdbFormatError(f"{self.path}: record {index}: {error}") from error

    def close(self) -> None:
        """Close this process's environment of the file (other readers of it reopen it)."""
        _release(self.path)
        self._env = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_env"] = None
        return state
