"""Caption decoders over a :class:`~virtex_models.protocols.TextualHead`'s incremental API.

Every decoder starts from a :class:`DecodeState` made by ``head.start`` (the image grid is
projected once per image; beams share it) and calls ``head.step`` once per generated token, so
each step costs one token's worth of work thanks to the head's key/value cache.

All decoders return token ids ``(B, T)`` int64 without the leading ``[SOS]``, ``T`` being the
number of steps actually run (decoding stops early once every row has ended).

- :func:`greedy`: arg-max, rows padded with ``pad`` after their ``[EOS]``.
- :func:`beam_search`: ``beam_size`` hypotheses per image ranked by summed log-probability,
  optional length penalty for the final choice, rows padded with ``pad`` after ``[EOS]``.
- :func:`nucleus`: top-p sampling with temperature (seedable ``torch.Generator``).
- :func:`legacy_beam_search`: the decoder of the original VirTex code, reproduced exactly (see its
  docstring); outputs are padded with ``[EOS]`` as the original's were.
- :func:`legacy_nucleus`: the original's nucleus sampling (its rule that forbids repeating the
  previous token included), the default of imported configs that ask for nucleus sampling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from virtex_models.protocols import DecodeState, TextualHead

__all__ = [
    "DecoderConfig",
    "beam_search",
    "greedy",
    "legacy_beam_search",
    "legacy_nucleus",
    "nucleus",
]

#: Log-probability the original decoder gives to a beam's own previous token.
LEGACY_REPEAT_LOGPROB = -10000.0
#: Logit the original nucleus sampler gives to removed tokens and to the previous token.
LEGACY_NUCLEUS_REMOVED = -1e12


@dataclass(kw_only=True, slots=True)
class DecoderConfig:
    """Default decoding of a captioning objective (``generate`` arguments override it).

    Attributes:
        mode: ``beam`` (default), ``greedy``, ``nucleus``, ``legacy`` (the original VirTex
            beam search, chosen for imported original checkpoints) or ``legacy_nucleus`` (the
            original's nucleus sampling, for imported configs that sample).
        beam_size: hypotheses per image for ``beam`` / ``legacy``.
        max_steps: most tokens to generate.
        min_length: ``[EOS]`` is forbidden before this many tokens (not in ``legacy``).
        length_penalty: ``alpha`` >= 0; the final beam maximises ``score / length ** alpha``
            (0 = plain summed log-probability).
        top_p: nucleus size for ``nucleus`` and ``legacy_nucleus``.
        temperature: softmax temperature for ``nucleus``.
        compile: run the per-token step through ``torch.compile``
            (:func:`virtex_models.compiling.compile_decoding`; eager with one warning where
            compiling is not possible).
        visual_bf16: the visual forward under bf16 autocast with ``channels_last`` inputs:
            ``off`` (default: captions bit-identical on every machine), ``on``, or ``auto``
            (on where the device has native bf16, :func:`virtex_models.precision.native_bf16`).
            About 2x faster on such CPUs; captions change slightly (see the package README).
        decoder_bf16: the decoder's matrix products in bf16 too (log-probabilities, scores and
            the search stay float32); about 2x faster per token, captions change more.
    """

    mode: Literal["beam", "greedy", "nucleus", "legacy", "legacy_nucleus"] = "beam"
    beam_size: int = 5
    max_steps: int = 30
    min_length: int = 0
    length_penalty: float = 0.0
    top_p: float = 0.9
    temperature: float = 1.0
    compile: bool = False
    visual_bf16: Literal["auto", "on", "off"] = "off"
    decoder_bf16: bool = False

    def __post_init__(self) -> None:
        if self.visual_bf16 not in ("auto", "on", "off"):
            raise ValueError(
                f"DecoderConfig.visual_bf16 must be auto, on or off, got {self.visual_bf16!r}"
            )
        if self.beam_size < 1:
            raise ValueError(f"DecoderConfig.beam_size must be >= 1, got {self.beam_size}")
        if self.max_steps < 1:
            raise ValueError(f"DecoderConfig.max_steps must be >= 1, got {self.max_steps}")
        if self.min_length < 0 or self.length_penalty < 0:
            raise ValueError("DecoderConfig.min_length and length_penalty must be >= 0")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"DecoderConfig.top_p must be in (0, 1], got {self.top_p}")
        if self.temperature <= 0:
            raise ValueError(f"DecoderConfig.temperature must be > 0, got {self.temperature}")


def _log_probs(logits: Tensor) -> Tensor:
    return torch.log_softmax(logits.float(), dim=-1)


def _check_steps(head: TextualHead, max_steps: int, state: DecodeState) -> None:
    # Step t feeds position state.length + t; the last step feeds position max_steps - 1.
    if state.length + max_steps > head.max_length:
        raise ValueError(
            f"max_steps={max_steps} needs {state.length + max_steps} positions but the head "
            f"has {head.max_length}"
        )


@torch.no_grad()
def greedy(
    head: TextualHead,
    state: DecodeState,
    *,
    sos: int,
    eos: int,
    pad: int,
    max_steps: int,
    min_length: int = 0,
) -> Tensor:
    """Arg-max decoding.

    Args:
        head: the textual head.
        state: from ``head.start(visual, beams=1)`` (``B`` hypotheses).
        sos, eos, pad: special ids.
        max_steps: most tokens to generate.
        min_length: ``[EOS]`` is forbidden for the first ``min_length`` tokens.

    Returns:
        ``(B, T)`` int64, ``pad`` after each row's ``[EOS]``.
    """
    _check_steps(head, max_steps, state)
    rows = state.hypotheses
    device = state.memory.device
    last = torch.full((rows,), sos, dtype=torch.long, device=device)
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    outputs: list[Tensor] = []
    for step in range(max_steps):
        logits, state = head.step(state, last)
        logits = logits.float()
        if step < min_length:
            logits[:, eos] = float("-inf")
        token = logits.argmax(dim=-1)
        token = torch.where(finished, torch.full_like(token, pad), token)
        outputs.append(token)
        finished = finished | (token == eos)
        last = token
        if bool(finished.all()):
            break
    return torch.stack(outputs, dim=1)


@torch.no_grad()
def beam_search(
    head: TextualHead,
    state: DecodeState,
    *,
    sos: int,
    eos: int,
    pad: int,
    max_steps: int,
    min_length: int = 0,
    length_penalty: float = 0.0,
) -> Tensor:
    """Beam search over summed log-probabilities.

    All beams of an image start identical; only the first one's candidates are used at the first
    step. A hypothesis that emitted ``[EOS]`` is finished: it keeps its score and is extended
    with ``pad`` at no cost while it competes with the live ones. The search stops when every
    hypothesis is finished or after ``max_steps``; each image then returns the hypothesis with the
    best ``score / length ** length_penalty`` (``length`` counts tokens up to ``[EOS]``).

    Args:
        head: the textual head.
        state: from ``head.start(visual, beams=beam_size)``.
        sos, eos, pad: special ids.
        max_steps: most tokens to generate.
        min_length: ``[EOS]`` is forbidden for the first ``min_length`` tokens.
        length_penalty: ``alpha`` of the final ranking (0: none).

    Returns:
        ``(B, T)`` int64, ``pad`` after each row's ``[EOS]``.
    """
    _check_steps(head, max_steps, state)
    beams = state.beams
    rows = state.hypotheses
    images = rows // beams
    device = state.memory.device
    scores = torch.zeros(images, beams, device=device)
    scores[:, 1:] = float("-inf")
    last = torch.full((rows,), sos, dtype=torch.long, device=device)
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    sequences = torch.empty(rows, 0, dtype=torch.long, device=device)
    offsets = (torch.arange(images, device=device) * beams)[:, None]
    frozen = torch.full((head.vocab_size,), float("-inf"), device=device)
    frozen[pad] = 0.0
    for step in range(max_steps):
        logits, state = head.step(state, last)
        log_probs = _log_probs(logits)
        vocab = log_probs.shape[-1]
        if step < min_length:
            log_probs[:, eos] = float("-inf")
        # A finished hypothesis can only be extended by pad, at no cost (rows rewritten in
        # place, and only once some hypothesis has finished).
        if bool(finished.any()):
            log_probs[finished] = frozen
        candidates = (scores.reshape(rows, 1) + log_probs).reshape(images, beams * vocab)
        scores, chosen = candidates.topk(beams, dim=-1)
        parents = (offsets + torch.div(chosen, vocab, rounding_mode="floor")).reshape(rows)
        token = (chosen % vocab).reshape(rows)
        sequences = torch.cat([sequences.index_select(0, parents), token[:, None]], dim=1)
        finished = finished.index_select(0, parents) | (token == eos)
        state = state.select(parents)
        last = token
        if bool(finished.all()):
            break
    ranking = scores
    if length_penalty > 0:
        is_eos = sequences == eos
        ended = is_eos.any(dim=1)
        lengths = torch.where(ended, is_eos.float().argmax(dim=1) + 1, sequences.shape[1])
        ranking = scores / lengths.reshape(images, beams).float() ** length_penalty
    best = offsets[:, 0] + ranking.argmax(dim=-1)
    return sequences.index_select(0, best)


@torch.no_grad()
def nucleus(
    head: TextualHead,
    state: DecodeState,
    *,
    sos: int,
    eos: int,
    pad: int,
    max_steps: int,
    min_length: int = 0,
    top_p: float = 0.9,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Nucleus (top-p) sampling.

    At each step the logits are divided by ``temperature``, the smallest set of most likely
    tokens whose probability reaches ``top_p`` is kept (at least one), and one token is drawn
    from it with ``torch.multinomial(..., generator=generator)`` (one draw per row and step,
    finished rows included, so a seeded generator gives reproducible captions).

    Args:
        head: the textual head.
        state: from ``head.start(visual, beams=1)``.
        sos, eos, pad: special ids.
        max_steps: most tokens to generate.
        min_length: ``[EOS]`` is forbidden for the first ``min_length`` tokens.
        top_p: nucleus size in ``(0, 1]``.
        temperature: softmax temperature ``> 0``.
        generator: random source (``None``: the global one).

    Returns:
        ``(B, T)`` int64, ``pad`` after each row's ``[EOS]``.
    """
    _check_steps(head, max_steps, state)
    rows = state.hypotheses
    device = state.memory.device
    last = torch.full((rows,), sos, dtype=torch.long, device=device)
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    outputs: list[Tensor] = []
    for step in range(max_steps):
        logits, state = head.step(state, last)
        logits = logits.float() / temperature
        if step < min_length:
            logits[:, eos] = float("-inf")
        probs = torch.softmax(logits, dim=-1)
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Keep a token while the mass before it is below top_p (the first one always).
        keep = (sorted_probs.cumsum(dim=-1) - sorted_probs) < top_p
        sorted_probs = sorted_probs * keep
        drawn = torch.multinomial(sorted_probs, 1, generator=generator)
        token = order.gather(1, drawn)[:, 0]
        token = torch.where(finished, torch.full_like(token, pad), token)
        outputs.append(token)
        finished = finished | (token == eos)
        last = token
        if bool(finished.all()):
            break
    return torch.stack(outputs, dim=1)


