"""One-line error messages, bounded reprs and the writable-output check (no click code).

:func:`one_line` is what every ``virtex-*`` command prints for an error that escapes it (the click
side, :class:`virtex_data.cli_errors.OneLineErrors`, lives with the command lines).
``virtex_train`` and ``virtex_eval`` import this module (the lowest package both depend on);
``virtex_models`` keeps its own tiny copy of :func:`one_line` because data and models never import
each other.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from virtex_data.strict_config import brief  # the one bounded repr (re-exported)

__all__ = [
    "DEBUG_ENV",
    "EXPECTED",
    "brief",
    "check_writable",
    "debug_enabled",
    "one_line",
]

#: Environment variable that shows tracebacks (``VIRTEX_DEBUG=1``).
DEBUG_ENV = "VIRTEX_DEBUG"
#: Longest message printed; a longer one (a huge value in a config, a path list) is cut.
MAX_MESSAGE = 600


#: Exception types that report bad input or a bad environment (files, values, formats); any
#: other type escaping a command is more likely a bug and is printed with its type name.
EXPECTED = (OSError, ValueError, RuntimeError, LookupError, EOFError, MemoryError)


def debug_enabled() -> bool:
    """``VIRTEX_DEBUG`` is set to something other than ``""``/``0``."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line, naming the file for ``OSError`` s.

    ``OSError`` s print as ``<strerror>: <file>`` (``No space left on device: out.lmdb``); a
    ``UnicodeDecodeError`` as "not UTF-8 text"; exceptions of other types than the usual
    expected ones keep their type name in front (they are likely bugs).
    """
    if isinstance(error, UnicodeDecodeError):
        text = (
            f"not UTF-8 text (byte {error.start}: {error.object[error.start : error.start + 1]!r})"
        )
    elif isinstance(error, OSError) and error.strerror:
        names = [str(n) for n in (error.filename, error.filename2) if n is not None]
        text = error.strerror + (f": {' -> '.join(names)}" if names else "")
        if error.errno == errno.ENOSPC:
            text += " (the disk is full: free space or choose another output)"
    else:
        text = str(error) or type(error).__name__
        if isinstance(error, KeyError) and error.args:
            text = f"missing key {brief(error.args[0])}"
        if not isinstance(error, EXPECTED):
            text = f"{type(error).__name__}: {text}"
    text = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def check_writable(path: str | os.PathLike[str], what: str = "output folder") -> Path:
    """Create folder ``path`` if needed and check a file can be created in it, before any work.

    Args:
        path: the folder (for an output file, pass its parent).
        what: how the message names it (``--output-dir``, ``output folder`` ...).

    Raises:
        OSError: the folder cannot be created or written, naming it (``EACCES``, ``EROFS``,
            ``ENOTDIR`` ...).
    """
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        reason = error.strerror or str(error)
        raise OSError(error.errno, f"{what} is not writable ({reason})", str(folder)) from None
    return folder
