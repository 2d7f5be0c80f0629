"""Captioning metrics against hand-computed values and against pycocoevalcap.

pycocoevalcap (and Java, for its PTB tokenizer) are required: they are declared in
virtex-eval's ``test`` extra, and a missing one fails the reference checks instead of skipping
them.
"""

from __future__ import annotations

import importlib
import math
import random
import shutil
from types import ModuleType

import pytest

from virtex_eval.metrics import (
    bleu,
    caption_scores,
    cider_d,
    evaluate_captions,
    ngram_counts,
    rouge_l,
)


def require(module: str) -> ModuleType:
    """``module``, or a failed test naming the missing test extra (never a skip)."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        pytest.fail(
            f"{module} is missing ({error}): it is part of virtex-eval's test extra "
            "(pip install -e 'packages/virtex-eval[test]'); reference checks do not skip",
            pytrace=False,
        )


def require_java() -> None:
    if shutil.which("java") is None:
        pytest.fail(
            "java is missing: pycocoevalcap's PTB tokenizer runs Stanford CoreNLP on Java "
            "(e.g. apt-get install openjdk-17-jre-headless)",
            pytrace=False,
        )


def _tok(corpus: dict[int, list[str]]) -> dict[int, list[list[str]]]:
    return {key: [text.split() for text in texts] for key, texts in corpus.items()}


# ----------------------------------------------------------------------------- CIDEr-D by hand
def test_cider_d_two_images_by_hand() -> None:
    # N = 2 images; every n-gram occurs in the references of exactly one image, so every weight
    # is ln 2 - ln 1 = ln 2 and cancels in the cosines.
    candidates = {1: ["a", "b"], 2: ["c"]}
    references = _tok({1: ["a b"], 2: ["c d"]})
    corpus, per_image = cider_d(candidates, references)
    # Image 1: unigram and bigram cosines are 1, no 3/4-grams, equal lengths: 10 * (1+1)/4.
    assert per_image[1] == pytest.approx(5.0, abs=1e-12)
    # Image 2: unigram cosine 1/sqrt(2); bigram counts 0 vs 1: penalty exp(-1/72).
    expected_2 = 10 * (1 / math.sqrt(2)) * math.exp(-1 / 72) / 4
    assert per_image[2] == pytest.approx(expected_2, abs=1e-12)
    assert corpus == pytest.approx((5.0 + expected_2) / 2, abs=1e-12)


def test_cider_d_clips_repeated_words() -> None:
    candidates = {1: ["a", "a", "a"], 2: ["c"]}
    references = _tok({1: ["a b"], 2: ["c"]})
    _, per_image = cider_d(candidates, references)
    # Unigram: min(3w, w) * w / (3w * sqrt(2) w) = 1 / (3 sqrt 2); bigram "a a" unmatched;
    # 2 bigrams vs 1: penalty exp(-1/72). Unclipped it would be 3x larger.
    assert per_image[1] == pytest.approx(10 * math.exp(-1 / 72) / (3 * math.sqrt(2)) / 4)


def test_cider_d_length_penalty_counts_bigrams_of_one_word_captions_as_zero() -> None:
    # One word each: no bigram on either side, so the lengths are equal (0 and 0) and there is
    # no penalty: unigram cosine 1 -> 10 * 1 / 4 per image.
    candidates = {1: ["c"], 2: ["d"]}
    corpus, per_image = cider_d(candidates, _tok({1: ["c"], 2: ["d"]}))
    assert per_image == {1: pytest.approx(2.5, abs=1e-12), 2: pytest.approx(2.5, abs=1e-12)}


def test_cider_d_idf_zero_for_ngrams_in_every_image() -> None:
    # "a" appears in the references of both images: weight ln2 - ln2 = 0, it earns nothing.
    candidates = {1: ["a"], 2: ["a"]}
    references = _tok({1: ["a x"], 2: ["a y"]})
    corpus, _ = cider_d(candidates, references)
    assert corpus == 0.0


def test_cider_d_document_frequency_counts_an_image_once() -> None:
    # "a" occurs in both references of image 1 but in no other image: its document frequency
    # is 1 (images), not 2 (references), so its weight is ln 2 - ln 1 = ln 2, like every other
    # n-gram's, and the weights cancel in the cosines. Image 1, per reference: unigram cosine
    # ln2 / (ln2 * sqrt(2) ln2) * ln2 = 1/sqrt(2); no bigram in the candidate (zero norm);
    # 0 vs 1 bigrams: penalty exp(-1/72). Image 2 is the same with one reference.
    candidates = {1: ["a"], 2: ["d"]}
    references = _tok({1: ["a b", "a c"], 2: ["d e"]})
    corpus, per_image = cider_d(candidates, references)
    each = 10 * (1 / math.sqrt(2)) * math.exp(-1 / 72) / 4
    assert per_image[1] == pytest.approx(each, abs=1e-12)
    assert per_image[2] == pytest.approx(each, abs=1e-12)
    assert corpus == pytest.approx(each, abs=1e-12)  # a df of 2 would zero image 1


def test_cider_d_with_ngrams_repeated_within_references_matches_pycocoevalcap() -> None:
    cider_module = require("pycocoevalcap.cider.cider")
    # Every image repeats n-grams across its own references ("a dog", "on the", "the grass").
    predictions = {
        1: "a dog on the grass",
        2: "a cat on a sofa",
        3: "the dog runs",
        4: "two dogs on the grass",
    }
    references = {
        1: ["a dog on the grass", "a dog lying on the grass", "the dog on grass"],
        2: ["a cat sleeping on a sofa", "a cat on the sofa", "a grey cat"],
        3: ["the dog runs on the beach", "a dog runs", "the dog runs fast"],
        4: ["two dogs play on the grass", "dogs on the grass", "two dogs"],
    }
    ours, ours_each = cider_d({k: v.split() for k, v in predictions.items()}, _tok(references))
    theirs, theirs_each = cider_module.Cider().compute_score(
        references, {k: [v] for k, v in predictions.items()}
    )
    assert ours == pytest.approx(theirs, abs=1e-9)
    assert [ours_each[k] for k in references] == pytest.approx(list(theirs_each), abs=1e-9)


def test_cider_d_averages_over_references() -> None:
    candidates = {1: ["a", "b"], 2: ["c"]}
    one = cider_d(candidates, _tok({1: ["a b"], 2: ["c d"]}))[1][1]
    two = cider_d(candidates, _tok({1: ["a b", "e f"], 2: ["c d"]}))[1][1]
    # The second reference shares nothing: the mean over references halves the score.
    assert two == pytest.approx(one / 2)


# ----------------------------------------------------------------------------- BLEU by hand
def test_bleu_textbook_example() -> None:
    candidates = {1: ["the", "cat", "sat", "on", "the", "mat"]}
    references = _tok({1: ["the cat is on the mat", "there is a cat on the mat"]})
    scores, per_image = bleu(candidates, references)
    # Clipped matches: unigrams 5/6, bigrams 3/5, trigrams 1/4, 4-grams 0/3; closest ref 6.
    assert scores[0] == pytest.approx(5 / 6, rel=1e-8)
    assert scores[1] == pytest.approx(math.sqrt(5 / 6 * 3 / 5), rel=1e-8)
    assert scores[2] == pytest.approx((5 / 6 * 3 / 5 * 1 / 4) ** (1 / 3), rel=1e-8)
    assert scores[3] < 1e-3  # no 4-gram matches: only the toolkit's 1e-15 smoothing remains
    assert per_image[1] == scores  # one image: corpus = sentence


def test_bleu_brevity_penalty() -> None:
    scores, _ = bleu({1: ["the", "cat"]}, _tok({1: ["the cat sat"]}))
    assert scores[0] == pytest.approx(math.exp(1 - 3 / 2), rel=1e-8)
    assert scores[1] == pytest.approx(math.exp(1 - 3 / 2), rel=1e-8)


def test_bleu_closest_reference_length_prefers_shorter_on_ties() -> None:
    # Lengths 3 and 5 are both 1 away from 4: the shorter (3) is used, so no brevity penalty.
    scores, _ = bleu({1: ["a", "b", "c", "d"]}, _tok({1: ["a b c", "a b c d e"]}))
    assert scores[0] == pytest.approx(1.0, rel=1e-8)


def test_bleu_is_corpus_level_not_mean_of_sentences() -> None:
    candidates = {1: ["a", "b"], 2: ["c", "d", "e", "f"]}
    references = _tok({1: ["a b"], 2: ["c x y z"]})
    scores, per_image = bleu(candidates, references)
    # Corpus unigram precision (2 + 1) / (2 + 4), not the mean of 1 and 1/4.
    assert scores[0] == pytest.approx(3 / 6, rel=1e-8)
    assert (per_image[1][0] + per_image[2][0]) / 2 != pytest.approx(scores[0])


# ----------------------------------------------------------------------------- ROUGE-L by hand
def test_rouge_l_by_hand() -> None:
    score, _ = rouge_l({1: ["a", "b", "c", "d"]}, _tok({1: ["a c e d f"]}))
    precision, recall = 3 / 4, 3 / 5  # LCS "a c d"
    expected = (1 + 1.44) * precision * recall / (recall + 1.44 * precision)
    assert score == pytest.approx(expected, abs=1e-12)


def test_rouge_l_takes_max_precision_and_max_recall_separately() -> None:
    # Reference "a": P 1/2, R 1; reference "a b c d": P 1, R 1/2 -> P = R = 1 -> F = 1.
    score, _ = rouge_l({1: ["a", "b"]}, _tok({1: ["a", "a b c d"]}))
    assert score == pytest.approx(1.0)


def test_bleu_of_an_empty_candidate_is_zero() -> None:
    # No words: every precision is ~0 and the brevity penalty exp(1 - r / c) with c ~ 1e-15
    # underflows to 0 (a candidate length pushed below 0 would overflow instead).
    corpus, per_image = bleu({1: []}, {1: [["a", "cat"]]})
    assert corpus == [0.0, 0.0, 0.0, 0.0] and per_image[1] == [0.0, 0.0, 0.0, 0.0]


def test_bleu_without_penalty_when_the_closest_reference_is_empty() -> None:
    # "a" against an empty reference and "a b c": the closest reference length is 0 (distance
    # 1 against 2), the candidate is longer, so no brevity penalty: BLEU-1 = clipped 1 / 1.
    corpus, per_image = bleu({1: ["a"]}, {1: [[], ["a", "b", "c"]]})
    assert corpus[0] == pytest.approx(1.0) and per_image[1][0] == pytest.approx(1.0)


def test_rouge_l_an_empty_reference_recalls_nothing() -> None:
    # "a" against "" and "a b c": precision 1 (from "a b c"), recall max(0, 1/3) = 1/3, so
    # F = (1 + 1.2^2) * 1 * (1/3) / (1/3 + 1.2^2 * 1) = 0.4586 (pycocoevalcap: the same).
    score, per_image = rouge_l({1: ["a"]}, {1: [[], ["a", "b", "c"]]})
    expected = (1 + 1.2**2) * (1 / 3) / (1 / 3 + 1.2**2)
    assert score == pytest.approx(expected) and per_image[1] == pytest.approx(0.45864661654)


def test_empty_candidate_scores_zero() -> None:
    scores = caption_scores({1: "", 2: "a dog"}, {1: ["a cat"], 2: ["a dog"]})
    per_image = evaluate_captions({1: "", 2: "a dog"}, {1: ["a cat"], 2: ["a dog"]}).per_image
    assert per_image[1]["ROUGE-L"] == 0.0 and per_image[1]["CIDEr"] == 0.0
    assert set(scores) == {"CIDEr", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L"}


# ----------------------------------------------------------------------------- API
def test_caption_scores_tokenizes_raw_text_like_the_toolkit() -> None:
    raw = caption_scores(
        {1: "A Dog's toy.", 2: "Two cats!"}, {1: ["a dog 's toy", "x"], 2: ["two cats"]}
    )
    pre = caption_scores(
        {1: "a dog 's toy", 2: "two cats"},
        {1: ["a dog 's toy", "x"], 2: ["two cats"]},
        tokenized=True,
    )
    assert raw == pytest.approx(pre)
    assert raw["BLEU-1"] == pytest.approx(1.0)


def test_per_image_cider_option() -> None:
    per_image: dict[int, float] = {}
    scores = caption_scores(
        {1: "a b", 2: "c"}, {1: ["a b"], 2: ["c d"]}, tokenized=True, per_image_cider=per_image
    )
    assert per_image[1] == pytest.approx(5.0)
    assert scores["CIDEr"] == pytest.approx(sum(per_image.values()) / 2)


def test_mismatched_ids_are_named() -> None:
    with pytest.raises(ValueError, match="have no references.*7"):
        caption_scores({7: "a"}, {1: ["a"]})
    with pytest.raises(ValueError, match="no prediction.*1"):
        caption_scores({7: "a"}, {7: ["a"], 1: ["b"]})
    with pytest.raises(ValueError, match="image id 7: references"):
        caption_scores({7: "a"}, {7: []})
    with pytest.raises(ValueError, match="no predictions"):
        caption_scores({}, {})


def test_ngram_counts() -> None:
    assert ngram_counts(["a", "b", "a", "b"], 2) == {("a", "b"): 2, ("b", "a"): 1}
    assert ngram_counts(["a"], 2) == {}


# ----------------------------------------------------------------------------- pycocoevalcap
def _random_corpus(seed: int, images: int) -> tuple[dict[int, str], dict[int, list[str]]]:
    rng = random.Random(seed)
    words = [
        "a",
        "the",
        "dog",
        "cat",
        "man",
        "on",
        "in",
        "of",
        "with",
        "sitting",
        "red",
        "blue",
        "table",
        "street",
        "two",
        "people",
        "is",
    ]

    def sentence() -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(1, 14)))

    predictions = {i: sentence() for i in range(images)}
    references = {i: [sentence() for _ in range(rng.randint(1, 5))] for i in range(images)}
    predictions[3] = ""  # an empty caption too
    return predictions, references


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_pycocoevalcap_on_pretokenized_input(seed: int) -> None:
    require("pycocoevalcap")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    predictions, references = _random_corpus(seed, 200)
    ours = evaluate_captions(predictions, references, tokenized=True)
    results = {key: [value] for key, value in predictions.items()}
    cider, cider_each = Cider().compute_score(references, results)
    bleus, bleu_each = Bleu(4).compute_score(references, results, verbose=0)
    rouge, rouge_each = Rouge().compute_score(references, results)
    assert ours.corpus["CIDEr"] == pytest.approx(cider, abs=1e-6)
    for k in range(4):
        assert ours.corpus[f"BLEU-{k + 1}"] == pytest.approx(bleus[k], abs=1e-6)
    assert ours.corpus["ROUGE-L"] == pytest.approx(rouge, abs=1e-6)
    for index, key in enumerate(references):
        assert ours.per_image[key]["CIDEr"] == pytest.approx(cider_each[index], abs=1e-6)
        assert ours.per_image[key]["BLEU-4"] == pytest.approx(bleu_each[3][index], abs=1e-6)
        assert ours.per_image[key]["ROUGE-L"] == pytest.approx(rouge_each[index], abs=1e-6)


def test_matches_pycocoevalcap_with_its_java_tokenizer() -> None:
    require("pycocoevalcap")
    require_java()
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    predictions = {
        1: "A dog's toy, on the table.",
        2: "Two black-and-white cats (sleeping) on a sofa!",
        3: "A man doesn't ride a horse.",
    }
    references = {
        1: ["The dog's toy is on a table.", "A toy on a wooden table.", "dog toy"],
        2: ["Two cats sleeping on a couch.", "Black-and-white cats on a sofa."],
        3: ["A man riding a brown horse.", "A man won't ride the horse; he walks."],
    }
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({k: [{"caption": c} for c in v] for k, v in references.items()})
    res = tokenizer.tokenize({k: [{"caption": v}] for k, v in predictions.items()})
    cider, _ = Cider().compute_score(gts, res)
    bleus, _ = Bleu(4).compute_score(gts, res, verbose=0)
    ours = caption_scores(predictions, references)
    assert ours["CIDEr"] == pytest.approx(cider, abs=1e-6)
    assert ours["BLEU-4"] == pytest.approx(bleus[3], abs=1e-6)
