"""Zero-shot classification by caption likelihood (an addition to the original VirTex).

Each class becomes a prompt (``"a photo of a {}"`` filled with the class name); an image is
assigned the class whose prompt is most likely as its caption under the captioning model:
``log p([SOS] prompt [EOS] | image)`` summed over tokens, from the forward decoder, plus the
backward decoder's ``log p(reversed prompt | image)`` when the model is bidirectional
(``direction="both"``, the default for bicaptioning). ``normalize=True`` divides each direction's
score by its number of predicted tokens (prompts of different lengths then compete on the mean
log-probability per token instead of the total).

The image is projected once per image; its memory is shared by all prompts of the batch.

``virtex-eval zero-shot`` (:data:`zeroshot_command`) reads an image-folder tree (one sub-folder
per class; the folder name, with ``_`` read as a space, is the class name).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm

from virtex_data.tokenizer import CaptionTokenizer
from virtex_eval.captioner import Captioner
from virtex_eval.images import ImageFileDataset, ImageFileError, find_images
from virtex_models.captioning import Captioning, reverse_captions

__all__ = [
    "DEFAULT_PROMPT",
    "Direction",
    "ImageFolderSplit",
    "ZeroShotClassifier",
    "ZeroShotResult",
    "caption_log_likelihood",
    "caption_tokens",
    "read_image_folders",
    "resolve_direction",
]

DEFAULT_PROMPT = "a photo of a {}"
Direction = Literal["forward", "backward", "both"]


def caption_tokens(
    tokenizer: CaptionTokenizer,
    captions: Sequence[str],
    max_length: int,
    *,
    truncate: bool = False,
) -> tuple[Tensor, Tensor]:
    """``[SOS] ids [EOS]`` rows of ``captions``, right-padded: ``tokens (N, L)``, ``lengths (N,)``.

    Args:
        tokenizer: the model's tokenizer.
        captions: texts (prompts or captions).
        max_length: the model's longest token sequence.
        truncate: cut longer rows to ``max_length`` keeping the final ``[EOS]`` (as the training
            data does); otherwise a longer row is an error.

    Raises:
        ValueError: a row longer than ``max_length`` (without ``truncate``), naming the text.
    """
    special = tokenizer.special
    rows = []
    for caption, ids in zip(captions, tokenizer.encode_batch(list(captions)), strict=True):
        row = [special.sos, *ids, special.eos]
        if len(row) > max_length:
            if not truncate:
                raise ValueError(
                    f"prompt {caption!r} has {len(row)} tokens with [SOS]/[EOS]; the model "
                    f"takes at most {max_length}"
                )
            row = [*row[: max_length - 1], special.eos]
        rows.append(row)
    width = max(len(row) for row in rows)
    tokens = torch.full((len(rows), width), special.pad, dtype=torch.long)
    for index, row in enumerate(rows):
        tokens[index, : len(row)] = torch.tensor(row)
    return tokens, torch.tensor([len(row) for row in rows])


def _sequence_log_prob(logits: Tensor, tokens: Tensor, lengths: Tensor) -> Tensor:
    """``sum_t log p(tokens[t] | tokens[:t])`` for ``1 <= t < lengths`` -> ``(N,)``."""
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = log_probs.gather(2, tokens[:, 1:, None])[:, :, 0]
    positions = torch.arange(1, tokens.shape[1], device=tokens.device)[None, :]
    return picked.masked_fill(positions >= lengths[:, None], 0.0).sum(dim=1)


def resolve_direction(objective: Captioning, direction: Direction | None) -> Direction:
    """``direction``, or the default (``both`` for a bidirectional model, else ``forward``).

    Raises:
        ValueError: ``backward``/``both`` for a model with only the forward decoder.
    """
    bidirectional = objective.backward_textual is not None
    if direction is None:
        return "both" if bidirectional else "forward"
    if direction != "forward" and not bidirectional:
        raise ValueError(
            f"direction {direction!r} needs a bidirectional (bicaptioning) model; this "
            "checkpoint has only the forward decoder"
        )
    return direction


def caption_log_likelihood(
    objective: Captioning,
    memory: Tensor,
    tokens: Tensor,
    lengths: Tensor,
    *,
    direction: Direction,
    normalize: bool = False,
) -> Tensor:
    """Log-likelihood of caption ``n`` given image memory ``n``, for every row ``n``.

    Shared by zero-shot classification and retrieval.

    Args:
        objective: a captioning objective.
        memory: ``(N, S, D)`` projected visual features (``textual.project(visual(images))``).
        tokens: ``(N, L)`` ``[SOS] ... [EOS]`` right-padded.
        lengths: ``(N,)``.
        direction: ``forward``, ``backward`` or ``both`` (the sum of the two).
        normalize: divide each direction's sum by its number of predicted tokens
            (``lengths - 1``).

    Returns:
        ``(N,)`` float32.
    """
    width = int(lengths.max())
    tokens = tokens[:, :width]
    predicted = (lengths - 1).float()
    total = torch.zeros(tokens.shape[0], device=memory.device)
    if direction in ("forward", "both"):
        logits = objective.textual.decode(memory, tokens, lengths)
        forward = _sequence_log_prob(logits, tokens, lengths)
        total = total + (forward / predicted if normalize else forward)
    if direction in ("backward", "both"):
        assert objective.backward_textual is not None
        reversed_tokens = reverse_captions(tokens, lengths)
        logits = objective.backward_textual.decode(memory, reversed_tokens, lengths)
        backward = _sequence_log_prob(logits, reversed_tokens, lengths)
        total = total + (backward / predicted if normalize else backward)
    return total


class ZeroShotClassifier:
    """Scores class prompts as captions of images.

    Args:
        captioner: the loaded captioning model.
        class_names: one name per class (index = label).
        prompt: template with one ``{}`` for the class name.
        direction: ``forward``, ``backward`` (bidirectional models only) or ``both``
            (``None``: ``both`` if the model is bidirectional, else ``forward``).
        normalize: divide each direction's log-likelihood by its number of predicted tokens.
        class_chunk: prompts scored together per image batch (bounds memory for many classes).
    """

    def __init__(
        self,
        captioner: Captioner,
        class_names: Sequence[str],
        prompt: str = DEFAULT_PROMPT,
        *,
        direction: Direction | None = None,
        normalize: bool = False,
        class_chunk: int = 64,
    ) -> None:
        if "{}" not in prompt:
            raise ValueError(f"the prompt template {prompt!r} needs a {{}} for the class name")
        if not class_names:
            raise ValueError("zero-shot classification needs at least one class")
        direction = resolve_direction(captioner.objective, direction)
        self.captioner = captioner
        self.class_names = list(class_names)
        self.prompts = [prompt.replace("{}", name) for name in self.class_names]
        self.direction: Direction = direction
        self.normalize = normalize
        self.class_chunk = max(1, class_chunk)
        tokens, lengths = caption_tokens(
            captioner.tokenizer, self.prompts, captioner.objective.textual.max_length
        )
        self.tokens = tokens.to(captioner.device)
        self.lengths = lengths.to(captioner.device)

    @torch.no_grad()
    def scores(self, images: Tensor) -> Tensor:
        """Log-likelihood scores ``(B, C)`` of every class prompt for ``images (B, 3, S, S)``."""
        objective = self.captioner.objective
        images = images.to(self.captioner.device)
        memory = objective.textual.project(objective.visual(images))  # (B, S, D)
        # Prompts in chunks: B * chunk (image, prompt) pairs at a time bound the memory.
        return torch.cat(
            [
                self._chunk_scores(memory, start, min(start + self.class_chunk, len(self.prompts)))
                for start in range(0, len(self.prompts), self.class_chunk)
            ],
            dim=1,
        )

    def _chunk_scores(self, memory: Tensor, first: int, last: int) -> Tensor:
        objective = self.captioner.objective
        batch, classes = memory.shape[0], last - first
        memory = memory.repeat_interleave(classes, dim=0)  # (B * c, S, D)
        tokens = self.tokens[first:last].repeat(batch, 1)
        lengths = self.lengths[first:last].repeat(batch)
        total = caption_log_likelihood(
            objective, memory, tokens, lengths, direction=self.direction, normalize=self.normalize
        )
        return total.reshape(batch, classes)

    def predict(self, images: Tensor) -> Tensor:
        """Most likely class per image ``(B,)``."""
        return self.scores(images).argmax(dim=1)


@dataclass(frozen=True)
class ImageFolderSplit:
    """Images of a class-folder tree: ``paths[i]`` has label ``labels[i]`` in ``class_names``."""

    class_names: list[str]
    folders: list[str]
    paths: list[Path]
    labels: list[int]


def read_image_folders(root: str | os.PathLike[str]) -> ImageFolderSplit:
    """One class per sub-folder of ``root`` (sorted; ``_`` in a folder name reads as a space).

    Raises:
        ImageFileError: ``root`` missing, no class folders, or a class folder without images.
    """
    root = Path(root)
    if not root.is_dir():
        raise ImageFileError(root, "no such directory (expected one sub-folder per class)")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise ImageFileError(root, "has no class sub-folders")
    paths: list[Path] = []
    labels: list[int] = []
    for label, folder in enumerate(folders):
        found = find_images([folder])
        paths.extend(found)
        labels.extend([label] * len(found))
    names = [folder.name.replace("_", " ") for folder in folders]
    return ImageFolderSplit(names, [f.name for f in folders], paths, labels)


@dataclass
class ZeroShotResult:
    """Accuracies and predictions of a zero-shot run."""

    top1: float
    top5: float | None
    per_class: dict[str, float]
    predictions: list[int] = field(repr=False)
    num_images: int = 0

    def metrics(self) -> dict[str, Any]:
        """Plain numbers for a JSON file (``top5`` only with at least 5 classes)."""
        record: dict[str, Any] = {"top1": self.top1, "num_images": self.num_images}
        if self.top5 is not None:
            record["top5"] = self.top5
        record["per_class_top1"] = self.per_class
        return record


def evaluate(
    classifier: ZeroShotClassifier,
    split: ImageFolderSplit,
    *,
    batch_size: int = 16,
    num_workers: int = 0,
    progress: bool = False,
) -> ZeroShotResult:
    """Top-1 (and top-5) accuracy of ``classifier`` on a class-folder split."""
    dataset = ImageFileDataset(split.paths, classifier.captioner.transform)
    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=dataset.collate
    )
    labels = torch.tensor(split.labels)
    predictions = torch.empty(len(dataset), dtype=torch.long)
    in_top5 = torch.zeros(len(dataset), dtype=torch.bool)
    classes = len(split.class_names)
    with tqdm(total=len(dataset), desc="zero-shot", unit="img", disable=not progress) as bar:
        for indices, images in loader:
            scores = classifier.scores(images).cpu()
            predictions[indices] = scores.argmax(dim=1)
            top = scores.topk(min(5, classes), dim=1).indices
            in_top5[indices] = (top == labels[indices, None]).any(dim=1)
            bar.update(len(indices))
    correct = predictions == labels
    per_class = {
        name: float(correct[labels == index].float().mean())
        for index, name in enumerate(split.class_names)
    }
    return ZeroShotResult(
        top1=float(correct.float().mean()),
        top5=float(in_top5.float().mean()) if classes >= 5 else None,
        per_class=per_class,
        predictions=predictions.tolist(),
        num_images=len(dataset),
    )
