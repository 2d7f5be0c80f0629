"""``one_line``: an exception as one bounded line, and ``brief``: a bounded ``repr``.

A copy of the few lines of ``virtex_data.errors`` this package needs (``virtex_models`` and
``virtex_data`` never import each other): ``python -m virtex_models.export`` prints
``Error: <what>, <file>`` and :class:`~virtex_models.config.ModelConfig` errors show values
through :func:`brief`, so a YAML alias bomb's value is never expanded into a message.
"""

from __future__ import annotations

from virtex_models.strict_config import brief  # the one bounded repr (re-exported)

__all__ = ["brief", "one_line"]

MAX_MESSAGE = 600


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
