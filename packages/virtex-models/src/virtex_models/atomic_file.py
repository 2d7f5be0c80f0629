"""Atomic file writes: a crash or a full disk leaves the old file or the new one, never half.

:func:`atomic_write` writes to a fresh temporary name in the target's folder, flushes and
``fsync``-s it, renames it over the target (``os.replace``: atomic on POSIX) and ``fsync``-s the
folder so the rename itself survives a power cut. On any failure the temporary file is removed
and the target is untouched. :func:`atomic_link` makes a second name for an existing file the
same way (a hard link, or a copy where links fail).

Where this lives: virtex-data and virtex-models never import each other, and a bottom package
for one 100-line module would be a fifth distribution to version and install. So this file exists
twice, byte for byte: ``virtex_models/atomic_file.py`` (which virtex-train and virtex-eval
import) and ``virtex_data/atomic_file.py`` (for virtex-data alone). ``tests/test_repository.py``
fails when the two copies differ: edit one, copy it over the other.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_link", "atomic_write", "atomic_write_bytes", "atomic_write_text", "fsync_dir"]

#: ``wrap_error(error, bytes_written)`` turns a failed write into the caller's exception.
ErrorWrapper = Callable[[Exception, int], Exception]


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """``fsync`` a folder so renames inside it are durable (a no-op where folders refuse it)."""
    with contextlib.suppress(OSError):  # some file systems refuse to open folders
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _temporary_name(path: Path) -> Path:
    # Hidden, in the same folder (same file system: the rename is atomic), unique per process and
    # call. Opened with "xb" rather than mkstemp, so the file gets the umask's permissions (mkstemp
    # would leave the final file readable by its owner only).
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def atomic_write(
    path: str | os.PathLike[str],
    write: Callable[[BinaryIO], object],
    *,
    wrap_error: ErrorWrapper | None = None,
) -> Path:
    """Call ``write(handle)`` on a temporary file, then move it over ``path`` atomically.

    The parent folder is created if missing. ``write`` may raise (e.g. a checksum that does not
    match): the temporary file is removed and ``path`` is left as it was.

    Args:
        path: the final file.
        write: writes the content to a binary handle.
        wrap_error: turns an ``Exception`` (and the bytes written before it) into the exception
            raised instead; ``None`` re-raises it unchanged. ``KeyboardInterrupt`` and other
            ``BaseException``\\ s are always re-raised unchanged.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_name(path)
    try:
        with open(temporary, "xb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        written = temporary.stat().st_size if temporary.exists() else 0
        with contextlib.suppress(OSError):
            temporary.unlink()
        if wrap_error is not None and isinstance(error, Exception):
            raise wrap_error(error, written) from error
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def atomic_link(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Make ``target`` the same file as ``source`` (hard link; an atomic copy where links fail).

    ``target`` is replaced atomically. If it already is ``source`` (same inode), nothing is done.
    """
    source, target = Path(source), Path(target)
    with contextlib.suppress(OSError):
        if os.path.samefile(source, target):  # e.g. a finished run resumed: already linked
            return target
    temporary = _temporary_name(target)
    try:
        try:
            os.link(source, temporary)
        except OSError:
            atomic_write(temporary, lambda handle: handle.write(source.read_bytes()))
        os.replace(temporary, target)
    finally:
        # POSIX: renaming a hard link onto another link of the same file does nothing and leaves
        # the source name; never leave it behind.
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
    fsync_dir(target.parent)
    return target
