"""``one_line``: an exception as one bounded line, and ``brief``: a bounded ``repr``.

A copy of the few lines of ``virtex_data.errors`` this package needs (``virtex_models`` and
``virtex_data`` never import each other): ``python -m virtex_models.export`` prints
``Error: <what>, <file>`` and :class:`~virtex_models.config.ModelConfig` errors show values
through :func:`brief`, so a YAML alias bomb's value is never expanded into a message.
"""

from __future__ import annotations

import reprlib
from typing import Any

__all__ = ["brief", "one_line"]

MAX_MESSAGE = 600

_BRIEF = reprlib.Repr()
_BRIEF.maxlevel = 3
_BRIEF.maxlist = _BRIEF.maxtuple = _BRIEF.maxdict = _BRIEF.maxset = 4
_BRIEF.maxstring = _BRIEF.maxother = _BRIEF.maxlong = 60


def brief(value: Any) -> str:
    """A ``repr`` of ``value`` of at most ~80 characters whose cost does not grow with it."""
    text = _BRIEF.repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def one_line(error: BaseException) -> str:
    """``error``'s message on one line (``OSError``: ``<strerror>: <file>``), at most 600 chars."""
    if isinstance(error, OSError) and error.strerror:
        names = [str(n) for n in (error.filename, error.filename2) if n is not None]
        text = error.strerror + (f": {' -> '.join(names)}" if names else "")
    else:
        text = str(error) or type(error).__name__
        if not isinstance(error, OSError | ValueError | RuntimeError | LookupError | EOFError):
            text = f"{type(error).__name__}: {text}"
    text = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."
