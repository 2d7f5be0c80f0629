"""Captioning images with a self-contained checkpoint, and the COCO captioning evaluation.

A checkpoint written by ``virtex_train`` (or any dict with ``model``, ``model_spec`` and
``tokenizer``) is all that is needed: the objective is rebuilt with
``virtex_models.pretrained.read_checkpoint``, the tokenizer from the embedded JSON, and the image
preprocessing from the checkpoint's typed ``preprocessing`` entry (image size, resize side,
normalisation mean/std). Checkpoints written before that entry existed fall back to the embedded
experiment YAML (``data.transform.image_size``/``eval_resize``, 224 when absent) and ImageNet
normalisation. Images are preprocessed like the training run's validation images
(``virtex_data.transforms.EvalTransform``: shorter side to ``round(S / 0.875)``, centre crop
``S``, normalisation).

``virtex-eval caption`` (:data:`caption_command`) captions files and folders, or the images of a
COCO captions file, whose COCO results JSON it writes and scores with
:func:`virtex_eval.metrics.caption_scores`. Unreadable images (missing, corrupt, truncated, not a
regular file, above the pixel limit, outside ``--images``) are skipped, counted and listed, and the
rest is captioned (and scored); ``--strict`` fails on the first instead, naming it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm

from virtex_data.sources import read_captions
from virtex_data.tokenizer import CaptionTokenizer
from virtex_data.transforms import EvalTransform, TransformConfig
from virtex_eval.images import (
    ImageFileDataset,
    LenientImageFileDataset,
)
from virtex_models.config import DEFAULT_KIND
from virtex_models.objectives.captioning import Captioning
from virtex_models.precision import resolve_bf16
from virtex_models.pretrained import ModelSpec, Preprocessing, read_checkpoint_file
from virtex_models.pretrained import read_checkpoint as read_model_checkpoint
from virtex_models.registry import get_objective, objectives

__all__ = [
    "CaptionedFiles",
    "Captioner",
    "DecodeSettings",
    "load_captioner",
    "read_checkpoint",
    "read_coco_captions",
]

DEFAULT_IMAGE_SIZE = 224


#: A checkpoint file as a dict (``weights_only=True``; errors name the file).
read_checkpoint = read_checkpoint_file


def _image_settings(checkpoint: Mapping[str, Any], source: str) -> tuple[int, int | None]:
    """``(image_size, eval_resize)`` from the embedded experiment YAML, else the defaults.

    Only for checkpoints written before the typed ``preprocessing`` entry existed.
    """
    text = checkpoint.get("config")
    if not isinstance(text, str):
        return DEFAULT_IMAGE_SIZE, None
    try:
        import yaml
    except ImportError:  # PyYAML is optional here: fall back to the default size
        return DEFAULT_IMAGE_SIZE, None
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as error:
        warnings.warn(f"{source}: unreadable 'config' entry ({error}); using 224 px", stacklevel=2)
        return DEFAULT_IMAGE_SIZE, None
    transform = ((config or {}).get("data") or {}).get("transform") or {}
    size = transform.get("image_size", DEFAULT_IMAGE_SIZE)
    resize = transform.get("eval_resize")
    if not isinstance(size, int) or not (resize is None or isinstance(resize, int)):
        raise ValueError(f"{source}: config data.transform.image_size/eval_resize must be ints")
    return size, resize


def check_tokenizer(tokenizer: CaptionTokenizer, spec: ModelSpec, source: str) -> None:
    """Raise ``ValueError`` (naming ``source``) unless the tokenizer fits the model's vocabulary."""
    vocab = spec.vocab
    if tokenizer.vocab_size != vocab.size:
        raise ValueError(
            f"{source}: the tokenizer has {tokenizer.vocab_size} tokens but the model's "
            f"vocabulary has {vocab.size}: use the tokenizer the model was trained with"
        )
    ours = tokenizer.special.as_dict()
    theirs = {"pad": vocab.pad, "unk": vocab.unk, "sos": vocab.sos, "eos": vocab.eos}
    theirs["mask"] = vocab.mask
    if ours != theirs:
        raise ValueError(
            f"{source}: special token ids differ between the tokenizer {ours} and the model "
            f"{theirs}"
        )


@dataclass
class CaptionedFiles:
    """Captions of the usable files and the files that could not be used.

    Attributes:
        captions: caption by position in the input list (usable files only).
        unreadable: ``(path, reason)`` of every file skipped, in input order.
    """

    captions: dict[int, str] = field(default_factory=dict)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)


