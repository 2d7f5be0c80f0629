"""Captioning metrics of the COCO caption evaluation, in Python: CIDEr-D, BLEU-1..4, ROUGE-L.

Definitions follow the COCO caption evaluation toolkit (``pycocoevalcap``), whose scores papers
report; numbers are on its raw scale (CIDEr 1.0 = "100" in papers).

- Text: every caption goes through :func:`virtex_data.ptb.coco_tokenize` (the toolkit's PTB
  tokenisation, lower case, punctuation dropped) unless ``tokenized=True``; tokens are then the
  caption split on spaces.
- CIDEr-D (what the toolkit reports as "CIDEr"; Vedantam et al. 2015): for n = 1..4 each
  caption is a vector of n-gram counts weighted by ``log(N) - log(max(1, df))``, where ``N`` is the
  number of images scored and ``df`` the number of those images whose references contain the
  n-gram. For each reference, ``sum_g min(c_g, r_g) r_g / (|c| |r|)`` (clipped cosine) times the
  Gaussian length penalty ``exp(-(l_c - l_r)^2 / (2 * 6^2))``, where a caption's length ``l`` is
  its number of bigrams (as in the toolkit); averaged over references and over n, times 10; the
  corpus score is the mean over images.
- BLEU-n: corpus BLEU (Papineni et al.) with clipped n-gram counts summed over all images, the
  brevity penalty from the summed candidate lengths and, per image, the reference length
  closest to the candidate's (ties: the shorter); the toolkit's smoothing constants (1e-15 and
  1e-9) are kept so that degenerate cases agree too.
- ROUGE-L: per image, the longest common subsequence with each reference; ``P`` and ``R`` are
  the maxima over references of ``lcs / len(candidate)`` and ``lcs / len(reference)``;
  ``F = (1 + b^2) P R / (R + b^2 P)`` with ``b = 1.2``; mean over images.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from virtex_data.ptb import coco_tokenize

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

K = TypeVar("K", bound=Hashable)

#: Standard deviation of CIDEr-D's Gaussian length penalty.
CIDER_SIGMA = 6.0
#: ROUGE-L's recall weight.
ROUGE_BETA = 1.2
_TINY = 1e-15  # BLEU smoothing of the toolkit: numerator ...
_SMALL = 1e-9  # ... and denominator


def ngram_counts(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    """Counts of the n-grams (exactly ``n`` tokens) of a token sequence."""
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _check(predictions: Mapping[K, str], references: Mapping[K, Sequence[str]]) -> list[K]:
    if not predictions:
        raise ValueError("no predictions to score")
    missing = [key for key in predictions if key not in references]
    if missing:
        raise ValueError(
            f"{len(missing)} predicted image(s) have no references, e.g. image ids "
            + ", ".join(repr(k) for k in missing[:5])
        )
    unpredicted = [key for key in references if key not in predictions]
    if unpredicted:
        raise ValueError(
            f"{len(unpredicted)} image(s) with references have no prediction, e.g. image ids "
            + ", ".join(repr(k) for k in unpredicted[:5])
        )
    for key in predictions:
        refs = references[key]
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError(f"image id {key!r}: references must be a non-empty list of strings")
        if not isinstance(predictions[key], str):
            raise ValueError(f"image id {key!r}: the prediction must be a string")
    return list(predictions)


def tokenize_corpus(
    predictions: Mapping[K, str],
    references: Mapping[K, Sequence[str]],
    *,
    tokenized: bool = False,
) -> tuple[list[K], dict[K, list[str]], dict[K, list[list[str]]]]:
    """Validated ids and token lists: ``(ids, candidate tokens, reference tokens)``.

    Raises:
        ValueError: empty input, ids in one mapping only, an image without references.
    """
    ids = _check(predictions, references)

    def split(text: str) -> list[str]:
        return (text if tokenized else coco_tokenize(text)).split()

    candidates = {key: split(predictions[key]) for key in ids}
    refs = {key: [split(ref) for ref in references[key]] for key in ids}
    return ids, candidates, refs


def cider_d(
    candidates: Mapping[K, Sequence[str]],
    references: Mapping[K, Sequence[Sequence[str]]],
    *,
    n: int = 4,
    sigma: float = CIDER_SIGMA,
) -> tuple[float, dict[K, float]]:
    """CIDEr-D of tokenised captions: ``(corpus score, {image id: score})``."""
    ids = list(candidates)
    # Document frequency over the images being scored: an image counts once per n-gram.
    document_frequency: Counter[tuple[str, ...]] = Counter()
    ref_counts: dict[K, list[list[Counter[tuple[str, ...]]]]] = {}
    for key in ids:
        per_ref = [[ngram_counts(ref, k) for k in range(1, n + 1)] for ref in references[key]]
        ref_counts[key] = per_ref
        seen = {gram for counts in per_ref for order in counts for gram in order}
        document_frequency.update(seen)
    log_images = math.log(len(ids))

    def weigh(
        counts: list[Counter[tuple[str, ...]]],
    ) -> tuple[list[dict[tuple[str, ...], float]], list[float]]:
        vectors = []
        norms = []
        for order in counts:
            vector = {
                gram: count * (log_images - math.log(max(1.0, document_frequency[gram])))
                for gram, count in order.items()
            }
            vectors.append(vector)
            norms.append(math.sqrt(sum(value * value for value in vector.values())))
        return vectors, norms

    per_image: dict[K, float] = {}
    for key in ids:
        tokens = candidates[key]
        cand_vectors, cand_norms = weigh([ngram_counts(tokens, k) for k in range(1, n + 1)])
        cand_length = max(0, len(tokens) - 1)  # number of bigrams
        total = [0.0] * n
        for ref_tokens, counts in zip(references[key], ref_counts[key], strict=True):
            ref_vectors, ref_norms = weigh(counts)
            delta = cand_length - max(0, len(ref_tokens) - 1)
            penalty = math.exp(-(delta**2) / (2 * sigma**2))
            for k in range(n):
                ref_vector = ref_vectors[k]
                dot = sum(
                    min(value, ref_vector.get(gram, 0.0)) * ref_vector.get(gram, 0.0)
                    for gram, value in cand_vectors[k].items()
                )
                if cand_norms[k] != 0 and ref_norms[k] != 0:
                    dot /= cand_norms[k] * ref_norms[k]
                total[k] += dot * penalty
        per_image[key] = 10.0 * (sum(total) / n) / len(references[key])
    return sum(per_image.values()) / len(per_image), per_image


def bleu(
    candidates: Mapping[K, Sequence[str]],
    references: Mapping[K, Sequence[Sequence[str]]],
    *,
    n: int = 4,
) -> tuple[list[float], dict[K, list[float]]]:
    """Corpus BLEU-1..n and per-image BLEU-1..n of tokenised captions."""
    total_correct = [0] * n
    total_guess = [0] * n
    total_test = 0
    total_ref = 0
    per_image: dict[K, list[float]] = {}
    for key, tokens in candidates.items():
        refs = references[key]
        test_length = len(tokens)
        ref_length = min((abs(len(ref) - test_length), len(ref)) for ref in refs)[1]
        correct = []
        for k in range(1, n + 1):
            max_ref: Counter[tuple[str, ...]] = Counter()
            for ref in refs:
                max_ref |= ngram_counts(ref, k)  # elementwise maximum
            counts = ngram_counts(tokens, k)
            correct.append(sum(min(count, max_ref[gram]) for gram, count in counts.items()))
        guess = [max(0, test_length - k + 1) for k in range(1, n + 1)]
        per_image[key] = _bleu_from_counts(correct, guess, test_length, ref_length)
        for k in range(n):
            total_correct[k] += correct[k]
            total_guess[k] += guess[k]
        total_test += test_length
        total_ref += ref_length
    return _bleu_from_counts(total_correct, total_guess, total_test, total_ref), per_image


def _bleu_from_counts(
    correct: Sequence[int], guess: Sequence[int], test_length: float, ref_length: float
) -> list[float]:
    scores = []
    product = 1.0
    for k, (hit, tried) in enumerate(zip(correct, guess, strict=True)):
        product *= (hit + _TINY) / (tried + _SMALL)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (test_length + _TINY) / (ref_length + _SMALL)
    if ratio < 1:
        scores = [score * math.exp(1 - 1 / ratio) for score in scores]
    return scores


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b):
            current.append(previous[j] + 1 if token == other else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(
    candidates: Mapping[K, Sequence[str]],
    references: Mapping[K, Sequence[Sequence[str]]],
    *,
    beta: float = ROUGE_BETA,
) -> tuple[float, dict[K, float]]:
    """ROUGE-L of tokenised captions: ``(mean score, {image id: score})``."""
    per_image: dict[K, float] = {}
    for key, tokens in candidates.items():
        if not tokens:
            per_image[key] = 0.0
            continue
        precision = recall = 0.0
        for ref in references[key]:
            lcs = _lcs_length(ref, tokens)
            precision = max(precision, lcs / len(tokens))
            recall = max(recall, lcs / len(ref) if ref else 0.0)
        if precision > 0 and recall > 0:
            per_image[key] = (1 + beta**2) * precision * recall / (recall + beta**2 * precision)
        else:
            per_image[key] = 0.0
    return sum(per_image.values()) / len(per_image), per_image


@dataclass(frozen=True)
class CaptionScores:
    """Corpus scores and per-image scores of :func:`evaluate_captions`.

    Attributes:
        corpus: ``{"CIDEr", "BLEU-1".."BLEU-4", "ROUGE-L"}`` on the toolkit's raw scale.
        per_image: ``{image id: {"CIDEr", "BLEU-1".."BLEU-4", "ROUGE-L"}}``.
    """

    corpus: dict[str, float]
    per_image: dict[Hashable, dict[str, float]]


def evaluate_captions(
    predictions: Mapping[K, str],
    references: Mapping[K, Sequence[str]],
    *,
    tokenized: bool = False,
) -> CaptionScores:
    """All metrics, corpus-level and per image.

    Args:
        predictions: ``{image id: caption}`` (raw text).
        references: ``{image id: [reference captions]}`` (raw text), the same ids.
        tokenized: the captions are already tokenised (tokens separated by spaces): skip the
            PTB tokenisation.

    Raises:
        ValueError: empty input, ids present in only one mapping (named), an image without
            references.
    """
    ids, candidates, refs = tokenize_corpus(predictions, references, tokenized=tokenized)
    cider, cider_per_image = cider_d(candidates, refs)
    bleus, bleu_per_image = bleu(candidates, refs)
    rouge, rouge_per_image = rouge_l(candidates, refs)
    corpus = {"CIDEr": cider}
    corpus.update({f"BLEU-{k + 1}": value for k, value in enumerate(bleus)})
    corpus["ROUGE-L"] = rouge
    per_image: dict[Hashable, dict[str, float]] = {}
    for key in ids:
        scores = {"CIDEr": cider_per_image[key]}
        scores.update({f"BLEU-{k + 1}": v for k, v in enumerate(bleu_per_image[key])})
        scores["ROUGE-L"] = rouge_per_image[key]
        per_image[key] = scores
    return CaptionScores(corpus=corpus, per_image=per_image)


def caption_scores(
    predictions: Mapping[K, str],
    references: Mapping[K, Sequence[str]],
    *,
    tokenized: bool = False,
    per_image_cider: dict[K, float] | None = None,
) -> dict[str, float]:
    """Corpus CIDEr(-D), BLEU-1..4 and ROUGE-L of captions, on pycocoevalcap's raw scale.

    Args:
        predictions: ``{image id: caption}`` (raw, untokenised text).
        references: ``{image id: [reference captions]}`` (raw text), the same ids.
        tokenized: the captions are already tokenised (tokens separated by spaces).
        per_image_cider: if given, filled with ``{image id: CIDEr-D}``.

    Returns:
        ``{"CIDEr", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L"}``.

    Example:
        >>> scores = caption_scores({1: "a dog runs"}, {1: ["A dog runs.", "a running dog"]})
        >>> round(scores["BLEU-1"], 3)
        1.0
    """
    result = evaluate_captions(predictions, references, tokenized=tokenized)
    if per_image_cider is not None:
        per_image_cider.update(
            {key: scores["CIDEr"] for key, scores in result.per_image.items()}  # type: ignore[misc]
        )
    return result.corpus
