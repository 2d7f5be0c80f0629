"""CapPa: captioning with parallel prediction (Tschannen et al., "Image Captioners Are Scalable
Vision Learners Too", NeurIPS 2023).

The forward captioning decoder, trained on a mix of two tasks chosen per example: the usual
autoregressive next-token prediction (causal self-attention, teacher forcing), and *parallel
prediction*, where every decoder input is ``[MASK]``, self-attention has no causal mask and the
decoder predicts every caption token at once from the image alone. The paper trains 75% of the
examples in parallel mode (``parallel_fraction``); parallel prediction forces the decoder to
rely on the image instead of the caption prefix, which makes the visual features better. It
decodes autoregressively, so captioning, zero-shot scoring and every decoder of
:mod:`virtex_models.decoding` work as for ``captioning``.
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from virtex_models.decoding import DecoderConfig
from virtex_models.objectives.captioning import CAPTIONING_TARGET, Captioning, caption_targets
from virtex_models.protocols import (
    IGNORE_INDEX,
    CaptionInputs,
    ObjectiveOutput,
    TextualHead,
    VisualBackbone,
)
from virtex_models.registry import ObjectiveInfo, register
from virtex_models.vocab import VocabSpec

if TYPE_CHECKING:
    from virtex_models.config import ModelConfig

__all__ = ["CapPa", "CapPaOptions", "parallel_rows"]


@dataclass(kw_only=True, slots=True)
class CapPaOptions:
    """``model.options`` of ``kind: cappa``.

    Attributes:
        parallel_fraction: probability that an example is trained in parallel mode (the
            paper's 0.75); 0 is plain forward captioning, 1 parallel prediction only.
    """

    parallel_fraction: float = 0.75

    def __post_init__(self) -> None:
        if not 0.0 <= self.parallel_fraction <= 1.0:
            raise ValueError(f"parallel_fraction must be in [0, 1], got {self.parallel_fraction}")


def parallel_rows(batch: CaptionInputs, fraction: float) -> Tensor:
    """Which examples of ``batch`` are trained in parallel mode: ``(B,)`` bool on the CPU.

    Each example is parallel with probability ``fraction``, drawn from a generator seeded with
    the batch's image ids and tokens. The choice is thus a function of the batch, which the
    trainer's seeded sampler determines: runs, resumed runs and validation passes repeat it, and
    drawing it takes nothing from the global random state (dropout draws stay those of
    ``captioning``). A shuffled epoch makes new batches and so new choices.
    """
    rows = len(batch.image_ids)
    if fraction <= 0.0 or fraction >= 1.0:  # no draw needed (rand() < 1 always holds)
        return torch.full((rows,), fraction >= 1.0, dtype=torch.bool)
    content = torch.cat([batch.image_ids.reshape(-1), batch.tokens.reshape(-1)]).to("cpu")
    seed = zlib.crc32(content.to(torch.int64).numpy().astype("<i8").tobytes())
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(rows, generator=generator) < fraction


class CapPa(Captioning):
    """Forward captioning trained on a per-example mix of autoregressive and parallel
    prediction.

    Both modes predict the next-token targets of ``captioning`` (position ``t`` predicts token
    ``t + 1``; padding is ignored). Autoregressive rows read the caption with a causal mask;
    parallel rows read ``L`` ``[MASK]`` tokens (padding positions included, so the input does
    not reveal the caption's length) with no mask at all. The loss is the mean cross-entropy
    over the non-padding target tokens of the whole batch, whatever their mode, so that
    ``parallel_fraction=0`` is exactly ``captioning``'s loss; ``components`` holds the mean of
    each mode present in the batch.

    Args:
        visual: the backbone.
        textual: the forward head (also used for decoding).
        vocab: vocabulary layout (``mask`` is the parallel input).
        parallel_fraction: probability of parallel mode per example.
        decoder: default decoding of :meth:`generate`.
    """

    def __init__(
        self,
        visual: VisualBackbone,
        textual: TextualHead,
        vocab: VocabSpec,
        *,
        parallel_fraction: float = 0.75,
        decoder: DecoderConfig | None = None,
    ) -> None:
        super().__init__(visual, textual, vocab, bidirectional=False, decoder=decoder)
        self.parallel_fraction = CapPaOptions(parallel_fraction=parallel_fraction).parallel_fraction

    def parallel_logits(self, memory: Tensor, tokens: Tensor) -> Tensor:
        """Parallel-mode logits ``(N, L, V)``: ``L`` ``[MASK]`` inputs over ``memory (N, S, D)``,
        every position attending to every other."""
        masks = torch.full_like(tokens, self.vocab.mask)
        everything = torch.full_like(tokens[:, 0], tokens.shape[1])
        return self.textual.decode(memory, masks, everything, causal=False)

    def forward(self, batch: CaptionInputs) -> ObjectiveOutput:
        """Loss of ``batch`` (``images``, ``tokens``, ``lengths``); ``logits (B, L, V)`` of each
        row in its mode."""
        memory = self.textual.project(self.visual(batch.images))
        tokens, lengths = batch.tokens, batch.lengths
        parallel = parallel_rows(batch, self.parallel_fraction)
        count = int(parallel.sum())
        if count == 0:
            logits = self.textual.decode(memory, tokens, lengths)
        elif count == len(parallel):
            logits = self.parallel_logits(memory, tokens)
        else:
            on_device = parallel.to(tokens.device)
            par = on_device.nonzero().flatten()
            seq = (~on_device).nonzero().flatten()
            seq_logits = self.textual.decode(memory[seq], tokens[seq], lengths[seq])
            par_logits = self.parallel_logits(memory[par], tokens[par])
            logits = seq_logits.new_zeros(len(parallel), *seq_logits.shape[1:])
            logits = logits.index_copy(0, seq, seq_logits).index_copy(0, par, par_logits)
        targets = caption_targets(tokens, lengths, self.vocab)
        flat_logits = logits[:, :-1].float().flatten(0, 1)
        loss = F.cross_entropy(flat_logits, targets.flatten(), ignore_index=IGNORE_INDEX)
        components = {}
        for name, rows in (("autoregressive", ~parallel), ("parallel", parallel)):
            if rows.any():
                picked = rows.to(tokens.device)
                components[name] = F.cross_entropy(
                    logits[picked, :-1].detach().float().flatten(0, 1),
                    targets[picked].flatten(),
                    ignore_index=IGNORE_INDEX,
                )
        return ObjectiveOutput(loss=loss, components=components, logits=logits)


def _build(
    config: ModelConfig, vocab: VocabSpec, num_classes: int | None, options: CapPaOptions
) -> CapPa:
    visual = config.visual.build()
    return CapPa(
        visual,
        config.build_textual(vocab, visual.out_channels),
        vocab,
        parallel_fraction=options.parallel_fraction,
        decoder=dataclasses.replace(config.decoder),
    )


CAPPA = register(
    ObjectiveInfo(
        name="cappa", build=_build, target=CAPTIONING_TARGET, captions=True, options=CapPaOptions
    )
)