@torch.no_grad()
def legacy_beam_search(
    head: TextualHead, state: DecodeState, *, sos: int, eos: int, beam_size: int, max_steps: int
) -> Tensor:
    """The beam search of the original VirTex code, for captions identical to the original's.

    Semantics (which differ from :func:`beam_search` on purpose):

    - step 1 feeds ``[SOS]`` and keeps the ``beam_size`` most likely first tokens;
    - from step 2 on, the model reads only the generated tokens, without ``[SOS]``: with ``t``
      tokens generated they sit at positions ``0 .. t - 1`` (the cache restarts after step 1);
    - from step 2 on, each beam's own previous token gets log-probability -10000 (no immediate
      repeat), then a beam that ended in ``[EOS]`` is finished: it can only be extended by
      ``[EOS]`` at no cost (its score is frozen);
    - each beam proposes its top 2 tokens and the best ``beam_size`` of the ``2 x beam_size``
      candidates survive; no length normalisation;
    - the search stops when every beam of every image ends in ``[EOS]`` (or after
      ``max_steps`` tokens); the best beam is returned, padded with ``[EOS]``. The output has no
      ``[SOS]`` prefix (a generated token may itself be ``[SOS]``).

    Args:
        head: the textual head.
        state: from ``head.start(visual, beams=1)``; it is restarted with ``beam_size`` beams
            after the first step (the image projection is reused).
        sos, eos: special ids.
        beam_size: beams per image.
        max_steps: most tokens to generate.

    Returns:
        ``(B, T)`` int64.
    """
    if state.beams != 1 or state.length != 0:
        raise ValueError("legacy_beam_search needs a fresh state with beams=1")
    # Step 1 uses position 0; from step 2, t generated tokens use positions 0..t-1 (t < max_steps).
    _check_steps(head, max(1, max_steps - 1), state)
    images = state.hypotheses
    rows = images * beam_size
    device = state.memory.device
    first = torch.full((images,), sos, dtype=torch.long, device=device)
    logits, _ = head.step(state, first)
    scores, token = _log_probs(logits).topk(beam_size, dim=-1)  # (B, beams)
    last = token.reshape(rows)
    sequences = last[:, None]
    state = state.restart(beam_size)
    offsets = (torch.arange(images, device=device) * beam_size)[:, None]
    arange_rows = torch.arange(rows, device=device)
    after_end = torch.full((head.vocab_size,), float("-inf"), device=device)
    after_end[eos] = 0.0
    for _ in range(max_steps - 1):
        if bool((last == eos).all()):
            break
        logits, state = head.step(state, last)
        log_probs = _log_probs(logits)
        log_probs[arange_rows, last] = LEGACY_REPEAT_LOGPROB
        ended = last == eos
        if bool(ended.any()):
            log_probs[ended] = after_end
        top_log_probs, top_tokens = log_probs.topk(2, dim=-1)  # (N, 2)
        candidates = (scores.reshape(rows, 1) + top_log_probs).reshape(images, 2 * beam_size)
        scores, chosen = candidates.topk(beam_size, dim=-1)
        parents = (offsets + torch.div(chosen, 2, rounding_mode="floor")).reshape(rows)
        last = top_tokens.reshape(images, 2 * beam_size).gather(1, chosen).reshape(rows)
        sequences = torch.cat([sequences.index_select(0, parents), last[:, None]], dim=1)
        state = state.select(parents)
    best = offsets[:, 0] + scores.argmax(dim=-1)
    return sequences.index_select(0, best)


