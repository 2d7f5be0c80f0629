"""Random access to an LMDB file of image records, safe in DataLoader workers.

The environment is opened lazily, in the process that reads (each DataLoader worker opens its
own after the fork), read-only and without the lock file (``lock=False``, valid because a
finished file is never written again: the writer renames it into place only when complete).

Before anything maps a file, :func:`check_lmdb_file` reads its two LMDB meta pages with plain
reads and compares the file's size with the last page the newer one names: a truncated file
(a copy cut short, a full disk) is reported by name instead of killing the process with SIGBUS
when a read touches a page past the end of the file.
"""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path
from typing import Any

import lmdb
import msgpack

from virtex_data.lmdb_format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_KEY,
    ImageRecord,
    LmdbFormatError,
    Manifest,
    decode_record,
    record_key,
)
from virtex_data.lmdb_writer import PARTIAL_SUFFIX
from virtex_data.normalize import NORMALIZATION_VERSION

__all__ = [
    "DEFAULT_READAHEAD",
    "LmdbFormatError",
    "LmdbReader",
    "check_lmdb_file",
    "read_manifest",
]

#: Default for ``readahead``. Measured here (benchmarks/data_loading.py, ~160 KB records, random
#: order, cold page cache): 2,885 records/s with readahead against 662/s without (files: 3,677/s);
#: warm, both beat files. Records span many pages, so the kernel's readahead fetches one record
#: in one request instead of one 4 KB page fault at a time. See the package README.
DEFAULT_READAHEAD = True


#: LMDB's meta page (lmdb.h / mdb.c, format version 1, 64-bit): a 16-byte page header, then
#: magic, version, fixed address, map size, two 48-byte database records (the first one's
#: ``md_pad`` holds the page size), the last used page number and the transaction id.
_PAGE_HEADER = 16
_META = struct.Struct("=IIQQ")
_DB = struct.Struct("=IHHQQQQQ")
_TAIL = struct.Struct("=QQ")
_MAGIC = 0xBEEFC0DE
_META_SIZE = _PAGE_HEADER + _META.size + 2 * _DB.size + _TAIL.size


def _meta(raw: bytes, offset: int) -> tuple[int, int, int] | None:
    """``(page size, last page, txn id)`` of the meta page at ``offset``; None if not one."""
    if len(raw) < offset + _META_SIZE:
        return None
    magic, version, _, _ = _META.unpack_from(raw, offset + _PAGE_HEADER)
    if magic != _MAGIC or version != 1:
        return None
    page_size = _DB.unpack_from(raw, offset + _PAGE_HEADER + _META.size)[0]
    last_page, txn_id = _TAIL.unpack_from(raw, offset + _PAGE_HEADER + _META.size + 2 * _DB.size)
    return page_size, last_page, txn_id


def check_lmdb_file(path: str | os.PathLike[str]) -> None:
    """Check that a file is a regular, complete LMDB file, without mapping it.

    Raises:
        LmdbFormatError: not a regular file, no LMDB meta page (not an LMDB file), or shorter
            than the pages its newest meta page says it uses (truncated), naming the file and
            both sizes.
    """
    source = Path(path)
    fd = os.open(source, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise LmdbFormatError(f"{source}: not a regular file")
        first = os.pread(fd, _META_SIZE, 0) if hasattr(os, "pread") else os.read(fd, _META_SIZE)
        meta0 = _meta(first, 0)
        if meta0 is None:
            raise LmdbFormatError(f"{source}: not an LMDB file (no LMDB meta page at its start)")
        page_size = meta0[0]
        if page_size < 512 or page_size > 1 << 16 or page_size & (page_size - 1):
            raise LmdbFormatError(f"{source}: corrupt LMDB header (page size {page_size})")
        os.lseek(fd, page_size, os.SEEK_SET)
        meta1 = _meta(os.read(fd, _META_SIZE), 0)
    finally:
        os.close(fd)
    newest = max((m for m in (meta0, meta1) if m is not None), key=lambda m: m[2])
    needed = (newest[1] + 1) * page_size
    if info.st_size < needed:
        raise LmdbFormatError(
            f"{source}: truncated: {info.st_size:,} bytes, but its LMDB header says it uses "
            f"{newest[1] + 1:,} pages of {page_size} bytes ({needed:,} bytes); copy or build it "
            "again"
        )


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
    check_lmdb_file(path)
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
    try:
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
    except lmdb.Error as error:  # a corrupt page (MDB_CORRUPTED, MDB_PAGE_NOTFOUND, ...)
        raise LmdbFormatError(f"{source}: corrupt LMDB file: {error}") from None
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
        try:
            with self._environment().begin(buffers=False) as txn:
                data = txn.get(record_key(index))
        except lmdb.Error as error:  # a corrupt page (MDB_CORRUPTED, MDB_PAGE_NOTFOUND, ...)
            message = f"{self.path}: record {index}: corrupt LMDB file: {error}"
            raise LmdbFormatError(message) from None
        if data is None:
            raise LmdbFormatError(f"{self.path}: record {index} is missing")
        return bytes(data)

    def __getitem__(self, index: int) -> ImageRecord:
        data = self.raw(index)
        try:
            return decode_record(data)
        except LmdbFormatError as error:
            raise LmdbFormatError(f"{self.path}: record {index}: {error}") from None

    def close(self) -> None:
        """Close this process's environment of the file (other readers of it reopen it)."""
        _release(self.path)
        self._env = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_env"] = None
        return state
