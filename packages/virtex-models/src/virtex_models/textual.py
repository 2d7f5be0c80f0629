"""Textual heads: the Transformer caption decoder (with a KV cache) and a linear head.

Parameter names follow PyTorch's ``nn.TransformerDecoderLayer`` (``self_attn.in_proj_weight``,
``multihead_attn.*``, ``linear1``, ``linear2``, ``norm1..3``) and the original VirTex head
(``visual_projection``, ``embedding.words``, ``embedding.positions``, ``embedding.layer_norm``,
``transformer.layers.N``, ``transformer.norm`` for pre-norm, ``output``), so importing original
checkpoints is a prefix rename. Attention runs through ``F.scaled_dot_product_attention``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from virtex_models.protocols import DecodeState

__all__ = [
    "Attention",
    "DecoderLayer",
    "DecoderStack",
    "LinearHead",
    "TextualConfig",
    "TransformerTextualHead",
    "WordAndPositionEmbedding",
]

#: LayerNorm epsilon of the embedding (the original VirTex value) and of the decoder layers.
EMBEDDING_NORM_EPS = 1e-8
LAYER_NORM_EPS = 1e-5


@dataclass(kw_only=True, slots=True)
class TextualConfig:
    """Architecture of :class:`TransformerTextualHead`.

    Attributes:
        layers: decoder layers ``L``.
        width: hidden size ``H`` (embeddings, attention).
        heads: attention heads ``A`` (``width`` must be divisible by it).
        ffn: feed-forward hidden size ``F``.
        norm_first: pre-norm layers (``True``) or post-norm (``False``, the paper's default).
        dropout: dropout of embeddings, attention weights and residual branches.
        max_length: longest token sequence (size of the positional embedding).
        final_norm: a LayerNorm after the last pre-norm layer (the GPT-2 form; ignored for
            post-norm). The original VirTex's pre-norm head had none: its imported configs set
            ``False``.
    """

    layers: int = 1
    width: int = 2048
    heads: int = 32
    ffn: int = 8192
    norm_first: bool = False
    dropout: float = 0.1
    max_length: int = 30
    final_norm: bool = True

    def __post_init__(self) -> None:
        for name in ("layers", "width", "heads", "ffn", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"TextualConfig.{name} must be positive, got {getattr(self, name)}"
                )
        if self.width % self.heads:
            raise ValueError(
                f"TextualConfig.width={self.width} is not divisible by heads={self.heads}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"TextualConfig.dropout must be in [0, 1), got {self.dropout}")


class WordAndPositionEmbedding(nn.Module):
    """Word + learned position embedding, then LayerNorm (eps 1e-8) and dropout; positions
    holding the pad id give zero vectors.

    Zeroing after the LayerNorm is the original VirTex's rule: its padding rows would otherwise
    become the normalised position embedding. With the original vocabulary (pad = unk = 0) it
    also makes every ``[UNK]`` a zero vector, in captions and in generated text alike, which is
    what original checkpoints were trained with.

    Args:
        vocab_size: ``V``.
        width: ``D``.
        max_length: number of positions.
        padding_idx: the pad id, whose embedding row is zero and receives no gradient.
        dropout: dropout probability.
    """

    def __init__(
        self, vocab_size: int, width: int, max_length: int, padding_idx: int, dropout: float
    ) -> None:
        super().__init__()
        self.words = nn.Embedding(vocab_size, width, padding_idx=padding_idx)
        self.positions = nn.Embedding(max_length, width)
        self.layer_norm = nn.LayerNorm(width, eps=EMBEDDING_NORM_EPS)
        self.dropout = nn.Dropout(dropout)
        self.padding_idx = padding_idx

    def forward(self, tokens: Tensor, offset: int = 0) -> Tensor:
        """``tokens (N, L)`` at positions ``offset .. offset + L - 1`` -> ``(N, L, D)``."""
        length = tokens.shape[1]
        if offset + length > self.positions.num_embeddings:
            raise ValueError(
                f"{offset + length} tokens exceed the positional embedding "
                f"({self.positions.num_embeddings} positions)"
            )
        positions = torch.arange(offset, offset + length, device=tokens.device)
        embedded = self.dropout(self.layer_norm(self.words(tokens) + self.positions(positions)))
        keep = tokens != self.padding_idx
        return embedded * keep[..., None].to(embedded.dtype)


class Attention(nn.Module):
    """Multi-head attention with ``nn.MultiheadAttention``'s parameter layout.

    ``in_proj_weight (3D, D)`` / ``in_proj_bias (3D,)`` stack the query, key and value
    projections; ``out_proj`` is the output projection. The product runs through
    ``F.scaled_dot_product_attention`` (fused kernels where available).
    """

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.width = width
        self.heads = heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def _split(self, x: Tensor) -> Tensor:
        # (N, L, D) -> (N, heads, L, D / heads)
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def query(self, x: Tensor) -> Tensor:
        """``(N, L, D)`` -> queries ``(N, heads, L, D / heads)``."""
        d = self.width
        return self._split(F.linear(x, self.in_proj_weight[:d], self.in_proj_bias[:d]))

    def keys_values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(N, S, D)`` -> keys and values, each ``(N, heads, S, D / heads)``."""
        d = self.width
        kv = F.linear(x, self.in_proj_weight[d:], self.in_proj_bias[d:])
        key, value = kv.chunk(2, dim=-1)
        return self._split(key), self._split(value)

    def qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Self-attention projections in one matmul: three ``(N, heads, L, D / heads)``."""
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        return self._split(q), self._split(k), self._split(v)

    def attend(
        self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, causal: bool = False
    ) -> Tensor:
        """Attention of ``q (N, h, L, d)`` over ``k, v (N, h, S, d)`` -> ``(N, L, D)``.

        ``mask``: boolean, broadcastable to ``(N, h, L, S)``, True where attention is allowed.
        Inference under CPU autocast runs the product in float32: oneDNN's bf16 attention is 2-4x
        slower than float32 at decoding shapes (one query per hypothesis, <= 49 keys).
        """
        if not self.training and q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                out = F.scaled_dot_product_attention(
                    q.float(), k.float(), v.float(), attn_mask=mask, is_causal=causal
                )
            return self.out_proj(out.transpose(1, 2).flatten(2))
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=causal,
        )
        return self.out_proj(out.transpose(1, 2).flatten(2))


class DecoderLayer(nn.Module):
    """One Transformer decoder layer (self-attention, cross-attention, GELU feed-forward).

    Same computation and parameter names as ``nn.TransformerDecoderLayer(activation="gelu")``
    in post-norm (default) or pre-norm (``norm_first=True``) form.
    """

    def __init__(self, width: int, heads: int, ffn: int, dropout: float, norm_first: bool) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.dropout = dropout
        self.self_attn = Attention(width, heads, dropout)
        self.multihead_attn = Attention(width, heads, dropout)
        self.linear1 = nn.Linear(width, ffn)
        self.linear2 = nn.Linear(ffn, width)
        self.norm1 = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.norm2 = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.norm3 = nn.LayerNorm(width, eps=LAYER_NORM_EPS)

    def _drop(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.dropout, self.training)

    def _feed_forward(self, x: Tensor) -> Tensor:
        return self._drop(self.linear2(self._drop(F.gelu(self.linear1(x)))))

    def _self_block(
        self, x: Tensor, mask: Tensor | None, past: tuple[Tensor, Tensor] | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = self.self_attn.qkv(x)
        if past is not None:
            # Incremental decoding: the new token attends to every cached token and itself.
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
            out = self.self_attn.attend(q, k, v)
        else:
            out = self.self_attn.attend(q, k, v, mask=mask, causal=mask is None)
        return self._drop(out), k, v

    def _cross_block(self, x: Tensor, cross: tuple[Tensor, Tensor], beams: int) -> Tensor:
        # Cross-attention keys/values are per image (B rows); the B * beams hypotheses are laid
        # out as extra query positions of their image, so no key/value is copied per beam.
        rows, length, width = x.shape
        grouped = x.reshape(rows // beams, beams * length, width)
        out = self.multihead_attn.attend(self.multihead_attn.query(grouped), *cross)
        return self._drop(out.reshape(rows, length, width))

    def forward(
        self,
        x: Tensor,
        cross: tuple[Tensor, Tensor],
        mask: Tensor | None = None,
        past: tuple[Tensor, Tensor] | None = None,
        beams: int = 1,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One layer.

        Args:
            x: ``(N, L, D)`` token features, ``N = B * beams``.
            cross: keys and values of the visual memory, each ``(B, heads, S, D / heads)``.
            mask: ``None`` for causal self-attention, else a boolean ``(N, 1, L, L)`` (or
                broadcastable) mask, True where attention is allowed.
            past: cached self-attention keys and values ``(N, heads, T, D / heads)``; then
                ``x`` holds the next ``L`` (usually 1) tokens after them.
            beams: hypotheses per image in ``x``.

        Returns:
            ``(N, L, D)`` features, and the self-attention keys and values including ``past``.
        """
        if self.norm_first:
            attended, k, v = self._self_block(self.norm1(x), mask, past)
            x = x + attended
            x = x + self._cross_block(self.norm2(x), cross, beams)
            x = x + self._feed_forward(self.norm3(x))
        else:
            attended, k, v = self._self_block(x, mask, past)
            x = self.norm1(x + attended)
            x = self.norm2(x + self._cross_block(x, cross, beams))
            x = self.norm3(x + self._feed_forward(x))
        return x, k, v


class DecoderStack(nn.Module):
    """``layers`` decoder layers, plus a final LayerNorm for pre-norm stacks with
    ``final_norm``."""

    def __init__(self, config: TextualConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DecoderLayer(config.width, config.heads, config.ffn, config.dropout, config.norm_first)
            for _ in range(config.layers)
        )
        final = config.norm_first and config.final_norm
        self.norm = nn.LayerNorm(config.width, eps=LAYER_NORM_EPS) if final else None


class TransformerTextualHead(nn.Module):
    """VirTex's caption decoder: a Transformer over words, attending to the image grid.

    Training: ``head(visual, tokens, lengths)`` -> logits ``(B, L, V)`` (causal: position ``t``
    predicts token ``t + 1``). With right padding and a causal mask no real token can attend to
    a padding position, so no key-padding mask is needed (pad positions' outputs are never
    counted). ``causal=False`` (masked LM) masks padding keys by ``lengths`` instead.

    Decoding: ``start(visual, beams)`` projects the grid once per image and computes each
    layer's cross-attention keys/values once per image (shared by the beams);
    ``step(state, last_tokens)`` appends one token per hypothesis to the self-attention cache.

    Args:
        config: architecture.
        vocab_size: ``V``.
        visual_channels: ``C`` of the backbone's grid.
        padding_idx: pad id (its embedding row is zero).
    """

    def __init__(
        self, config: TextualConfig, vocab_size: int, visual_channels: int, padding_idx: int
    ) -> None:
        super().__init__()
        self.config = config
        self.padding_idx = padding_idx
        self.visual_projection = nn.Linear(visual_channels, config.width)
        self.embedding = WordAndPositionEmbedding(
            vocab_size, config.width, config.max_length, padding_idx, config.dropout
        )
        self.transformer = DecoderStack(config)
        self.output = nn.Linear(config.width, vocab_size)
        self.reset_parameters()
        # Tied after initialisation: the output layer reads the word embedding, with its own bias.
        self.output.weight = self.embedding.words.weight

    @property
    def vocab_size(self) -> int:
        return int(self.embedding.words.num_embeddings)

    @property
    def max_length(self) -> int:
        return int(self.embedding.positions.num_embeddings)

    def reset_parameters(self) -> None:
        """BERT-style initialisation: N(0, 0.02) weights, zero biases, zero padding row."""
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, Attention):
                nn.init.normal_(module.in_proj_weight, mean=0.0, std=0.02)
                nn.init.zeros_(module.in_proj_bias)
            if isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            self.embedding.words.weight[self.padding_idx].zero_()

    def tied_copy(self) -> TransformerTextualHead:
        """A head with its own (freshly initialised) transformer that shares this head's visual
        projection, embeddings and output layer: the backward decoder of bicaptioning."""
        twin = TransformerTextualHead(
            self.config, self.vocab_size, self.visual_projection.in_features, self.padding_idx
        )
        twin.visual_projection = self.visual_projection
        twin.embedding = self.embedding
        twin.output = self.output
        return twin

    # ----------------------------------------------------------------------------------------
    # Training.
    # ----------------------------------------------------------------------------------------
    def project(self, visual: Tensor) -> Tensor:
        """``(B, C, h, w)`` grid -> ``(B, h * w, D)`` memory."""
        return self.visual_projection(visual.flatten(2).transpose(1, 2))

    def _layers(self) -> list[DecoderLayer]:
        return [layer for layer in self.transformer.layers if isinstance(layer, DecoderLayer)]

    def _cross(self, memory: Tensor) -> list[tuple[Tensor, Tensor]]:
        return [layer.multihead_attn.keys_values(memory) for layer in self._layers()]

    def _finish(self, x: Tensor) -> Tensor:
        if self.transformer.norm is not None:
            x = self.transformer.norm(x)
        return self.output(x)

    def decode(
        self, memory: Tensor, tokens: Tensor, lengths: Tensor, causal: bool = True
    ) -> Tensor:
        """Logits ``(B, L, V)`` of ``tokens (B, L)`` over projected ``memory (B, S, D)``."""
        mask = None
        if not causal:
            positions = torch.arange(tokens.shape[1], device=tokens.device)
            mask = (positions[None, :] < lengths[:, None])[:, None, None, :]
        x = self.embedding(tokens)
        for layer, cross in zip(self.transformer.layers, self._cross(memory)):
            # An all-True mask would be a no-op; a causal run passes mask=None.
            x, _, _ = layer(x, cross, mask=mask)
        return self._finish(x)

    def forward(
        self, visual: Tensor, tokens: Tensor, lengths: Tensor, causal: bool = True
    ) -> Tensor:
        """Logits ``(B, L, V)``.

        Args:
            visual: ``(B, C, h, w)`` backbone grid.
            tokens: ``(B, L)`` int64 right-padded captions.
            lengths: ``(B,)`` int64 non-pad tokens per row.
            causal: causal self-attention (captioning); ``False`` for masked LM.
        """
        return self.decode(self.project(visual), tokens, lengths, causal=causal)

    # ----------------------------------------------------------------------------------------
    # Incremental decoding.
    # ----------------------------------------------------------------------------------------
    def start(self, visual: Tensor, beams: int = 1) -> DecodeState:
        """Project ``visual (B, C, h, w)`` once; a state with ``B * beams`` empty hypotheses."""
        return self.start_from_memory(self.project(visual), beams)

    def start_from_memory(self, memory: Tensor, beams: int = 1) -> DecodeState:
        """Like :meth:`start` for an already projected ``memory (B, S, D)``."""
        shared: dict[str, Tensor] = {}
        for index, (key, value) in enumerate(self._cross(memory)):
            # Float32 even under autocast: decoding attends in float32 on CPU (see
            # Attention.attend); a no-op (no copy) for float32 tensors.
            shared[f"{index}.cross_k"] = key
            shared[f"{index}.cross_v"] = value
        return DecodeState(memory=memory, cache={}, length=0, beams=beams, shared=shared)

    def step(self, state: DecodeState, last_tokens: Tensor) -> tuple[Tensor, DecodeState]:
        """Consume ``last_tokens (N,)`` at position ``state.length``; logits ``(N, V)`` of the
        next token and the extended state."""
        if last_tokens.shape != (state.hypotheses,):
            raise ValueError(
                f"last_tokens must be ({state.hypotheses},), got {tuple(last_tokens.shape)}"
            )
        x = self.embedding(last_tokens[:, None], offset=state.length)
        cache: dict[str, Tensor] = {}
        for index, layer in enumerate(self.transformer.layers):
            cross = (state.shared[f"{index}.cross_k"], state.shared[f"{index}.cross_v"])
            past = None
            if state.length > 0:
                past = (state.cache[f"{index}.k"], state.cache[f"{index}.v"])
            x, k, v = layer(x, cross, past=past, beams=state.beams)
            # The cache is kept in float32 (a no-op in float32 runs): bf16 autocast then casts
            # only the new token's keys/values (torch.cat promotes), not the whole cache.
            cache[f"{index}.k"], cache[f"{index}.v"] = k, v
        logits = self._finish(x)[:, 0]
        new_state = DecodeState(
            memory=state.memory,
            cache=cache,
            length=state.length + 1,
            beams=state.beams,
            shared=state.shared,
        )
        return logits, new_state


class LinearHead(nn.Module):
    """Global average pooling of the grid and one linear layer: ``(B, C, h, w)`` -> ``(B, K)``.

    Args:
        in_channels: ``C``.
        outputs: ``K`` (vocabulary size for token classification, categories for multilabel).
    """

    def __init__(self, in_channels: int, outputs: int) -> None:
        super().__init__()
        self.output = nn.Linear(in_channels, outputs)
        nn.init.normal_(self.output.weight, mean=0.0, std=0.02)
        nn.init.zeros_(self.output.bias)

    def forward(self, visual: Tensor) -> Tensor:
        """``(B, C, h, w)`` -> logits ``(B, K)``."""
        return self.output(visual.mean(dim=(2, 3)))
