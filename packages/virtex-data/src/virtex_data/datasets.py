"""Datasets over an LMDB file, one per pretraining target, each with its ``collate``.

Every dataset returns a :class:`Sample` per index and turns a list of samples into the typed
batch of its target with ``dataset.collate(samples)`` (pass it as the DataLoader's
``collate_fn``):

============================  ==================================  =================================
target                        dataset                             batch
============================  ==================================  =================================
``captioning``                :class:`CaptioningDataset`          :class:`CaptionBatch`
``masked_lm``                 :class:`MaskedLMDataset`            :class:`MaskedLMBatch`
``token_classification``      :class:`TokenClassificationDataset` :class:`TokenClassificationBatch`
``multilabel_classification`` :class:`MultilabelDataset`          :class:`MultilabelBatch`
============================  ==================================  =================================

Each sample takes one caption of its image (a random one for training, the first for
validation), applies the image transform (the flip swaps "left"/"right" in the caption BEFORE
tokenisation), and tokenises it as ``[SOS] w1 ... wn [EOS]`` truncated to ``max_caption_length``
tokens (``[EOS]`` is kept on truncation).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from virtex_data.batch import (
    IGNORE_INDEX,
    CaptionBatch,
    MaskedLMBatch,
    MultilabelBatch,
    TokenClassificationBatch,
)
from virtex_data.lmdb_reader import LmdbReader
from virtex_data.tokenizer import CaptionTokenizer

__all__ = [
    "CaptioningDataset",
    "MaskedLMDataset",
    "MaskingConfig",
    "MultilabelDataset",
    "Sample",
    "TokenClassificationDataset",
    "coco_multilabels",
    "mask_tokens",
    "pad_tokens",
]

ImageCaptionTransform = Callable[[bytes | Image.Image, str], tuple[Tensor, str]]


@dataclass
class Sample:
    """One dataset item before collation.

    Attributes:
        image_id: the image's id.
        image: ``(3, H, W)`` float32.
        tokens: ``(n,)`` int64, ``[SOS] ... [EOS]``.
        target: per-target extra: ``(n,)`` MLM labels, ``(V,)`` token multi-hot or ``(C,)``
            category multi-hot; ``None`` for captioning.
    """

    image_id: int
    image: Tensor
    tokens: Tensor
    target: Tensor | None = None


MaskingProcedure = Literal["original", "bernoulli"]
RandomPool = Literal["words", "any"]


@dataclass(kw_only=True)
class MaskingConfig:
    """Masked language modelling: which caption tokens are chosen and what they become.

    ``procedure="original"`` (default; the original VirTex's, used by the paper's configs):
    exactly ``ceil(proportion * (n - 2))`` of the ``n - 2`` word positions are chosen without
    replacement; each becomes ``[MASK]`` with probability ``mask``, a random token with
    probability ``random``, else stays; only positions that became ``[MASK]`` are labelled
    (predicted). When exactly one position is chosen it always becomes ``[MASK]``.

    ``procedure="bernoulli"`` (BERT's): every word position is chosen with probability
    ``proportion`` (at least one per caption); every chosen position is labelled, whether it
    became ``[MASK]``, a random token or stayed.

    Attributes:
        procedure: ``original`` or ``bernoulli``.
        proportion: fraction of caption words chosen for prediction.
        mask: probability that a chosen token becomes ``[MASK]``.
        random: probability that it becomes a random token.
        keep: probability that it stays unchanged. ``mask + random + keep == 1``.
        random_pool: where random tokens come from: ``words`` (every id but the special tokens,
            our default) or ``any`` (every vocabulary id, specials included, as the original).
    """

    procedure: MaskingProcedure = "original"
    proportion: float = 0.15
    mask: float = 0.85
    random: float = 0.10
    keep: float = 0.05
    random_pool: RandomPool = "words"

    def __post_init__(self) -> None:
        if self.procedure not in ("original", "bernoulli"):
            raise ValueError(
                f"masking.procedure must be 'original' or 'bernoulli', got {self.procedure!r}"
            )
        if self.random_pool not in ("words", "any"):
            raise ValueError(
                f"masking.random_pool must be 'words' or 'any', got {self.random_pool!r}"
            )
        if not 0 < self.proportion <= 1:
            raise ValueError(f"masking.proportion must be in (0, 1], got {self.proportion}")
        parts = (self.mask, self.random, self.keep)
        if min(parts) < 0 or abs(sum(parts) - 1) > 1e-6:
            raise ValueError(f"masking mask + random + keep must be 1, got {parts}")


def pad_tokens(rows: Sequence[Tensor], pad: int) -> tuple[Tensor, Tensor]:
    """Right-pad 1-D token tensors to the longest one.

    Returns:
        ``tokens (B, L)`` int64 and ``lengths (B,)`` int64.
    """
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    tokens = torch.full((len(rows), int(lengths.max())), pad, dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = row
    return tokens, lengths


def mask_tokens(
    tokens: Tensor,
    config: MaskingConfig,
    mask_id: int,
    replacement_ids: Tensor,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Choose tokens of one caption for masked LM and replace them (see :class:`MaskingConfig`).

    Args:
        tokens: ``(n,)`` int64 ``[SOS] ... [EOS]``; only positions ``1..n-2`` can be chosen.
        config: procedure and proportions.
        mask_id: id of ``[MASK]``.
        replacement_ids: ``(K,)`` ids that random replacements are drawn from.
        generator: optional torch generator.

    Returns:
        ``(inputs (n,), labels (n,))``: labels hold the original id at labelled positions and
        :data:`IGNORE_INDEX` elsewhere.
    """
    inputs = tokens.clone()
    labels = torch.full_like(tokens, IGNORE_INDEX)
    words = len(tokens) - 2
    if words <= 0:
        return inputs, labels
    if config.procedure == "original":
        # Same arithmetic as the original, so that the count matches it for every length.
        count = math.ceil(words * config.proportion)
        chosen = torch.randperm(words, generator=generator)[:count] + 1
    else:
        candidates = torch.arange(1, words + 1)
        chosen = candidates[torch.rand(words, generator=generator) < config.proportion]
        if len(chosen) == 0:
            chosen = candidates[torch.randint(words, (1,), generator=generator)]
    action = torch.rand(len(chosen), generator=generator)
    masking = action < config.mask
    randomising = ~masking & (action < config.mask + config.random)
    if config.procedure == "original" and len(chosen) == 1:
        masking, randomising = torch.ones_like(masking), torch.zeros_like(randomising)
    to_mask, to_random = chosen[masking], chosen[randomising]
    labelled = to_mask if config.procedure == "original" else chosen
    labels[labelled] = tokens[labelled]
    inputs[to_mask] = mask_id
    if len(to_random):
        picks = torch.randint(len(replacement_ids), (len(to_random),), generator=generator)
        inputs[to_random] = replacement_ids[picks]
    return inputs, labels


class CaptioningDataset(Dataset[Sample]):
    """Images with one caption each, from an LMDB file.

    Args:
        reader: the LMDB reader.
        tokenizer: caption tokenizer.
        transform: ``(bytes, caption) -> (image (3, S, S), caption)``.
        max_caption_length: maximum tokens per caption, ``[SOS]`` and ``[EOS]`` included.
        random_caption: pick a random caption of the image (training) or the first (evaluation).
    """

    def __init__(
        self,
        reader: LmdbReader,
        tokenizer: CaptionTokenizer,
        transform: ImageCaptionTransform,
        max_caption_length: int = 30,
        random_caption: bool = True,
    ) -> None:
        if max_caption_length < 3:
            raise ValueError(f"max_caption_length must be at least 3, got {max_caption_length}")
        self.reader = reader
        self.tokenizer = tokenizer
        self.transform = transform
        self.max_caption_length = max_caption_length
        self.random_caption = random_caption
        self.special = tokenizer.special
        #: Number of categories of a ``multilabel`` dataset; ``None`` for the caption targets.
        self.num_classes: int | None = None

    def __len__(self) -> int:
        return len(self.reader)

    def tokenize(self, caption: str) -> Tensor:
        """``[SOS] ids [EOS]`` of a caption, truncated to ``max_caption_length``."""
        ids = self.tokenizer.encode(caption)[: self.max_caption_length - 2]
        return torch.tensor([self.special.sos, *ids, self.special.eos], dtype=torch.long)

    def _image_and_tokens(self, index: int) -> tuple[int, Tensor, Tensor]:
        record = self.reader[index]
        if self.random_caption and len(record.captions) > 1:
            caption = record.captions[int(torch.randint(len(record.captions), (1,)))]
        else:
            caption = record.captions[0]
        try:
            image, caption = self.transform(record.image, caption)
        except (OSError, SyntaxError, ValueError, EOFError) as error:
            # Undecodable or above the pixel limit (ImageTooLarge): named, never a bare PIL error.
            raise ValueError(
                f"{self.reader.path}: record {index} (image {record.image_id}): {error}"
            ) from error
        return record.image_id, image, self.tokenize(caption)

    def __getitem__(self, index: int) -> Sample:
        image_id, image, tokens = self._image_and_tokens(index)
        return Sample(image_id, image, tokens)

    def _fields(self, samples: Sequence[Sample]) -> dict[str, Tensor]:
        tokens, lengths = pad_tokens([s.tokens for s in samples], self.special.pad)
        return {
            "image_ids": torch.tensor([s.image_id for s in samples], dtype=torch.long),
            "images": torch.stack([s.image for s in samples]),
            "tokens": tokens,
            "lengths": lengths,
        }

    def collate(self, samples: Sequence[Sample]) -> CaptionBatch:
        """Stack images and pad captions to the longest one of the batch."""
        return CaptionBatch(**self._fields(samples))


class MaskedLMDataset(CaptioningDataset):
    """Captions with tokens masked for masked language modelling (see :func:`mask_tokens`)."""

    def __init__(
        self,
        reader: LmdbReader,
        tokenizer: CaptionTokenizer,
        transform: ImageCaptionTransform,
        max_caption_length: int = 30,
        random_caption: bool = True,
        masking: MaskingConfig | None = None,
    ) -> None:
        super().__init__(reader, tokenizer, transform, max_caption_length, random_caption)
        self.masking = masking or MaskingConfig()
        special_ids = set(self.special.as_dict().values())
        if self.masking.random_pool == "any":
            self._replacements = torch.arange(tokenizer.vocab_size, dtype=torch.long)
        else:
            self._replacements = torch.tensor(
                [i for i in range(tokenizer.vocab_size) if i not in special_ids], dtype=torch.long
            )

    def __getitem__(self, index: int) -> Sample:
        image_id, image, tokens = self._image_and_tokens(index)
        inputs, labels = mask_tokens(tokens, self.masking, self.special.mask, self._replacements)
        return Sample(image_id, image, inputs, labels)

    def collate(self, samples: Sequence[Sample]) -> MaskedLMBatch:
        fields = self._fields(samples)
        labels = torch.full_like(fields["tokens"], IGNORE_INDEX)
        for i, sample in enumerate(samples):
            assert sample.target is not None
            labels[i, : len(sample.target)] = sample.target
        return MaskedLMBatch(**fields, mlm_labels=labels)


class TokenClassificationDataset(CaptioningDataset):
    """Captions with their bag of (non-special) tokens as a ``(V,)`` multi-hot target."""

    def __getitem__(self, index: int) -> Sample:
        image_id, image, tokens = self._image_and_tokens(index)
        target = torch.zeros(self.tokenizer.vocab_size, dtype=torch.float32)
        target[tokens] = 1.0
        for special in self.special.as_dict().values():
            target[special] = 0.0
        return Sample(image_id, image, tokens, target)

    def collate(self, samples: Sequence[Sample]) -> TokenClassificationBatch:
        labels = torch.stack([s.target for s in samples if s.target is not None])
        return TokenClassificationBatch(**self._fields(samples), token_labels=labels)


def coco_multilabels(
    path: str | os.PathLike[str],
) -> tuple[dict[int, list[int]], list[dict[str, object]]]:
    """Category indices per image from a COCO instances JSON.

    Categories are sorted by id and numbered ``0..C-1`` (COCO's 80 ids with gaps become 0..79).

    Returns:
        ``({image_id: sorted category indices}, categories sorted by id)``; images of the file
        without annotations map to ``[]``.
    """
    source = Path(path)
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read COCO instances file {source}: {error}") from error
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise ValueError(f"{source}: COCO instances JSON has no {key!r} key")
    categories = sorted(data["categories"], key=lambda c: int(c["id"]))
    index = {int(c["id"]): k for k, c in enumerate(categories)}
    labels: dict[int, set[int]] = {int(image["id"]): set() for image in data["images"]}
    for n, annotation in enumerate(data["annotations"]):
        category = int(annotation["category_id"])
        if category not in index:
            raise ValueError(f"{source}: annotations[{n}] has unknown category_id {category}")
        labels.setdefault(int(annotation["image_id"]), set()).add(index[category])
    return {k: sorted(v) for k, v in labels.items()}, categories


class MultilabelDataset(CaptioningDataset):
    """Images with the multi-hot ``(C,)`` of their COCO instance categories.

    Args:
        instances: COCO instances JSON of the same images (``instances_train2017.json``).
        others: as :class:`CaptioningDataset` (a caption is still tokenised: batches carry one).

    Raises:
        ValueError: if an image of the LMDB file is missing from the instances file.
    """

    def __init__(
        self,
        reader: LmdbReader,
        tokenizer: CaptionTokenizer,
        transform: ImageCaptionTransform,
        instances: str | os.PathLike[str],
        max_caption_length: int = 30,
        random_caption: bool = True,
    ) -> None:
        super().__init__(reader, tokenizer, transform, max_caption_length, random_caption)
        labels, self.categories = coco_multilabels(instances)
        missing = [i for i in reader.image_ids if i not in labels]
        if missing:
            raise ValueError(
                f"{instances}: has no entry for {len(missing)} image(s) of {reader.path}, "
                f"e.g. {missing[:5]}"
            )
        self.num_classes = len(self.categories)
        self._labels = labels
        self._num_classes = len(self.categories)

    def __getitem__(self, index: int) -> Sample:
        image_id, image, tokens = self._image_and_tokens(index)
        target = torch.zeros(self._num_classes, dtype=torch.float32)
        target[self._labels[image_id]] = 1.0
        return Sample(image_id, image, tokens, target)

    def collate(self, samples: Sequence[Sample]) -> MultilabelBatch:
        labels = torch.stack([s.target for s in samples if s.target is not None])
        return MultilabelBatch(**self._fields(samples), multilabels=labels)
