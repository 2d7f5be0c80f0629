"""Grounding checks of captions against the built-in dataset's attributes: hand-worked cases,
and the dataset's own reference captions, which must be right whenever they make a claim."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from virtex_data.synth import generate
from virtex_data.synth_grounding import grounding, stated_count


def _record(image_id: int, colour: str, shape: str, count: int) -> dict[str, object]:
    return {
        "image_id": image_id,
        "largest_colour": colour,
        "largest_shape": shape,
        "num_objects": count,
    }


def test_stated_count_reads_the_total_not_a_group() -> None:
    assert stated_count("three shapes: two blue squares and a red circle") == 3
    assert stated_count("four objects, two red and two blue") == 4
    assert stated_count("a single red circle in the center") == 1
    assert stated_count("only one shape: a large red star") == 1
    # "two blue squares" counts a group, not the scene
    assert stated_count("two blue squares and a red circle on a striped background") is None
    assert stated_count("a red circle above a blue star") is None


def test_rates_worked_by_hand() -> None:
    records = [
        _record(3, "red", "circle", 2),
        _record(1, "blue", "star", 1),
        _record(2, "green", "diamond", 3),
    ]
    captions = {
        1: "a single blue star in the center",  # colour, shape, count 1: all right
        2: "three shapes: two green diamonds and a red star",  # colour, plural shape, count
        3: "two shapes: a blue circle and a yellow square",  # shape only; count right
    }
    result = grounding(captions, records)
    assert result.images == 3 and result.distinct == 3
    own = result.captions
    assert own.colour == pytest.approx(2 / 3)
    assert own.shape == pytest.approx(1.0)
    assert own.counted == pytest.approx(1.0)
    assert own.count == pytest.approx(1.0)
    # Shuffled (ids in order 1, 2, 3): image 1 gets caption 2, 2 gets 3, 3 gets 1.
    # image 1 (blue star, 1): "three shapes: two green diamonds and a red star" -> shape, no
    #   colour, count 3 wrong; image 2 (green diamond, 3): "two shapes: a blue circle and a
    #   yellow square" -> nothing, count wrong; image 3 (red circle, 2): "a single blue star"
    #   -> nothing, count wrong.
    other = result.shuffled
    assert other.colour == 0.0
    assert other.shape == pytest.approx(1 / 3)
    assert other.count == 0.0 and other.counted == pytest.approx(1.0)
    assert "colour 67% (shuffled captions 0%)" in result.summary()


def test_word_matching_is_whole_words() -> None:
    records = [_record(1, "red", "star", 2), _record(2, "red", "star", 2)]
    # "starred" and "reddish" are not the words "star" and "red"
    result = grounding({1: "a starred reddish thing", 2: "a red star"}, records)
    assert result.captions.colour == 0.5 and result.captions.shape == 0.5
    assert result.captions.counted == 0.0 and result.captions.count == 0.0


def test_missing_or_foreign_records_are_errors() -> None:
    with pytest.raises(ValueError, match=r"no attributes for image ids \[7\]"):
        grounding({7: "a red star"}, [_record(1, "red", "star", 1)])
    with pytest.raises(ValueError, match="image 1: attributes name an unknown colour"):
        grounding({1: "a red star"}, [_record(1, "teal", "star", 1)])


def test_reference_captions_are_right_whenever_they_claim(tmp_path: Path) -> None:
    """The dataset's own "the largest shape is ..." and count captions must all score as right
    (an independent check of the word rules against the generator's scenes)."""
    generate(tmp_path, train=1, val=60, size=64, seed=3, workers=1, progress=False)
    notes = tmp_path / "annotations"
    records = json.loads((notes / "attributes_val.json").read_text())["images"]
    captions = json.loads((notes / "captions_val.json").read_text())["annotations"]
    largest = {
        c["image_id"]: c["caption"] for c in captions if c["caption"].startswith("the largest")
    }
    assert len(largest) >= 20
    result = grounding(largest, records)
    assert result.captions.colour == 1.0 and result.captions.shape == 1.0
    assert result.shuffled.colour < 0.5
    counted = {c["image_id"]: c["caption"] for c in captions if stated_count(c["caption"])}
    assert len(counted) >= 30
    assert grounding(counted, records).captions.count == 1.0
