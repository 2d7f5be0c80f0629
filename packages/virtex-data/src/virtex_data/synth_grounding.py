"""Do captions of the built-in dataset describe their images? Word checks against the scenes.

The built-in dataset (:mod:`virtex_data.synth`) stores each val image's scene attributes
(``attributes_val.json``: the largest object's colour and shape, the number of objects). A
caption is checked word by word against them:

- **colour**: the caption names the colour of the largest object (any of its words is that
  colour). Captions that name several objects can name it by listing it; that is still a
  statement about the image, and the shuffled baseline below gets the same chance.
- **shape**: the caption names the largest object's shape (singular or plural).
- **count**: among captions that state how many objects there are ("three shapes: ...",
  "two objects, ...", "a single ...", "only one shape"), the stated number is right.

A language model that ignores the image still scores above zero (it names some colour), so every
rate comes with the same rate of the *shuffled* captions: each image's caption scored against
the next image's attributes. The gap between the two is what the image contributes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from virtex_data.synth import COLOURS, SHAPES

__all__ = ["GroundingRates", "Grounding", "grounding", "stated_count"]

_WORDS = re.compile(r"[a-z]+")
_NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4}
_TOTAL = re.compile(r"\b(one|two|three|four) (?:shapes|objects)\b")
_SINGLE = re.compile(r"\ba single\b|\bonly one shape\b")


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


def stated_count(caption: str) -> int | None:
    """The total number of objects a caption states (``None`` if it states none)."""
    text = caption.lower()
    match = _TOTAL.search(text)
    if match:
        return _NUMBERS[match.group(1)]
    return 1 if _SINGLE.search(text) else None


@dataclass(frozen=True)
class GroundingRates:
    """Fractions of captions that are right about the image (see the module docstring).

    Attributes:
        colour: names the largest object's colour.
        shape: names the largest object's shape.
        count: states the right number of objects, among ``counted`` captions.
        counted: fraction of captions that state a number of objects.
    """

    colour: float
    shape: float
    count: float
    counted: float


@dataclass(frozen=True)
class Grounding:
    """Rates of the captions and of the shuffled captions, and how varied the captions are.

    Attributes:
        images: captions checked.
        distinct: distinct captions among them.
        captions: rates of each image's own caption.
        shuffled: rates of the caption of the next image (the image-blind baseline).
    """

    images: int
    distinct: int
    captions: GroundingRates
    shuffled: GroundingRates

    def summary(self) -> str:
        """Three lines for a terminal."""
        own, other = self.captions, self.shuffled
        return "\n".join(
            [
                f"grounding on {self.images} val images ({self.distinct} distinct captions):",
                f"  names the largest object's colour {own.colour:.0%} (shuffled captions "
                f"{other.colour:.0%}), its shape {own.shape:.0%} (shuffled {other.shape:.0%})",
                f"  right count {own.count:.0%} of the {own.counted:.0%} that state one "
                f"(shuffled {other.count:.0%})",
            ]
        )


def _rates(captions: Sequence[str], records: Sequence[Mapping[str, Any]]) -> GroundingRates:
    colour = shape = counted = right = 0
    for caption, record in zip(captions, records, strict=True):
        words = set(_WORDS.findall(caption.lower()))
        largest_shape = str(record["largest_shape"])
        colour += str(record["largest_colour"]) in words
        shape += bool({largest_shape, _plural(largest_shape)} & words)
        stated = stated_count(caption)
        if stated is not None:
            counted += 1
            right += stated == int(record["num_objects"])
    n = max(1, len(captions))
    return GroundingRates(
        colour=colour / n,
        shape=shape / n,
        count=right / counted if counted else 0.0,
        counted=counted / n,
    )


def grounding(captions: Mapping[int, str], records: Sequence[Mapping[str, Any]]) -> Grounding:
    """Check ``captions`` (image id -> caption) against attribute ``records``.

    Args:
        captions: one caption per image id.
        records: ``attributes_<split>.json``'s ``images`` entries (``image_id``,
            ``largest_colour``, ``largest_shape``, ``num_objects``); only the records of
            captioned images are used, in image-id order.

    Raises:
        ValueError: a captioned image has no record, or the record names an unknown colour or
            shape (the file is not the built-in dataset's).
    """
    by_id = {int(record["image_id"]): record for record in records}
    missing = sorted(set(captions) - set(by_id))
    if missing:
        raise ValueError(f"no attributes for image ids {missing[:5]} (of {len(missing)})")
    ids = sorted(captions)
    chosen = [by_id[i] for i in ids]
    for record in chosen:
        if record["largest_colour"] not in COLOURS or record["largest_shape"] not in SHAPES:
            raise ValueError(
                f"image {record['image_id']}: attributes name an unknown colour or shape "
                f"({record['largest_colour']!r}, {record['largest_shape']!r})"
            )
    texts = [captions[i] for i in ids]
    shuffled = texts[1:] + texts[:1]  # every caption scored against another image
    return Grounding(
        images=len(texts),
        distinct=len(set(texts)),
        captions=_rates(texts, chosen),
        shuffled=_rates(shuffled, chosen),
    )
