"""Captioning metrics of the COCO caption evaluation (CIDEr-D, BLEU-1..4, ROUGE-L).

They live in :mod:`virtex_data.caption_metrics` (so that virtex-train's validation can score
captions without importing virtex-eval) and are re-exported here under their old name.
"""

from __future__ import annotations

from virtex_data.caption_metrics import (
    CIDER_SIGMA,
    ROUGE_BETA,
    CaptionScores,
    bleu,
    caption_scores,
    cider_d,
    evaluate_captions,
    ngram_counts,
    rouge_l,
    tokenize_corpus,
)

__all__ = [
    "CIDER_SIGMA",
    "ROUGE_BETA",
    "CaptionScores",
    "bleu",
    "caption_scores",
    "cider_d",
    "evaluate_captions",
    "ngram_counts",
    "rouge_l",
    "tokenize_corpus",
]
