"""The Transformer head against PyTorch's own decoder layers, its init, and its KV cache."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from virtex_models import (
    DecodeState,
    LinearHead,
    TextualConfig,
    TextualHead,
    TransformerTextualHead,
)

VOCAB, CHANNELS, PAD = 50, 24, 0


def make_head(norm_first: bool = False, layers: int = 2, seed: int = 0) -> TransformerTextualHead:
    torch.manual_seed(seed)
    config = TextualConfig(
        layers=layers, width=32, heads=4, ffn=64, norm_first=norm_first, dropout=0.1, max_length=12
    )
    return TransformerTextualHead(config, VOCAB, CHANNELS, PAD).eval()


class Reference(nn.Module):
    """An independent forward pass from PyTorch building blocks (nn.TransformerDecoder)."""

    def __init__(self, head: TransformerTextualHead) -> None:
        super().__init__()
        config = head.config
        self.visual_projection = nn.Linear(CHANNELS, config.width)
        self.words = nn.Embedding(VOCAB, config.width)
        self.positions = nn.Embedding(config.max_length, config.width)
        self.layer_norm = nn.LayerNorm(config.width, eps=1e-8)
        layer = nn.TransformerDecoderLayer(
            config.width,
            config.heads,
            config.ffn,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=config.norm_first,
        )
        norm = nn.LayerNorm(config.width) if config.norm_first else None
        self.transformer = nn.TransformerDecoder(layer, config.layers, norm=norm)
        state = head.state_dict()
        self.visual_projection.load_state_dict(
            {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("visual_projection.")}
        )
        for name in ("words", "positions", "layer_norm"):
            getattr(self, name).load_state_dict(
                {
                    k.split(".", 2)[2]: v
                    for k, v in state.items()
                    if k.startswith(f"embedding.{name}.")
                }
            )
        self.transformer.load_state_dict(
            {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("transformer.")}
        )
        self.output_bias = state["output.bias"]

    def forward(self, visual: Tensor, tokens: Tensor) -> Tensor:
        memory = self.visual_projection(visual.flatten(2).transpose(1, 2))
        positions = torch.arange(tokens.shape[1])
        x = self.layer_norm(self.words(tokens) + self.positions(positions))
        causal = nn.Transformer.generate_square_subsequent_mask(tokens.shape[1])
        x = self.transformer(x, memory, tgt_mask=causal, tgt_is_causal=True)
        return x @ self.words.weight.T + self.output_bias


@pytest.mark.parametrize("norm_first", [False, True])
def test_head_matches_pytorch_transformer_decoder(norm_first: bool) -> None:
    head = make_head(norm_first)
    reference = Reference(head).eval()
    visual = torch.randn(3, CHANNELS, 2, 3)
    tokens = torch.randint(1, VOCAB, (3, 7))
    lengths = torch.tensor([7, 5, 3])
    with torch.no_grad():
        ours = head(visual, tokens, lengths)
        theirs = reference(visual, tokens)
    # Real (non-padding) positions must agree; padding outputs are never used.
    for row, length in enumerate(lengths.tolist()):
        torch.testing.assert_close(ours[row, :length], theirs[row, :length], atol=1e-5, rtol=1e-4)


def test_parameter_names_follow_transformer_decoder_layer() -> None:
    names = set(make_head(norm_first=True, layers=1).state_dict())
    expected_layer = {
        "self_attn.in_proj_weight",
        "self_attn.in_proj_bias",
        "self_attn.out_proj.weight",
        "self_attn.out_proj.bias",
        "multihead_attn.in_proj_weight",
        "multihead_attn.in_proj_bias",
        "multihead_attn.out_proj.weight",
        "multihead_attn.out_proj.bias",
        "linear1.weight",
        "linear1.bias",
        "linear2.weight",
        "linear2.bias",
        *(f"norm{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")),
    }
    expected = {f"transformer.layers.0.{name}" for name in expected_layer} | {
        "visual_projection.weight",
        "visual_projection.bias",
        "embedding.words.weight",
        "embedding.positions.weight",
        "embedding.layer_norm.weight",
        "embedding.layer_norm.bias",
        "transformer.norm.weight",
        "transformer.norm.bias",
        "output.weight",
        "output.bias",
    }
    assert names == expected


def test_init_is_bert_style_with_tied_output_and_zero_padding_row() -> None:
    torch.manual_seed(0)
    config = TextualConfig(layers=1, width=256, heads=4, ffn=512, max_length=30)
    head = TransformerTextualHead(config, 2000, 64, padding_idx=3)
    assert head.output.weight is head.embedding.words.weight
    assert torch.count_nonzero(head.output.bias) == 0
    assert torch.count_nonzero(head.embedding.words.weight[3]) == 0
    for weight in (
        head.embedding.words.weight[4:],
        head.transformer.layers[0].linear1.weight,
        head.transformer.layers[0].self_attn.in_proj_weight,
        head.visual_projection.weight,
    ):
        assert abs(weight.std().item() - 0.02) < 0.001
        assert abs(weight.mean().item()) < 0.001
    assert head.embedding.layer_norm.eps == 1e-8
    assert head.transformer.layers[0].norm1.eps == 1e-5


@pytest.mark.parametrize("norm_first", [False, True])
def test_incremental_steps_equal_full_forward(norm_first: bool) -> None:
    head = make_head(norm_first)
    assert isinstance(head, TextualHead)
    visual = torch.randn(2, CHANNELS, 2, 2)
    beams = 3
    tokens = torch.randint(1, VOCAB, (2 * beams, 6))
    with torch.no_grad():
        full = head(visual.repeat_interleave(beams, 0), tokens, torch.full((6,), 6))
        state = head.start(visual, beams=beams)
        for position in range(6):
            logits, state = head.step(state, tokens[:, position])
            torch.testing.assert_close(logits, full[:, position], atol=1e-5, rtol=1e-4)
    assert state.length == 6


def test_beams_share_the_image_projection() -> None:
    head = make_head()
    visual = torch.randn(2, CHANNELS, 2, 2)
    with torch.no_grad():
        state = head.start(visual, beams=5)
        assert state.memory.shape == (2, 4, 32)  # one row per image, not per beam
        assert all(value.shape[0] == 2 for value in state.shared.values())
        _, stepped = head.step(state, torch.ones(10, dtype=torch.long))
        reordered = stepped.select(torch.tensor([1, 1, 0, 3, 4, 9, 9, 8, 5, 6]))
    assert reordered.shared["0.cross_k"].data_ptr() == state.shared["0.cross_k"].data_ptr()
    assert reordered.memory is state.memory
    assert reordered.cache["0.k"].shape[0] == 10
    torch.testing.assert_close(reordered.cache["0.k"][0], stepped.cache["0.k"][1])


def test_step_rejects_wrong_number_of_tokens_and_positions_past_the_end() -> None:
    head = make_head()
    state = head.start(torch.randn(1, CHANNELS, 1, 1), beams=2)
    with pytest.raises(ValueError, match="last_tokens must be"):
        head.step(state, torch.ones(3, dtype=torch.long))
    state = DecodeState(memory=state.memory, shared=state.shared, length=12, beams=2)
    with pytest.raises(ValueError, match="positional embedding"):
        head.step(state, torch.ones(2, dtype=torch.long))


def test_non_causal_mode_hides_padding_keys() -> None:
    head = make_head()
    visual = torch.randn(1, CHANNELS, 2, 2)
    tokens = torch.tensor([[2, 5, 6, 3, 0, 0]])
    other = torch.tensor([[2, 5, 6, 3, 9, 9]])
    lengths = torch.tensor([4])
    with torch.no_grad():
        a = head(visual, tokens, lengths, causal=False)
        b = head(visual, other, lengths, causal=False)
        c = head(visual, tokens, torch.tensor([6]), causal=False)
    torch.testing.assert_close(a[:, :4], b[:, :4])  # what sits in padding does not matter
    assert not torch.allclose(a[:, :4], c[:, :4])  # and it does when counted as real


def test_linear_head_pools_then_projects() -> None:
    head = LinearHead(8, 5)
    grid = torch.randn(2, 8, 3, 3)
    expected = grid.mean(dim=(2, 3)) @ head.output.weight.T + head.output.bias
    torch.testing.assert_close(head(grid), expected)


def test_embedding_zeroes_pad_positions_only() -> None:
    """``layernorm(word + position)`` by hand (eps 1e-8, the learned affine), times
    ``token != pad``: pad positions are zero vectors wherever they are, other ids (an unknown
    word with its own id here) are not."""
    head = make_head()
    embedding = head.embedding
    with torch.no_grad():
        embedding.layer_norm.weight.uniform_(0.5, 1.5)
        embedding.layer_norm.bias.uniform_(-0.5, 0.5)
    tokens = torch.tensor([[2, PAD, 7, 1, PAD], [PAD, 5, 5, 3, 9]])
    with torch.no_grad():
        out = embedding(tokens, offset=1)
        for row in range(2):
            for t in range(5):
                token = int(tokens[row, t])
                x = (embedding.words.weight[token] + embedding.positions.weight[t + 1]).double()
                normed = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-8)
                expected = normed * embedding.layer_norm.weight.double()
                expected = expected + embedding.layer_norm.bias.double()
                if token == PAD:
                    assert bool((out[row, t] == 0).all())
                else:
                    torch.testing.assert_close(out[row, t].double(), expected)