#: The ``auto``/``on``/``off`` values of the bf16 switches.
PRECISIONS = ("auto", "on", "off")


@dataclass(frozen=True)
class DecodeSettings:
    """How to decode: beam search (``beam_size``; 1 = greedy) or nucleus sampling.

    Attributes:
        beam_size: beams (``None``: the checkpoint's default decoder).
        nucleus: top-p of nucleus sampling (exclusive with ``beam_size``).
        max_steps: most tokens (``None``: the checkpoint's default).
        seed: random seed of nucleus sampling.
        visual_bf16: the visual forward in bf16 with ``channels_last`` inputs: ``auto``
            (default: where the device has native bf16, e.g. AVX512_BF16/AMX CPUs, CUDA),
            ``on`` or ``off`` (fp32: captions bit-identical to the fp32 model's).
        decoder_bf16: the decoder's matrix products in bf16 too (about 2x faster decoding,
            captions change more): ``False``/``off`` (default), ``True``/``on``, or ``auto``
            (where the device has native bf16; ``virtex-eval caption``'s default).
    """

    beam_size: int | None = None
    nucleus: float | None = None
    max_steps: int | None = None
    seed: int = 0
    visual_bf16: str = "auto"
    decoder_bf16: str | bool = False

    def __post_init__(self) -> None:
        if self.beam_size is not None and self.nucleus is not None:
            raise ValueError("choose beam search (beam_size) or nucleus sampling, not both")
        if self.beam_size is not None and self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        if self.nucleus is not None and not 0 < self.nucleus <= 1:
            raise ValueError(f"nucleus must be in (0, 1], got {self.nucleus}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.visual_bf16 not in PRECISIONS:
            raise ValueError(f"visual_bf16 must be auto, on or off, got {self.visual_bf16!r}")
        if not isinstance(self.decoder_bf16, bool) and self.decoder_bf16 not in PRECISIONS:
            raise ValueError(
                f"decoder_bf16 must be auto, on, off or a bool, got {self.decoder_bf16!r}"
            )

    def describe(self, objective: Captioning) -> dict[str, Any]:
        """The settings actually used (defaults resolved from the objective's decoder, bf16
        switches resolved for the objective's device)."""
        default = objective.decoder
        max_steps = self.max_steps or default.max_steps
        # The resolved switch: whether this run's visual forward was bf16 ("auto" says nothing).
        device = next(objective.parameters()).device
        precision = {
            "visual_bf16": resolve_bf16(self.visual_bf16, device),
            "decoder_bf16": resolve_bf16(self.decoder_bf16, device),
        }
        if self.nucleus is not None:
            return {"mode": "nucleus", "top_p": self.nucleus, "max_steps": max_steps, **precision}
        if self.beam_size is not None:
            mode = "greedy" if self.beam_size == 1 else "beam"
            return {"mode": mode, "beam_size": self.beam_size, "max_steps": max_steps, **precision}
        return {
            "mode": default.mode,
            "beam_size": default.beam_size,
            "max_steps": max_steps,
            **precision,
        }


class Captioner:
    """A captioning objective + its tokenizer + the evaluation transform.

    Args:
        objective: a :class:`~virtex_models.captioning.Captioning` objective (eval mode).
        tokenizer: the tokenizer it was trained with.
        transform: image preprocessing.
        device: where to run.
    """

    def __init__(
        self,
        objective: Captioning,
        tokenizer: CaptionTokenizer,
        transform: EvalTransform,
        device: str | torch.device = "cpu",
    ) -> None:
        self.objective = objective.eval().to(device)
        self.tokenizer = tokenizer
        self.transform = transform
        self.device = torch.device(device)

    @property
    def image_size(self) -> int:
        return self.transform.config.image_size

    def decode(self, tokens: Tensor) -> list[str]:
        """Caption strings of ``(B, T)`` generated ids (cut at the first ``[EOS]``)."""
        eos = self.tokenizer.special.eos
        captions = []
        for row in tokens.tolist():
            if eos in row:
                row = row[: row.index(eos)]
            captions.append(self.tokenizer.decode(row))
        return captions

    def _check_steps(self, settings: DecodeSettings) -> None:
        steps = settings.max_steps or self.objective.decoder.max_steps
        limit = self.objective.textual.max_length
        if steps > limit:
            raise ValueError(
                f"max_steps={steps} exceeds the model's {limit} caption positions "
                f"(textual.max_length); use --max-steps {limit} or less"
            )

    @torch.no_grad()
    def caption_tensors(
        self, images: Tensor, settings: DecodeSettings = DecodeSettings()
    ) -> list[str]:
        """Captions of normalised ``images (B, 3, S, S)``."""
        self._check_steps(settings)
        kwargs: dict[str, Any] = {
            "visual_bf16": settings.visual_bf16,
            "decoder_bf16": resolve_bf16(settings.decoder_bf16, self.device),
        }
        if settings.max_steps is not None:
            kwargs["max_steps"] = settings.max_steps
        if settings.nucleus is not None:
            kwargs["nucleus"] = settings.nucleus
            generator = torch.Generator(device=self.device).manual_seed(settings.seed)
            kwargs["generator"] = generator
        elif settings.beam_size is not None:
            kwargs["mode"] = "greedy" if settings.beam_size == 1 else "beam"
            kwargs["beam_size"] = settings.beam_size
        tokens = self.objective.generate(images.to(self.device), **kwargs)
        return self.decode(tokens.cpu())

    def caption_files(
        self,
        paths: Sequence[str | os.PathLike[str]],
        settings: DecodeSettings = DecodeSettings(),
        *,
        batch_size: int = 16,
        num_workers: int = 0,
        progress: bool = False,
    ) -> list[str]:
        """Captions of image files, in order.

        Raises:
            ImageFileError: a missing or undecodable file (named).
        """
        self._check_steps(settings)
        dataset = ImageFileDataset(paths, self.transform)
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=ImageFileDataset.collate,
        )
        captions: list[str] = [""] * len(dataset)
        with tqdm(total=len(dataset), desc="caption", unit="img", disable=not progress) as bar:
            for indices, images in loader:
                for index, caption in zip(indices.tolist(), self.caption_tensors(images, settings)):
                    captions[index] = caption
                bar.update(len(indices))
        return captions

    def caption_readable_files(
        self,
        paths: Sequence[str | os.PathLike[str]],
        settings: DecodeSettings = DecodeSettings(),
        *,
        batch_size: int = 16,
        num_workers: int = 0,
        progress: bool = False,
    ) -> CaptionedFiles:
        """Captions of the files that can be read; the others are skipped and reported.

        Each image is captioned independently of its batch, so the captions of the readable
        files are those :meth:`caption_files` gives.
        """
        self._check_steps(settings)
        dataset = LenientImageFileDataset(paths, self.transform)
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=LenientImageFileDataset.collate,
        )
        result = CaptionedFiles()
        with tqdm(total=len(dataset), desc="caption", unit="img", disable=not progress) as bar:
            for indices, images, failed in loader:
                result.unreadable.extend((dataset.paths[i], reason) for i, reason in failed)
                if images is not None:
                    captions = self.caption_tensors(images, settings)
                    result.captions.update(zip(indices.tolist(), captions, strict=True))
                bar.update(len(indices) + len(failed))
        return result  # the loader keeps input order, so `unreadable` is in input order too


