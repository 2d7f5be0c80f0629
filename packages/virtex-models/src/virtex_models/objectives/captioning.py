"""Captioning objectives: VirTex's bicaptioning (forward + backward decoder) and forward-only."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from virtex_models import decoding
from virtex_models.compiling import compile_decoding
from virtex_models.decoding import DecoderConfig
from virtex_models.precision import resolve_bf16
from virtex_models.protocols import (
    IGNORE_INDEX,
    CaptionInputs,
    ObjectiveModule,
    ObjectiveOutput,
    TextualHead,
    VisualBackbone,
)
from virtex_models.registry import ObjectiveInfo, register
from virtex_models.vocab import VocabSpec

if TYPE_CHECKING:
    from virtex_models.config import ModelConfig

__all__ = ["CAPTIONING_TARGET", "Captioning", "caption_targets", "reverse_captions"]

#: The ``virtex_data`` target of every objective trained on plain captions.
CAPTIONING_TARGET = "captioning"


def reverse_captions(tokens: Tensor, lengths: Tensor) -> Tensor:
    """Each caption reversed within its length, padding left in place (on ``tokens``' device).

    ``[SOS] a b [EOS] pad`` becomes ``[EOS] b a [SOS] pad``.

    Args:
        tokens: ``(B, L)`` int64.
        lengths: ``(B,)`` int64.

    Returns:
        ``(B, L)`` int64.
    """
    positions = torch.arange(tokens.shape[1], device=tokens.device)[None, :]
    lengths = lengths[:, None].to(tokens.device)
    source = torch.where(positions < lengths, lengths - 1 - positions, positions)
    return tokens.gather(1, source)


def caption_targets(tokens: Tensor, lengths: Tensor, vocab: VocabSpec) -> Tensor:
    """Next-token targets ``(B, L - 1)``: ``tokens[:, 1:]`` with :data:`IGNORE_INDEX` on padding.

    Padding is found by ``lengths``, so an unknown token counts even when its id is not the pad
    id. With the original layout (``pad == unk``) the original code could not tell them apart
    and ignored every pad/unk id; we do the same there so that losses match it.
    """
    targets = tokens[:, 1:]
    positions = torch.arange(1, tokens.shape[1], device=tokens.device)[None, :]
    ignore = positions >= lengths[:, None].to(tokens.device)
    if vocab.pad_is_unk:
        ignore = ignore | (targets == vocab.pad)
    return targets.masked_fill(ignore, IGNORE_INDEX)


def _token_loss(logits: Tensor, targets: Tensor) -> Tensor:
    # Mean over counted tokens of the whole batch, in float32 even under autocast.
    return F.cross_entropy(
        logits[:, :-1].float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX
    )


class Captioning(ObjectiveModule):
    """Image captioning objective; ``bidirectional=True`` is VirTex's main model.

    The backward decoder reads each caption reversed within its length (derived on the device
    from ``tokens`` and ``lengths``); it shares the visual projection, the word/position
    embeddings and the output layer with the forward decoder and has its own transformer. The
    loss is the sum of the forward and backward token cross-entropies (mean over non-padding
    target tokens), both reported in ``components``.

    Args:
        visual: the backbone (kept for downstream tasks).
        textual: the forward head.
        vocab: vocabulary layout.
        bidirectional: add the backward decoder.
        decoder: default decoding of :meth:`generate`.
    """

    def __init__(
        self,
        visual: VisualBackbone,
        textual: TextualHead,
        vocab: VocabSpec,
        *,
        bidirectional: bool = True,
        decoder: DecoderConfig | None = None,
    ) -> None:
        super().__init__()
        if textual.vocab_size != vocab.size:
            raise ValueError(f"head vocabulary {textual.vocab_size} != VocabSpec.size {vocab.size}")
        self.visual = visual
        self.textual = textual
        self.vocab = vocab
        self.bidirectional = bidirectional
        self.decoder = decoder or DecoderConfig()
        self.backward_textual = textual.tied_copy() if bidirectional else None

    def forward(self, batch: CaptionInputs) -> ObjectiveOutput:
        """Loss of ``batch`` (``images``, ``tokens``, ``lengths``); ``logits`` are the forward
        head's ``(B, L, V)``."""
        grid = self.visual(batch.images)
        memory = self.textual.project(grid)
        tokens, lengths = batch.tokens, batch.lengths
        logits = self.textual.decode(memory, tokens, lengths)
        forward_loss = _token_loss(logits, caption_targets(tokens, lengths, self.vocab))
        components = {"forward": forward_loss.detach()}
        loss = forward_loss
        if self.backward_textual is not None:
            reversed_tokens = reverse_captions(tokens, lengths)
            backward_logits = self.backward_textual.decode(memory, reversed_tokens, lengths)
            backward_loss = _token_loss(
                backward_logits, caption_targets(reversed_tokens, lengths, self.vocab)
            )
            components["backward"] = backward_loss.detach()
            loss = loss + backward_loss
        return ObjectiveOutput(loss=loss, components=components, logits=logits)

    @torch.no_grad()
    def log_likelihood(self, images: Tensor, tokens: Tensor, lengths: Tensor) -> Tensor:
        """Summed log-probability of each caption under the forward decoder (zero-shot scoring).

        Args:
            images: ``(B, 3, H, W)``.
            tokens: ``(B, L)`` ``[SOS] ... [EOS]`` right-padded.
            lengths: ``(B,)``.

        Returns:
            ``(B,)`` float32: ``sum_t log p(tokens[t] | tokens[:t], image)`` for ``1 <= t <
            lengths``.
        """
        logits = self.textual(self.visual(images), tokens, lengths)
        log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        targets = tokens[:, 1:]
        picked = log_probs.gather(2, targets[:, :, None])[:, :, 0]
        positions = torch.arange(1, tokens.shape[1], device=tokens.device)[None, :]
        return picked.masked_fill(positions >= lengths[:, None], 0.0).sum(dim=1)

    @torch.no_grad()
    def generate(
        self,
        images: Tensor,
        *,
        mode: str | None = None,
        beam_size: int | None = None,
        max_steps: int | None = None,
        min_length: int | None = None,
        length_penalty: float | None = None,
        nucleus: float | None = None,
        temperature: float | None = None,
        generator: torch.Generator | None = None,
        visual_bf16: str | bool | None = None,
        decoder_bf16: bool | None = None,
    ) -> Tensor:
        """Captions of ``images (B, 3, H, W)`` as token ids ``(B, T)`` int64 (no ``[SOS]``).

        Arguments left at ``None`` come from ``self.decoder`` (:class:`DecoderConfig`). Passing
        ``nucleus=p`` selects nucleus sampling with top-p ``p`` unless ``mode`` says otherwise.
        Call ``eval()`` first: dropout stays active in training mode.

        Args:
            images: normalised images.
            mode: ``beam``, ``greedy``, ``nucleus``, ``legacy`` or ``legacy_nucleus`` (see
                :mod:`.decoding`).
            beam_size: beams per image (``beam``, ``legacy``).
            max_steps: most tokens.
            min_length: no ``[EOS]`` before this many tokens (not ``legacy``).
            length_penalty: final-ranking exponent for ``beam``.
            nucleus: top-p for ``nucleus`` and ``legacy_nucleus``.
            temperature: for ``nucleus``.
            generator: random source for ``nucleus`` and ``legacy_nucleus``.
            visual_bf16: ``auto``/``on``/``off`` (or a bool): the visual forward in bf16
                (:attr:`DecoderConfig.visual_bf16`).
            decoder_bf16: the decoder's products in bf16 (:attr:`DecoderConfig.decoder_bf16`).
        """
        config = self.decoder
        if mode is None:
            mode = config.mode
            if nucleus is not None and mode != "legacy_nucleus":
                mode = "nucleus"
        settings = DecoderConfig(
            mode=mode,  # type: ignore[arg-type]
            beam_size=config.beam_size if beam_size is None else beam_size,
            max_steps=config.max_steps if max_steps is None else max_steps,
            min_length=config.min_length if min_length is None else min_length,
            length_penalty=config.length_penalty if length_penalty is None else length_penalty,
            top_p=config.top_p if nucleus is None else nucleus,
            temperature=config.temperature if temperature is None else temperature,
        )
        if settings.mode not in ("beam", "greedy", "nucleus", "legacy", "legacy_nucleus"):
            raise ValueError(f"unknown decoding mode {settings.mode!r}")
        if config.compile:  # once: later calls find the compiled step installed
            compile_decoding(self, device=images.device)
        bf16_visual = resolve_bf16(
            config.visual_bf16 if visual_bf16 is None else visual_bf16, images.device
        )
        bf16_decoder = config.decoder_bf16 if decoder_bf16 is None else decoder_bf16
        grid = self.visual_grid(images, bf16=bf16_visual)
        if not bf16_decoder:  # a caller's own autocast (training-time validation) still applies
            return self._decode(grid, settings, generator)
        # One autocast context for the whole search: its weight-cast cache converts each
        # decoder weight to bf16 once, not once per token.
        with torch.autocast(images.device.type, dtype=torch.bfloat16):
            return self._decode(grid, settings, generator)

    @torch.no_grad()
    def visual_grid(self, images: Tensor, *, bf16: bool = False) -> Tensor:
        """The backbone's float32 grid of ``images (B, 3, H, W)``; ``bf16``: computed under
        bf16 autocast with ``channels_last`` inputs (convolutions in bf16, on native-bf16
        hardware about twice as fast), returned as a contiguous float32 grid."""
        if not bf16:
            return self.visual(images)
        with torch.autocast(images.device.type, dtype=torch.bfloat16):
            grid = self.visual(images.contiguous(memory_format=torch.channels_last))
        return grid.float().contiguous()

    def _decode(
        self, grid: Tensor, settings: DecoderConfig, generator: torch.Generator | None
    ) -> Tensor:
        vocab = self.vocab
        special: dict[str, Any] = {"sos": vocab.sos, "eos": vocab.eos}
        if settings.mode == "legacy":
            return decoding.legacy_beam_search(
                self.textual,
                self.textual.start(grid, beams=1),
                **special,
                beam_size=settings.beam_size,
                max_steps=settings.max_steps,
            )
        if settings.mode == "legacy_nucleus":
            return decoding.legacy_nucleus(
                self.textual,
                self.textual.start(grid),
                **special,
                top_p=settings.top_p,
                max_steps=settings.max_steps,
                generator=generator,
            )
        special["pad"] = vocab.pad
        if settings.mode == "greedy" or (settings.mode == "beam" and settings.beam_size == 1):
            return decoding.greedy(
                self.textual,
                self.textual.start(grid),
                **special,
                max_steps=settings.max_steps,
                min_length=settings.min_length,
            )
        if settings.mode == "beam":
            return decoding.beam_search(
                self.textual,
                self.textual.start(grid, beams=settings.beam_size),
                **special,
                max_steps=settings.max_steps,
                min_length=settings.min_length,
                length_penalty=settings.length_penalty,
            )
        return decoding.nucleus(
            self.textual,
            self.textual.start(grid),
            **special,
            max_steps=settings.max_steps,
            min_length=settings.min_length,
            top_p=settings.top_p,
            temperature=settings.temperature,
            generator=generator,
        )


def _build(
    config: ModelConfig, vocab: VocabSpec, num_classes: int | None, options: None
) -> Captioning:
    visual = config.visual.build()
    return Captioning(
        visual,
        config.build_textual(vocab, visual.out_channels),
        vocab,
        bidirectional=config.kind == BICAPTIONING.name,
        decoder=dataclasses.replace(config.decoder),
    )


#: VirTex's main model (the original's ``MODEL.NAME: virtex``).
BICAPTIONING = register(
    ObjectiveInfo(
        name="bicaptioning",
        build=_build,
        target=CAPTIONING_TARGET,
        captions=True,
        original_names=("virtex", "bicaptioning"),
    )
)
#: Forward captioning only.
FORWARD_CAPTIONING = register(
    ObjectiveInfo(
        name=CAPTIONING_TARGET,
        build=_build,
        target=CAPTIONING_TARGET,
        captions=True,
        original_names=(CAPTIONING_TARGET,),
    )
)