@torch.no_grad()
def legacy_nucleus(
    head: TextualHead,
    state: DecodeState,
    *,
    sos: int,
    eos: int,
    top_p: float,
    max_steps: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The nucleus sampling of the original VirTex code, for the captions it would sample.

    At each step (the model reads ``[SOS]`` and every generated token): the logits are sorted,
    a token is removed when the probability mass of the tokens before it exceeds ``top_p``
    (the most likely one always stays), then the previous token (``[SOS]`` at the first step)
    is removed too: removed tokens get logit -1e12. One token per row is drawn from the
    softmax with ``torch.multinomial`` (no temperature). Rows that ended in ``[EOS]`` keep
    getting ``[EOS]``; decoding stops when every row has. If the previous token was the whole
    nucleus every logit is -1e12 and the draw is uniform over the vocabulary, as in the
    original.

    Args:
        head: the textual head.
        state: from ``head.start(visual, beams=1)``.
        sos, eos: special ids.
        top_p: nucleus size.
        max_steps: most tokens.
        generator: random source (``None``: the global one, as the original used).

    Returns:
        ``(B, T)`` int64, ``[EOS]`` after each row's ``[EOS]``.
    """
    _check_steps(head, max_steps, state)
    rows = state.hypotheses
    device = state.memory.device
    last = torch.full((rows,), sos, dtype=torch.long, device=device)
    arange_rows = torch.arange(rows, device=device)
    outputs: list[Tensor] = []
    for _ in range(max_steps):
        if bool((last == eos).all()):
            break
        logits, state = head.step(state, last)
        logits = logits.float()
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        before = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        remove_sorted = torch.zeros_like(before, dtype=torch.bool)
        remove_sorted[:, 1:] = before[:, :-1] > top_p
        remove = torch.zeros_like(remove_sorted).scatter(1, order, remove_sorted)
        logits = logits.masked_fill(remove, LEGACY_NUCLEUS_REMOVED)
        logits[arange_rows, last] = LEGACY_NUCLEUS_REMOVED
        drawn = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)[:, 0]
        token = torch.where(last == eos, torch.full_like(drawn, eos), drawn)
        outputs.append(token)
        last = token
    if not outputs:  # pragma: no cover - max_steps >= 1 and [SOS] != [EOS]
        return torch.empty(rows, 0, dtype=torch.long, device=device)
    return torch.stack(outputs, dim=1)