def load_captioner(
    checkpoint: str | os.PathLike[str] | Mapping[str, Any],
    *,
    tokenizer: CaptionTokenizer | None = None,
    device: str | torch.device = "cpu",
    image_size: int | None = None,
) -> Captioner:
    """A :class:`Captioner` from a self-contained checkpoint (file or dict).

    Args:
        checkpoint: the checkpoint.
        tokenizer: overrides (or supplies) the checkpoint's ``tokenizer`` entry.
        device: where to run.
        image_size: overrides the training image size read from the checkpoint.

    Raises:
        ValueError: an unreadable file, a checkpoint of a non-captioning objective, no tokenizer,
            or a tokenizer that does not fit the model, each naming the checkpoint.
    """
    if isinstance(checkpoint, Mapping):
        data: Mapping[str, Any] = checkpoint
        source = "checkpoint"
    else:
        source = str(checkpoint)
        data = read_checkpoint(checkpoint)
    spec_data = data.get("model_spec")
    if not isinstance(spec_data, Mapping):
        raise ValueError(f"{source}: no 'model_spec' entry (not a self-contained checkpoint)")
    kind = (spec_data.get("config") or {}).get("kind", DEFAULT_KIND)
    if kind in objectives() and not get_objective(kind).captions:
        kinds = [name for name, info in objectives().items() if info.captions]
        raise ValueError(
            f"{source} holds a {kind!r} model, which cannot caption: captioning and zero-shot "
            f"need a {' or '.join(kinds)} checkpoint"
        )
    if tokenizer is None:
        text = data.get("tokenizer")
        if not isinstance(text, str):
            raise ValueError(
                f"{source}: no 'tokenizer' entry; pass the run's tokenizer.json (--tokenizer)"
            )
        try:
            tokenizer = CaptionTokenizer.from_json(text)
        except Exception as error:  # tokenizers raises bare Exception on bad JSON
            raise ValueError(f"{source}: unreadable 'tokenizer' entry ({error})") from error
    try:
        typed = read_model_checkpoint(data)
        objective = typed.build()
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from error
    if not isinstance(objective, Captioning):  # kind checked above; keeps mypy informed
        raise ValueError(f"{source}: not a captioning objective")
    check_tokenizer(tokenizer, typed.spec, source)
    preprocessing = typed.preprocessing
    if preprocessing is None:  # written before the typed entry: the training YAML, ImageNet
        size, resize = _image_settings(data, source)
        preprocessing = Preprocessing(image_size=size, eval_resize=resize)
    if image_size is not None:
        preprocessing = dataclasses.replace(preprocessing, image_size=image_size, eval_resize=None)
    transform = EvalTransform(
        TransformConfig(
            image_size=preprocessing.image_size,
            eval_resize=preprocessing.eval_resize,
            mean=preprocessing.mean,
            std=preprocessing.std,
        )
    )
    return Captioner(objective, tokenizer, transform, device)


