"""``load_weights_only``: ``torch.load(weights_only=True)`` whose errors say what the file is.

torch's own error for a file that is not a checkpoint (a ``tokenizer.json`` passed by mistake)
ends in advice to rerun with ``weights_only=False``, which would execute whatever a hostile
pickle holds. These messages name the file, say what it looks like instead, and what is expected.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

__all__ = ["describe_file", "load_weights_only"]

EXPECTED = "expected a PyTorch checkpoint saved by torch.save (e.g. OUT/checkpoints/final.pt)"

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x1f\x8b", "a gzip file"),
    (b"%PDF", "a PDF file"),
)
_UNSUPPORTED = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def describe_file(path: str | os.PathLike[str]) -> str:
    """What ``path`` looks like from its first bytes (``JSON text``, ``a PNG image`` ...)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(64)
    except OSError as error:
        return f"unreadable ({error.strerror})"
    if not head:
        return "an empty file"
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (torch's format)"
    if head[:1] == b"\x80":
        return "a pickle file"
    stripped = head.lstrip()
    if stripped[:1] in (b"{", b"["):
        return "JSON text"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "binary data of an unknown format"
    return "text (YAML or other)"


def load_weights_only(path: str | os.PathLike[str], map_location: Any = "cpu") -> Any:
    """``torch.load(path, map_location, weights_only=True)`` with one-line errors.

    Raises:
        ValueError: the file is missing, is not a torch file (naming what it looks like and
            what is expected), or holds objects other than tensors and plain values (naming the
            first such class; such files are refused: unpickling them could run code).
    """
    name = str(path)
    if not Path(name).is_file():
        raise ValueError(f"{name}: no such checkpoint file ({EXPECTED})")
    try:
        return torch.load(name, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many kinds (pickle, zip, runtime)
        kind = describe_file(name)
        if not kind.startswith(("a zip", "a pickle")):
            raise ValueError(
                f"{name}: not a PyTorch checkpoint (it is {kind}); {EXPECTED}"
            ) from None
        found = _UNSUPPORTED.search(str(error))
        if found:
            raise ValueError(
                f"{name}: holds Python objects other than tensors and plain values (e.g. "
                f"{found.group(1)}); refused, because loading them could run code ({EXPECTED})"
            ) from None
        if "weights only load failed" in str(error).lower():
            raise ValueError(
                f"{name}: holds data the weights-only loader refuses (not only tensors and plain "
                f"values; loading it could run code); {EXPECTED}"
            ) from None
        # torch's first sentence says what broke; the rest is advice.
        first = " ".join(str(error).split()).split(". ")[0][:200]
        raise ValueError(
            f"{name}: a damaged or truncated torch file ({type(error).__name__}: {first}); "
            f"{EXPECTED}"
        ) from None
