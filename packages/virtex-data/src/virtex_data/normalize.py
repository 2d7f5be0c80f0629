"""The one caption normalisation used by vocabulary building, LMDB writing and datasets.

``normalize_caption`` (Python) and :func:`tokenizer_normalizer` (the same steps inside the
``tokenizers`` pipeline, so that encoding stays in Rust) must agree; a test checks it. Change
either only together with :data:`NORMALIZATION_VERSION`, which LMDB manifests and tokenizer files
record so that data prepared under an older normalisation is detected.
"""

from __future__ import annotations

import re
import unicodedata

from tokenizers import Regex, normalizers

__all__ = ["NORMALIZATION_VERSION", "normalize_caption", "tokenizer_normalizer"]

#: Version of the normalisation below. Version 1: NFKD, drop combining marks (accents), NFKC,
#: lower-case, every run of whitespace to one space, strip both ends.
NORMALIZATION_VERSION = 1

_WHITESPACE = re.compile(r"\s+")


def normalize_caption(text: str) -> str:
    """Normalise a caption: unicode NFKC, accents stripped, lower-case, whitespace collapsed.

    Args:
        text: any caption, e.g. ``"  A Café\\tOn the   LEFT "``.

    Returns:
        The normalised caption, e.g. ``"a cafe on the left"``; ``""`` for whitespace-only input.
    """
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    composed = unicodedata.normalize("NFKC", stripped).lower()
    return _WHITESPACE.sub(" ", composed).strip()


def tokenizer_normalizer() -> normalizers.Normalizer:
    """The same normalisation as :func:`normalize_caption`, as a ``tokenizers`` normaliser."""
    return normalizers.Sequence(
        [
            normalizers.NFKD(),
            normalizers.StripAccents(),
            normalizers.NFKC(),
            normalizers.Lowercase(),
            normalizers.Replace(Regex(r"\s+"), " "),
            normalizers.Strip(),
        ]
    )
