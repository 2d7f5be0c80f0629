"""CapPa (objective ``cappa``) against hand computations, the registry, and the ViT backbone."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from models_testing import Batch, random_captions
from torch import Tensor

from virtex_models import (
    Captioning,
    ModelConfig,
    Objective,
    TextualHead,
    VisualBackbone,
    VocabSpec,
    get_objective,
    objectives,
)
from virtex_models.objectives.cappa import CapPa, parallel_rows
from virtex_models.pretrained import ModelSpec, checkpoint_dict, load_objective
from virtex_models.visual import VisualConfig, ViTBackbone, ViTConfig

VOCAB = VocabSpec(size=30, pad=0, unk=1, sos=2, eos=3, mask=4)
TINY = {
    "visual": {"name": "resnet18"},
    "textual": {"layers": 1, "width": 32, "heads": 2, "ffn": 64, "max_length": 10},
}
TINY_VIT = {
    "kind": "vit",
    "name": "custom",
    "vit": {"image_size": 32, "patch_size": 8, "num_layers": 1, "num_heads": 2,
            "hidden_dim": 32, "mlp_dim": 64},
}  # fmt: skip


def build(kind: str = "cappa", fraction: float | None = None, **extra: object) -> torch.nn.Module:
    torch.manual_seed(0)
    data: dict[str, object] = {**TINY, "kind": kind, **extra}
    if fraction is not None:
        data["options"] = {"parallel_fraction": fraction}
    return ModelConfig.from_dict(data).build(VOCAB).eval()


def caption_batch(
    lengths: tuple[int, ...] = (6, 4, 3), ids_from: int = 0, pad_to: int = 0
) -> Batch:
    tokens, lens = random_captions(
        list(lengths), VOCAB.size, VOCAB.sos, VOCAB.eos, VOCAB.pad, first_word=5, seed=1
    )
    if pad_to > tokens.shape[1]:
        tokens = F.pad(tokens, (0, pad_to - tokens.shape[1]), value=VOCAB.pad)
    images = torch.randn(len(lengths), 3, 32, 32, generator=torch.Generator().manual_seed(2))
    ids = torch.arange(ids_from, ids_from + len(lengths))
    return Batch(image_ids=ids, images=images, tokens=tokens, lengths=lens)


def hand_parallel_logits(model: CapPa, batch: Batch) -> Tensor:
    """Parallel mode built by hand: ``L`` [MASK] inputs, attention over all ``L`` positions."""
    rows, width = batch.tokens.shape
    inputs = torch.full((rows, width), VOCAB.mask)
    everything = torch.full((rows,), width)
    memory = model.textual.project(model.visual(batch.images))
    return model.textual.decode(memory, inputs, everything, causal=False)


def hand_nll(logits: Tensor, batch: Batch, rows: list[int]) -> tuple[float, int]:
    """Summed next-token NLL over the non-pad targets of ``rows`` (position ``t - 1`` predicts
    token ``t``), one token at a time, and the number of tokens."""
    total, count = 0.0, 0
    for row in rows:
        for t in range(1, int(batch.lengths[row])):
            scores = logits[row, t - 1].detach().double()
            total += float(torch.logsumexp(scores, 0) - scores[int(batch.tokens[row, t])])
            count += 1
    return total, count


def test_parallel_loss_is_the_hand_computed_cross_entropy() -> None:
    model = build(fraction=1.0)
    assert isinstance(model, CapPa)
    batch = caption_batch()
    with torch.no_grad():
        out = model(batch)
        total, count = hand_nll(hand_parallel_logits(model, batch), batch, [0, 1, 2])
    assert count == 5 + 3 + 2
    assert float(out.loss) == pytest.approx(total / count, rel=1e-5)
    assert set(out.components) == {"parallel"}


def test_parallel_inputs_are_masks_only() -> None:
    # Parallel predictions come from the image and the positions alone: other caption words
    # (same lengths) leave them unchanged; a model fed the caption would change.
    model = build(fraction=1.0)
    batch = caption_batch()
    other = dataclasses.replace(batch, tokens=batch.tokens.clone())
    other.tokens[:, 1] = torch.where(other.tokens[:, 1] == 7, 8, 7)
    with torch.no_grad():
        assert torch.equal(model(batch).logits, model(other).logits)


def test_parallel_mode_has_no_causal_mask() -> None:
    # Two more (padding) columns add two [MASK] positions. Without a causal mask position 0
    # attends to them and its prediction changes; with one it could not see them.
    model = build(fraction=1.0)
    short, long = caption_batch(), caption_batch(pad_to=8)
    with torch.no_grad():
        first = model(short).logits[:, 0]
        second = model(long).logits[:, 0]
    assert not torch.allclose(first, second, atol=1e-4)
    # The same comparison in autoregressive mode: position 0 sees only itself.
    model = build(fraction=0.0)
    with torch.no_grad():
        torch.testing.assert_close(model(short).logits[:, 0], model(long).logits[:, 0])


def test_fraction_zero_is_the_captioning_loss() -> None:
    cappa, captioning = build(fraction=0.0).train(), build("captioning").train()
    assert isinstance(captioning, Captioning) and captioning.backward_textual is None
    for key, value in captioning.state_dict().items():  # same modules, same initialisation
        assert torch.equal(cappa.state_dict()[key], value), key
    batch = caption_batch()
    torch.manual_seed(5)  # the same dropout draws
    ours = cappa(batch)
    torch.manual_seed(5)
    theirs = captioning(batch)
    torch.testing.assert_close(ours.loss, theirs.loss, rtol=1e-6, atol=0.0)
    assert set(ours.components) == {"autoregressive"}


def test_mixed_batch_counts_every_row_in_its_mode() -> None:
    model = build(fraction=0.5)
    lengths = (6, 4, 3, 5, 6, 2, 4, 3)
    batch = next(
        b
        for start in range(0, 800, 8)
        if 0 < int(parallel_rows(b := caption_batch(lengths, ids_from=start), 0.5).sum()) < 8
    )
    chosen = parallel_rows(batch, 0.5)
    assert torch.equal(chosen, parallel_rows(batch, 0.5))  # a function of the batch
    parallel = [r for r in range(len(lengths)) if chosen[r]]
    sequential = [r for r in range(len(lengths)) if not chosen[r]]
    with torch.no_grad():
        out = model(batch)
        memory = model.textual.project(model.visual(batch.images))
        causal = model.textual.decode(memory, batch.tokens, batch.lengths)
        par_total, par_count = hand_nll(hand_parallel_logits(model, batch), batch, parallel)
        seq_total, seq_count = hand_nll(causal, batch, sequential)
    expected = (par_total + seq_total) / (par_count + seq_count)
    assert float(out.loss) == pytest.approx(expected, rel=1e-5)
    assert float(out.components["parallel"]) == pytest.approx(par_total / par_count, rel=1e-5)
    assert float(out.components["autoregressive"]) == pytest.approx(seq_total / seq_count, rel=1e-5)


def test_parallel_fraction_is_respected() -> None:
    rows = 4000
    tokens = torch.full((rows, 3), VOCAB.sos)
    batch = Batch(
        image_ids=torch.arange(rows),
        images=torch.zeros(rows, 3, 1, 1),
        tokens=tokens,
        lengths=torch.full((rows,), 3),
    )
    share = float(parallel_rows(batch, 0.75).float().mean())
    # Binomial standard deviation sqrt(0.75 * 0.25 / 4000) = 0.0068: five of them.
    assert abs(share - 0.75) < 0.035
    assert not parallel_rows(batch, 0.0).any() and parallel_rows(batch, 1.0).all()
    other = dataclasses.replace(batch, image_ids=batch.image_ids + rows)
    assert not torch.equal(parallel_rows(batch, 0.75), parallel_rows(other, 0.75))


def test_registry_round_trips() -> None:
    info = get_objective("cappa")
    assert objectives()["cappa"] is info
    assert (info.target, info.captions, info.textual, info.needs_classes) == (
        "captioning",
        True,
        True,
        False,
    )
    assert not info.original_names  # the original VirTex had no CapPa
    config = ModelConfig.from_dict({**TINY, "kind": "cappa", "options": {"parallel_fraction": 0.3}})
    assert ModelConfig.from_dict(config.to_dict()) == config
    model = config.build(VOCAB)
    assert isinstance(model, CapPa) and model.parallel_fraction == 0.3
    loaded, spec = load_objective(checkpoint_dict(model, ModelSpec(config, VOCAB)))
    assert isinstance(loaded, CapPa) and loaded.parallel_fraction == 0.3
    assert spec.config == config
    assert (
        ModelConfig.from_dict({**TINY, "kind": "cappa"}).parsed_options().parallel_fraction == 0.75
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"kind": "capa"}, r"model\.kind='capa' is not one of .*'cappa'"),
        ({"kind": "cappa", "options": {"fraction": 1}}, r"unknown key model\.options\.fraction"),
        ({"kind": "cappa", "options": {"parallel_fraction": 2}}, r"parallel_fraction.*\[0, 1\]"),
        ({"kind": "captioning", "options": {"parallel_fraction": 1}}, r"takes no options"),
    ],
)
def test_bad_kinds_and_options_name_the_key(data: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_dict({**TINY, **data})


def test_cappa_decodes_autoregressively_and_satisfies_the_seams() -> None:
    model = build()
    assert isinstance(model, Objective) and isinstance(model.textual, TextualHead)
    images = caption_batch().images
    with torch.no_grad():
        tokens = model.generate(images, mode="greedy", max_steps=5)
        beams = model.generate(images, mode="beam", beam_size=2, max_steps=5)
        scores = model.log_likelihood(images, caption_batch().tokens, caption_batch().lengths)
    assert tokens.shape[0] == beams.shape[0] == 3 and tokens.shape[1] <= 5
    assert scores.shape == (3,) and bool(torch.all(scores < 0))


def test_vit_backbone_gives_the_patch_grid() -> None:
    vit = VisualConfig(**{**TINY_VIT, "vit": ViTConfig(**TINY_VIT["vit"])}).build()  # type: ignore[arg-type]
    assert isinstance(vit, ViTBackbone) and isinstance(vit, VisualBackbone)
    assert (vit.out_channels, vit.stride) == (32, 8)
    images = torch.randn(2, 3, 32, 32)
    grid = vit(images)
    assert grid.shape == (2, 32, 4, 4)
    # Grid cell (i, j) is patch token 1 + 4 i + j of torchvision's own encoder output (the
    # class token, index 0, is dropped).
    model = vit.model
    tokens = model._process_input(images)
    encoded = model.encoder(torch.cat([model.class_token.expand(2, -1, -1), tokens], 1))
    torch.testing.assert_close(grid[:, :, 1, 2], encoded[:, 1 + 4 * 1 + 2])
    with pytest.raises((ValueError, RuntimeError, AssertionError)):
        vit(torch.randn(1, 3, 48, 48))  # the position embedding is for 32 px
    with pytest.raises(ValueError, match="no Vision Transformer named 'vit_z_1'"):
        VisualConfig(kind="vit", name="vit_z_1").build()


def test_named_torchvision_vit() -> None:
    with torch.device("meta"):
        vit = VisualConfig(kind="vit", name="vit_b_16").build()
    assert (vit.out_channels, vit.stride) == (768, 16)
    assert not any("heads" in name for name, _ in vit.named_parameters())


def test_cappa_on_a_tiny_vit_trains_one_step() -> None:
    model = build(fraction=0.75, visual=TINY_VIT)
    assert isinstance(model.visual, ViTBackbone)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = caption_batch()
    with torch.no_grad():
        start = float(model(batch).loss)
    before = [p.detach().clone() for p in model.visual.parameters()]
    loss = model.train()(batch).loss
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.visual.parameters()))
    with torch.no_grad():
        after = float(model.eval()(batch).loss)
    assert after < start - 0.01, (start, after)  # one step on one batch lowers its loss
