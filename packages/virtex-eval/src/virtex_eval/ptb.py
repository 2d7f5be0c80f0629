"""PTB tokenisation of the COCO caption toolkit: lives in :mod:`virtex_data.ptb` (shared with
virtex-train's validation), re-exported here under its old name."""

from __future__ import annotations

from virtex_data.ptb import COCO_PUNCTUATIONS, coco_tokenize, ptb_tokenize

__all__ = ["COCO_PUNCTUATIONS", "coco_tokenize", "ptb_tokenize"]
