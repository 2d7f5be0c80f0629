"""Image-caption retrieval by caption likelihood (an addition to the original VirTex).

Every (image, caption) pair of a caption set is scored by ``log p(caption | image)`` under the
captioning model, the same score as zero-shot classification
(:func:`~virtex_eval.zeroshot.caption_log_likelihood`): the forward decoder, the backward one or
the sum of both for bicaptioning, each direction either summed over tokens (``sum``) or divided by
its number of predicted tokens (``mean``, so that long captions are not penalised for length).
From the ``(images, captions)`` score matrix:

- image-to-text: for each image, the rank of its best-scored own caption among all captions;
- text-to-image: for each caption, the rank of its image among all images;

reported as recall@1/5/10 (the fraction of queries whose rank is at most k) and mean / median
rank (1 = best). Ties count against the query: rank = 1 + the number of wrong candidates that
score at least as high as the right one.

Each image is encoded once (visual backbone + projection, cached); captions are scored in
batches of ``pair_batch`` (image, caption) pairs against the cached features. The cost is one
decoder pass per pair, so ``virtex-eval retrieval`` refuses sets above ``--max-pairs``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm

from virtex_data.sources import OutsideImageFolder, image_path, read_captions
from virtex_eval.captioner import Captioner
from virtex_eval.images import ImageFileDataset
from virtex_eval.zeroshot import (
    Direction,
    caption_log_likelihood,
    caption_tokens,
    resolve_direction,
)

__all__ = [
    "DEFAULT_MAX_PAIRS",
    "CaptionSet",
    "LikelihoodScorer",
    "TooManyPairs",
    "read_caption_set",
    "retrieval_metrics",
]

#: Default bound on images x captions (1,000 images with 5 captions each is 5 M pairs).
DEFAULT_MAX_PAIRS = 5_000_000
RECALL_AT = (1, 5, 10)
Normalize = Literal["sum", "mean"]


class TooManyPairs(ValueError):
    """The caption set has more (image, caption) pairs than the allowed bound."""


@dataclass(frozen=True)
class CaptionSet:
    """Images and captions of a caption file: caption ``j`` describes image ``image_of[j]``."""

    paths: list[Path]
    captions: list[str]
    image_of: list[int]

    @property
    def pairs(self) -> int:
        """Number of (image, caption) pairs to score."""
        return len(self.paths) * len(self.captions)


def read_caption_set(
    caption_file: str | os.PathLike[str], image_folder: str | os.PathLike[str]
) -> CaptionSet:
    """The images (with at least one caption) and captions of a COCO JSON / JSONL / CSV file.

    Uses the caption readers of ``build-lmdb`` (:func:`virtex_data.sources.read_captions`);
    image paths are relative to ``image_folder``. Images without captions are left out (nothing
    to retrieve for them). Whether the image files exist is checked when they are read.

    Raises:
        ValueError: an unreadable caption file, an image path outside the folder, or no
            captions at all, naming the file.
    """
    source = read_captions(caption_file)
    paths: list[Path] = []
    captions: list[str] = []
    image_of: list[int] = []
    for image in source.images:
        if not image.captions:
            continue
        try:
            path = image_path(image_folder, image.file_name)
        except OutsideImageFolder as error:
            raise ValueError(f"{caption_file}: {error}") from error
        for caption in image.captions:
            captions.append(caption)
            image_of.append(len(paths))
        paths.append(path)
    if not captions:
        raise ValueError(f"{caption_file}: no captions to retrieve")
    return CaptionSet(paths, captions, image_of)


def check_pairs(pairs: int, images: int, captions: int, max_pairs: int) -> None:
    """Refuse more than ``max_pairs`` pairs, saying how many there are.

    Raises:
        TooManyPairs: ``images * captions > max_pairs``.
    """
    if pairs > max_pairs:
        raise TooManyPairs(
            f"retrieval over {images} images x {captions} captions = {pairs:,} pairs (one "
            f"decoder pass each) exceeds --max-pairs {max_pairs:,}; use a smaller caption set "
            "or raise --max-pairs"
        )


class LikelihoodScorer:
    """Scores every (image, caption) pair by caption log-likelihood.

    Args:
        captioner: the loaded captioning model.
        direction: ``forward``, ``backward`` (bidirectional models only) or ``both``
            (``None``: ``both`` if the model is bidirectional, else ``forward``).
        normalize: ``sum`` of token log-probabilities, or their ``mean`` per predicted token
            (per direction).
        pair_batch: (image, caption) pairs per decoder pass (bounds memory).
    """

    def __init__(
        self,
        captioner: Captioner,
        *,
        direction: Direction | None = None,
        normalize: Normalize = "sum",
        pair_batch: int = 256,
    ) -> None:
        if normalize not in ("sum", "mean"):
            raise ValueError(f"normalize must be 'sum' or 'mean', got {normalize!r}")
        self.captioner = captioner
        self.direction: Direction = resolve_direction(captioner.objective, direction)
        self.normalize: Normalize = normalize
        self.pair_batch = max(1, pair_batch)

    @torch.no_grad()
    def image_memory(self, images: Tensor) -> Tensor:
        """Projected visual features ``(B, S, D)`` of preprocessed ``images (B, 3, H, W)``."""
        objective = self.captioner.objective
        images = images.to(self.captioner.device)
        return objective.textual.project(objective.visual(images))

    @torch.no_grad()
    def score_matrix(
        self, memory: Tensor, captions: Sequence[str], *, progress: bool = False
    ) -> Tensor:
        """Scores ``(I, C)``: ``[i, j] = log p(captions[j] | image i)`` for ``memory (I, S, D)``.

        Captions longer than the model's ``max_length`` are truncated as in training.
        """
        objective = self.captioner.objective
        tokens, lengths = caption_tokens(
            self.captioner.tokenizer, captions, objective.textual.max_length, truncate=True
        )
        tokens, lengths = tokens.to(memory.device), lengths.to(memory.device)
        num_images, num_captions = memory.shape[0], len(captions)
        chunk = min(self.pair_batch, num_captions)  # captions per pass
        images_per_pass = max(1, self.pair_batch // chunk)
        scores = torch.empty(num_images, num_captions)
        with tqdm(
            total=num_images * num_captions, desc="retrieval", unit="pair", disable=not progress
        ) as bar:
            for first in range(0, num_captions, chunk):
                last = min(first + chunk, num_captions)
                width = int(lengths[first:last].max())
                for start in range(0, num_images, images_per_pass):
                    stop = min(start + images_per_pass, num_images)
                    count = stop - start
                    # Pairs image-major: image i with each caption of the chunk, then i + 1.
                    block = caption_log_likelihood(
                        objective,
                        memory[start:stop].repeat_interleave(last - first, dim=0),
                        tokens[first:last, :width].repeat(count, 1),
                        lengths[first:last].repeat(count),
                        direction=self.direction,
                        normalize=self.normalize == "mean",
                    )
                    scores[start:stop, first:last] = block.reshape(count, last - first).cpu()
                    bar.update(count * (last - first))
        return scores

    def score_files(
        self,
        paths: Sequence[Path],
        captions: Sequence[str],
        *,
        batch_size: int = 16,
        num_workers: int = 0,
        progress: bool = False,
    ) -> Tensor:
        """:meth:`score_matrix` of image files (each read and encoded once)."""
        dataset = ImageFileDataset(paths, self.captioner.transform)
        loader = DataLoader(
            dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=dataset.collate
        )
        memories = []
        with tqdm(total=len(dataset), desc="images", unit="img", disable=not progress) as bar:
            for indices, images in loader:
                memories.append(self.image_memory(images))
                bar.update(len(indices))
        return self.score_matrix(torch.cat(memories), captions, progress=progress)


def _summary(ranks: Tensor) -> dict[str, float]:
    ranks = ranks.float()
    record = {f"R@{k}": float((ranks <= k).float().mean()) for k in RECALL_AT}
    record["mean_rank"] = float(ranks.mean())
    record["median_rank"] = float(ranks.median())
    return record


def retrieval_ranks(scores: Tensor, image_of: Sequence[int]) -> tuple[Tensor, Tensor]:
    """1-based ranks ``(I,)`` image-to-text and ``(C,)`` text-to-image of a score matrix.

    Args:
        scores: ``(I, C)`` higher is better.
        image_of: the image of each caption (``C`` indices in ``[0, I)``).

    Returns:
        Image-to-text: per image, 1 + the captions of other images scoring at least as high as
        its best own caption (every image needs at least one caption). Text-to-image: per
        caption, 1 + the other images scoring at least as high as its own.
    """
    num_images, num_captions = scores.shape
    owner = torch.as_tensor(list(image_of), dtype=torch.long)
    own = torch.zeros(num_images, num_captions, dtype=torch.bool)
    own[owner, torch.arange(num_captions)] = True
    best_own = scores.masked_fill(~own, float("-inf")).max(dim=1).values  # (I,)
    image_ranks = 1 + ((scores >= best_own[:, None]) & ~own).sum(dim=1)
    right = scores[owner, torch.arange(num_captions)]  # (C,)
    text_ranks = 1 + ((scores >= right[None, :]) & ~own).sum(dim=0)
    return image_ranks, text_ranks


def retrieval_metrics(scores: Tensor, image_of: Sequence[int]) -> dict[str, Any]:
    """Recall@1/5/10, mean and median rank in both directions of a score matrix ``(I, C)``."""
    image_ranks, text_ranks = retrieval_ranks(scores, image_of)
    return {
        "image_to_text": _summary(image_ranks),
        "text_to_image": _summary(text_ranks),
        "num_images": int(scores.shape[0]),
        "num_captions": int(scores.shape[1]),
    }