def read_coco_captions(
    path: str | os.PathLike[str],
) -> tuple[dict[int, str], dict[int, list[str]]]:
    """``({image id: file name}, {image id: [captions]})`` of a COCO captions JSON.

    A ``.jsonl`` or ``.csv`` file (``image``, ``caption`` and optional ``image_id``, as
    ``virtex-data build-lmdb`` reads them) is read with :func:`virtex_data.sources.read_captions`
    into the same two mappings.

    Raises:
        ValueError: unreadable JSON, missing ``images``/``annotations``, malformed entries or
            captions of unknown images, naming the file and the entry.
    """
    name = str(path)
    if Path(name).suffix.lower() in (".jsonl", ".csv"):
        return _read_caption_rows(name)
    try:
        data = json.loads(Path(name).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{name}: no such captions file") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{name}: not a readable JSON file ({error})") from None
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise ValueError(f"{name}: a COCO captions file needs 'images' and 'annotations'")
    files: dict[int, str] = {}
    for index, image in enumerate(data["images"]):
        try:
            files[int(image["id"])] = str(image["file_name"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{name}: images[{index}] needs 'id' and 'file_name'") from None
    references: dict[int, list[str]] = {key: [] for key in files}
    for index, annotation in enumerate(data["annotations"]):
        try:
            image_id, caption = int(annotation["image_id"]), str(annotation["caption"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                f"{name}: annotations[{index}] needs 'image_id' and 'caption'"
            ) from None
        if image_id not in references:
            raise ValueError(f"{name}: annotations[{index}] names unknown image id {image_id}")
        references[image_id].append(caption)
    without = [key for key, captions in references.items() if not captions]
    if without:
        raise ValueError(f"{name}: image id {without[0]} has no captions ({len(without)} such)")
    return files, references


def _read_caption_rows(name: str) -> tuple[dict[int, str], dict[int, list[str]]]:
    try:
        source = read_captions(name)
    except FileNotFoundError:
        raise ValueError(f"{name}: no such captions file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{name}: not readable ({error})") from None
    files: dict[int, str] = {}
    references: dict[int, list[str]] = {}
    for image in source.images:
        if image.image_id in files:
            raise ValueError(f"{name}: image_id {image.image_id} names two images")
        if not image.captions:
            raise ValueError(f"{name}: image {image.file_name!r} has no captions")
        files[image.image_id] = image.file_name
        references[image.image_id] = list(image.captions)
    return files, references


def format_scores(scores: Mapping[str, float]) -> str:
    """One line per metric, aligned."""
    width = max(len(name) for name in scores)
    return "\n".join(f"{name:<{width}}  {value:.4f}" for name, value in scores.items())
