"""The typed seams of virtex-models: what it consumes and what it promises.

``virtex_models`` never imports ``virtex_data``. It declares what it needs from a batch as
Protocols (``CaptionInputs`` and friends); the data package's batches satisfy them structurally,
and ``virtex_train`` / ``virtex_eval`` wire the two while mypy checks the wiring. Token ids and
special-token ids reach this package as plain ints.

All Protocols are ``runtime_checkable`` so that implementations assert conformance in their tests
(``isinstance`` checks member presence, not signatures; mypy checks signatures).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

__all__ = [
    "IGNORE_INDEX",
    "CaptionInputs",
    "DecodeState",
    "MaskedLMInputs",
    "MultilabelInputs",
    "Objective",
    "ObjectiveModule",
    "ObjectiveOutput",
    "TextualHead",
    "TokenClassificationInputs",
    "VisualBackbone",
]

#: Label value that no loss counts (PyTorch's cross-entropy default); ``mlm_labels`` use it.
IGNORE_INDEX = -100


# --------------------------------------------------------------------------------------------
# Inputs: what objectives read from a batch.
# --------------------------------------------------------------------------------------------
@runtime_checkable
class CaptionInputs(Protocol):
    """A batch of images with one caption each.

    Attributes:
        image_ids: ``(B,)`` int64.
        images: ``(B, 3, H, W)`` float32 (or the autocast dtype), normalised.
        tokens: ``(B, L)`` int64, ``[SOS] ... [EOS]`` right-padded with the pad id.
        lengths: ``(B,)`` int64, non-pad tokens per row, ``[SOS]`` and ``[EOS]`` included.
    """

    @property
    def image_ids(self) -> Tensor: ...
    @property
    def images(self) -> Tensor: ...
    @property
    def tokens(self) -> Tensor: ...
    @property
    def lengths(self) -> Tensor: ...


@runtime_checkable
class MaskedLMInputs(CaptionInputs, Protocol):
    """Captions with masked tokens; ``mlm_labels (B, L)`` int64 is the original token at masked
    positions and :data:`IGNORE_INDEX` elsewhere."""

    @property
    def mlm_labels(self) -> Tensor: ...


@runtime_checkable
class TokenClassificationInputs(CaptionInputs, Protocol):
    """Captions with their bag of tokens: ``token_labels (B, V)`` float multi-hot."""

    @property
    def token_labels(self) -> Tensor: ...


@runtime_checkable
class MultilabelInputs(CaptionInputs, Protocol):
    """Images with category labels: ``multilabels (B, C)`` float multi-hot."""

    @property
    def multilabels(self) -> Tensor: ...


# --------------------------------------------------------------------------------------------
# Components.
# --------------------------------------------------------------------------------------------
@runtime_checkable
class VisualBackbone(Protocol):
    """A network that maps images to a feature grid: a CNN's last stage, or a ViT's patch tokens.

    Contract:
        ``__call__(images)`` takes ``(B, 3, H, W)`` float images normalised with ImageNet
        mean/std and returns ``(B, out_channels, H // stride, W // stride)`` (rounded as the
        network rounds; ``(B, 2048, 7, 7)`` for ResNet-50 at 224 px, ``(B, 768, 14, 14)`` for
        ViT-B/16). The module owns its
        parameters and BatchNorm statistics. It accepts ``channels_last`` inputs.

    Attributes:
        out_channels: channels ``C`` of the returned grid.
        stride: total down-sampling factor of the returned grid (32 for ResNets).
    """

    @property
    def out_channels(self) -> int: ...
    @property
    def stride(self) -> int: ...
    def __call__(self, images: Tensor) -> Tensor: ...


@dataclass
class DecodeState:
    """What a :class:`TextualHead` carries between incremental decoding steps.

    Decoders treat it as opaque except for :meth:`select` (beam search keeps the surviving
    beams) and :meth:`restart`. Heads own the meaning of ``cache`` and ``shared``.

    Rows: a state decodes ``N = B * beams`` hypotheses, row ``i`` belonging to image
    ``i // beams``. Per-image tensors (``memory``, ``shared``) have ``B`` rows and are never
    copied per beam or per step; per-hypothesis tensors (``cache``) have ``N`` rows.

    Attributes:
        memory: ``(B, S, D)`` projected visual features, computed once per image by ``start``.
        cache: per-hypothesis tensors (e.g. self-attention keys/values of the tokens consumed so
            far), each with the ``N`` rows in dimension 0; :meth:`select` reorders them.
        shared: per-image tensors (e.g. cross-attention keys/values of ``memory``), ``B`` rows in
            dimension 0, shared by the image's beams; :meth:`select` leaves them alone.
        length: number of tokens already consumed (the next token's position).
        beams: hypotheses per image.
    """

    memory: Tensor
    cache: dict[str, Tensor] = field(default_factory=dict)
    length: int = 0
    beams: int = 1
    shared: dict[str, Tensor] = field(default_factory=dict)

    @property
    def hypotheses(self) -> int:
        """``N = B * beams``, the number of hypotheses."""
        return int(self.memory.shape[0]) * self.beams

    def select(self, rows: Tensor) -> DecodeState:
        """A state whose hypothesis ``i`` is hypothesis ``rows[i]`` of this one.

        Args:
            rows: ``(N',)`` int64 with ``N' = B * beams'``; ``rows[i]`` must belong to image
                ``i // beams'`` (beams never move between images), which keeps ``memory`` and
                ``shared`` valid without copying them.
        """
        images = int(self.memory.shape[0])
        if rows.dim() != 1 or rows.shape[0] % images:
            raise ValueError(f"rows must be (B * beams,) with B={images}, got {tuple(rows.shape)}")
        return DecodeState(
            memory=self.memory,
            cache={key: value.index_select(0, rows) for key, value in self.cache.items()},
            length=self.length,
            beams=int(rows.shape[0]) // images,
            shared=self.shared,
        )

    def restart(self, beams: int) -> DecodeState:
        """A state that has consumed no token, with ``beams`` hypotheses per image, reusing the
        per-image projections (``memory``, ``shared``) of this one."""
        return DecodeState(memory=self.memory, cache={}, length=0, beams=beams, shared=self.shared)


@runtime_checkable
class TextualHead(Protocol):
    """A caption decoder over visual features: what objectives and decoders call.

    Training: ``__call__(visual, tokens, lengths, causal)`` with ``visual (B, C, h, w)`` from a
    :class:`VisualBackbone`, ``tokens (B, L)`` int64 and ``lengths (B,)`` int64 returns logits
    ``(B, L, V)``. With ``causal=True`` position ``t`` sees tokens ``<= t`` (it predicts token
    ``t + 1``); with ``causal=False`` every position sees every non-padding position (padding
    keys masked by ``lengths``). ``__call__`` is ``decode(project(visual), ...)``: objectives
    that run several decoders over one image project it once (``project``) and call ``decode``.

    Decoding: ``start(visual, beams)`` projects the image features once and returns a
    :class:`DecodeState` with ``B * beams`` hypotheses; ``step(state, last_tokens)`` takes
    ``last_tokens (B * beams,)`` int64, appends them to the key/value cache and returns
    ``(logits (B * beams, V), new_state)`` for the next token.

    Attributes:
        vocab_size: ``V``.
        max_length: longest token sequence the positional embedding supports.
    """

    @property
    def vocab_size(self) -> int: ...
    @property
    def max_length(self) -> int: ...
    def __call__(
        self, visual: Tensor, tokens: Tensor, lengths: Tensor, causal: bool = True
    ) -> Tensor: ...
    def project(self, visual: Tensor) -> Tensor:
        """``(B, C, h, w)`` grid -> ``(B, h * w, D)`` memory."""
        ...

    def decode(
        self, memory: Tensor, tokens: Tensor, lengths: Tensor, causal: bool = True
    ) -> Tensor:
        """Logits ``(B, L, V)`` of ``tokens (B, L)`` over a projected ``memory (B, S, D)``."""
        ...

    def tied_copy(self) -> TextualHead:
        """A head with its own transformer sharing this one's projection, embeddings and output
        layer (bicaptioning's backward decoder)."""
        ...

    def start(self, visual: Tensor, beams: int = 1) -> DecodeState: ...
    def step(self, state: DecodeState, last_tokens: Tensor) -> tuple[Tensor, DecodeState]: ...


# --------------------------------------------------------------------------------------------
# Objectives.
# --------------------------------------------------------------------------------------------
@dataclass
class ObjectiveOutput:
    """What every objective returns; the trainer sees nothing else.

    Attributes:
        loss: scalar float tensor to minimise (the sum of the components).
        components: named scalar parts of the loss, detached or not (e.g. ``forward``,
            ``backward`` captioning losses), for logging.
        logits: the main prediction, e.g. ``(B, L, V)`` caption logits or ``(B, C)`` class
            logits; ``None`` when an objective has nothing useful to return.
    """

    loss: Tensor
    components: dict[str, Tensor] = field(default_factory=dict)
    logits: Tensor | None = None


@runtime_checkable
class Objective(Protocol):
    """An ``nn.Module`` that owns a backbone, its head(s) and a loss.

    Contract: ``__call__(batch)`` takes a batch satisfying the objective's input Protocol (e.g.
    :class:`CaptionInputs`) and returns an :class:`ObjectiveOutput`. ``visual`` is the backbone
    that downstream tasks keep (the trainer gives it its own learning rate).
    """

    @property
    def visual(self) -> VisualBackbone: ...
    def __call__(self, batch: CaptionInputs) -> ObjectiveOutput: ...


class ObjectiveModule(nn.Module):
    """Base class of the objectives: an ``nn.Module`` that satisfies :class:`Objective`.

    What ``ModelConfig.build`` returns: the trainer needs both the module (parameters, devices,
    state dicts) and the :class:`Objective` contract, and Python has no intersection type.
    Subclasses set ``self.visual`` and implement ``forward(batch) -> ObjectiveOutput``.
    """

    visual: VisualBackbone
    # nn.Module types __call__ as returning Any; objectives promise an ObjectiveOutput.
    __call__: Callable[..., ObjectiveOutput]

    def forward(self, batch: Any) -> ObjectiveOutput:  # pragma: no cover - abstract
        raise NotImplementedError
