"""Losses of every objective against hand computations; Protocol conformance."""

from __future__ import annotations

import math

import pytest
import torch
from models_testing import Batch, MaskedBatch, MultilabelBatch, TokenBatch, random_captions
from torch import Tensor

from virtex_models import (
    IGNORE_INDEX,
    Captioning,
    CaptionInputs,
    MaskedLM,
    MaskedLMInputs,
    ModelConfig,
    MultilabelClassification,
    MultilabelInputs,
    Objective,
    ObjectiveOutput,
    TokenClassification,
    TokenClassificationInputs,
    VocabSpec,
)
from virtex_models.captioning import reverse_captions

VOCAB = VocabSpec(size=30, pad=0, unk=1, sos=2, eos=3, mask=4)
TINY = {
    "visual": {"name": "resnet18"},
    "textual": {"layers": 1, "width": 32, "heads": 2, "ffn": 64, "max_length": 10},
}


def build(
    kind: str, vocab: VocabSpec = VOCAB, num_classes: int | None = None, **options: object
) -> torch.nn.Module:
    torch.manual_seed(0)
    config = ModelConfig.from_dict({**TINY, "kind": kind, **options})
    return config.build(vocab, num_classes).eval()


def caption_batch(vocab: VocabSpec = VOCAB, lengths: tuple[int, ...] = (6, 4, 3)) -> Batch:
    tokens, lens = random_captions(
        list(lengths), vocab.size, vocab.sos, vocab.eos, vocab.pad, first_word=5, seed=1
    )
    tokens[0, 2] = vocab.unk  # a real unknown word
    images = torch.randn(len(lengths), 3, 32, 32, generator=torch.Generator().manual_seed(2))
    return Batch(image_ids=torch.arange(len(lengths)), images=images, tokens=tokens, lengths=lens)


def hand_nll(logits: Tensor, tokens: Tensor, lengths: Tensor, skip_id: int | None = None) -> float:
    """Mean negative log-likelihood over next-token targets, one token at a time."""
    total, count = 0.0, 0
    for row in range(tokens.shape[0]):
        for t in range(1, int(lengths[row])):
            target = int(tokens[row, t])
            if skip_id is not None and target == skip_id:
                continue
            scores = logits[row, t - 1].double()
            total += float(torch.logsumexp(scores, 0) - scores[target])
            count += 1
    return total / count


def test_reverse_captions_within_length() -> None:
    tokens = torch.tensor([[2, 7, 8, 9, 3], [2, 7, 3, 0, 0]])
    lengths = torch.tensor([5, 3])
    assert reverse_captions(tokens, lengths).tolist() == [[3, 9, 8, 7, 2], [3, 7, 2, 0, 0]]


def test_bicaptioning_loss_is_forward_plus_backward_hand_computed() -> None:
    model = build("bicaptioning")
    assert isinstance(model, Captioning) and isinstance(model, Objective)
    batch = caption_batch()
    assert isinstance(batch, CaptionInputs)
    with torch.no_grad():
        output = model(batch)
        grid = model.visual(batch.images)
        forward_logits = model.textual(grid, batch.tokens, batch.lengths)
        # The backward caption written out by hand from the forward one.
        backward = torch.zeros_like(batch.tokens)
        for row, length in enumerate(batch.lengths.tolist()):
            backward[row, :length] = batch.tokens[row, :length].flip(0)
        assert model.backward_textual is not None
        backward_logits = model.backward_textual(grid, backward, batch.lengths)
    assert isinstance(output, ObjectiveOutput)
    expected_forward = hand_nll(forward_logits, batch.tokens, batch.lengths)
    expected_backward = hand_nll(backward_logits, backward, batch.lengths)
    assert output.components["forward"].item() == pytest.approx(expected_forward, rel=1e-5)
    assert output.components["backward"].item() == pytest.approx(expected_backward, rel=1e-5)
    assert output.loss.item() == pytest.approx(expected_forward + expected_backward, rel=1e-5)
    assert output.logits is not None and output.logits.shape == (3, 6, VOCAB.size)


def test_backward_head_shares_projection_embeddings_and_output() -> None:
    model = build("bicaptioning")
    assert isinstance(model, Captioning) and model.backward_textual is not None
    forward, backward = model.textual, model.backward_textual
    assert backward.visual_projection is forward.visual_projection
    assert backward.embedding is forward.embedding
    assert backward.output.weight is forward.embedding.words.weight
    assert backward.transformer is not forward.transformer
    batch = caption_batch()
    model.train()
    model(batch).loss.backward()
    assert forward.embedding.words.weight.grad is not None
    for parameter in backward.transformer.parameters():
        assert parameter.grad is not None and torch.count_nonzero(parameter.grad) > 0


def test_padding_never_counts_and_unknown_does() -> None:
    model = build("captioning")
    batch = caption_batch()
    other = caption_batch()
    other.tokens[1, 4:] = 9  # garbage in padding positions
    with torch.no_grad():
        loss = model(batch).loss
        assert model(other).loss.item() == pytest.approx(loss.item(), rel=1e-6)
        logits = model.textual(model.visual(batch.images), batch.tokens, batch.lengths)
    # Unknown (id 1 != pad 0) is a counted target: excluding it changes the expected value.
    with_unk = hand_nll(logits, batch.tokens, batch.lengths)
    without_unk = hand_nll(logits, batch.tokens, batch.lengths, skip_id=VOCAB.unk)
    assert loss.item() == pytest.approx(with_unk, rel=1e-5)
    assert with_unk != pytest.approx(without_unk, rel=1e-5)


def test_legacy_layout_ignores_pad_and_unk_like_the_original() -> None:
    legacy = VocabSpec.legacy(size=30)
    model = build("captioning", legacy)
    batch = caption_batch(legacy)
    with torch.no_grad():
        loss = model(batch).loss
        logits = model.textual(model.visual(batch.images), batch.tokens, batch.lengths)
    assert loss.item() == pytest.approx(hand_nll(logits, batch.tokens, batch.lengths, 0), rel=1e-5)


def test_log_likelihood_sums_caption_log_probs() -> None:
    model = build("captioning")
    batch = caption_batch()
    with torch.no_grad():
        scores = model.log_likelihood(batch.images, batch.tokens, batch.lengths)
        logits = model.textual(model.visual(batch.images), batch.tokens, batch.lengths)
    for row, length in enumerate(batch.lengths.tolist()):
        expected = hand_nll(
            logits[row : row + 1], batch.tokens[row : row + 1], torch.tensor([length])
        )
        assert scores[row].item() == pytest.approx(-expected * (length - 1), rel=1e-5)


def test_masked_lm_counts_only_labelled_positions_without_causal_mask() -> None:
    model = build("masked_lm")
    assert isinstance(model, MaskedLM)
    base = caption_batch()
    labels = torch.full_like(base.tokens, IGNORE_INDEX)
    tokens = base.tokens.clone()
    for row, position in ((0, 2), (0, 4), (2, 1)):
        labels[row, position] = tokens[row, position]
        tokens[row, position] = VOCAB.mask
    batch = MaskedBatch(base.image_ids, base.images, tokens, base.lengths, mlm_labels=labels)
    assert isinstance(batch, MaskedLMInputs)
    with torch.no_grad():
        output = model(batch)
        logits = model.textual(model.visual(batch.images), tokens, batch.lengths, causal=False)
    expected = []
    for row, position in ((0, 2), (0, 4), (2, 1)):
        scores = logits[row, position].double()
        expected.append(float(torch.logsumexp(scores, 0) - scores[labels[row, position]]))
    assert output.loss.item() == pytest.approx(sum(expected) / 3, rel=1e-5)
    # Bidirectional: a later token changes the prediction at an earlier masked position.
    changed = tokens.clone()
    changed[0, 3] = 7 if int(tokens[0, 3]) != 7 else 8
    with torch.no_grad():
        other = model.textual(model.visual(batch.images), changed, batch.lengths, causal=False)
    assert not torch.allclose(other[0, 2], logits[0, 2])


def test_masked_lm_original_vocab_ignores_masked_unk_and_empty_batches() -> None:
    legacy = VocabSpec.legacy(size=30)  # pad = unk = 0, mask 3
    model = build("masked_lm", vocab=legacy)
    base = caption_batch(legacy)
    tokens = base.tokens.clone()
    tokens[0, 2] = 0  # an [UNK] word
    labels = torch.full_like(tokens, IGNORE_INDEX)
    for row, position in ((0, 2), (1, 1)):
        labels[row, position] = tokens[row, position]
        tokens[row, position] = legacy.mask
    batch = MaskedBatch(base.image_ids, base.images, tokens, base.lengths, mlm_labels=labels)
    with torch.no_grad():
        output = model(batch)
        logits = model.textual(model.visual(batch.images), tokens, batch.lengths, causal=False)
    # The original's cross-entropy ignored label 0 (its padding_idx): only (1, 1) counts.
    scores = logits[1, 1].double()
    expected = float(torch.logsumexp(scores, 0) - scores[labels[1, 1]])
    assert output.loss.item() == pytest.approx(expected, rel=1e-5)
    empty = MaskedBatch(
        base.image_ids, base.images, tokens, base.lengths, torch.full_like(labels, IGNORE_INDEX)
    )
    model.train()
    loss = model(empty).loss
    loss.backward()
    assert loss.item() == 0.0


def hand_bce(logits: Tensor, targets: Tensor, skip_column: int | None = None) -> float:
    total = 0.0
    for row in range(logits.shape[0]):
        for column in range(logits.shape[1]):
            if column == skip_column:
                continue
            x, y = float(logits[row, column]), float(targets[row, column])
            p = 1 / (1 + math.exp(-x))
            total -= y * math.log(p) + (1 - y) * math.log(1 - p)
    return total / logits.shape[0]


def test_token_classification_bce_loss_by_hand_excludes_padding_column() -> None:
    model = build("token_classification", classification_loss="bce")
    assert isinstance(model, TokenClassification)
    base = caption_batch()
    labels = torch.zeros(3, VOCAB.size)
    labels[0, [VOCAB.unk, 7, 9]] = 1.0
    labels[1, [11]] = 1.0
    labels[2, [5, 6]] = 1.0
    batch = TokenBatch(base.image_ids, base.images, base.tokens, base.lengths, token_labels=labels)
    assert isinstance(batch, TokenClassificationInputs)
    with torch.no_grad():
        output = model(batch)
    assert output.logits is not None
    expected = hand_bce(output.logits, labels, skip_column=VOCAB.pad)
    assert output.loss.item() == pytest.approx(expected, rel=1e-5)


def test_multilabel_bce_loss_by_hand() -> None:
    model = build("multilabel_classification", num_classes=5, classification_loss="bce")
    assert isinstance(model, MultilabelClassification)
    base = caption_batch()
    labels = torch.tensor([[1.0, 0, 0, 1, 0], [0, 0, 0, 0, 0], [0, 1, 1, 1, 1]])
    batch = MultilabelBatch(base.image_ids, base.images, base.tokens, base.lengths, labels)
    assert isinstance(batch, MultilabelInputs)
    with torch.no_grad():
        output = model(batch)
    assert output.logits is not None and output.logits.shape == (3, 5)
    assert output.loss.item() == pytest.approx(hand_bce(output.logits, labels), rel=1e-5)


def original_classification_loss(
    logits: Tensor, labels: list[list[int]], ignore: set[int]
) -> float:
    """The original VirTex ``ClassificationModel`` loss written from its description: per
    image, minus the mean log-softmax probability of its unique labels outside ``ignore``,
    summed over images and divided by the batch size (every image here has a label)."""
    total = 0.0
    for row, ids in enumerate(labels):
        unique = sorted(set(ids) - ignore)
        scores = logits[row].double()
        log_probs = [float(scores[k] - torch.logsumexp(scores, 0)) for k in unique]
        total -= sum(log_probs) / len(log_probs)
    return total / len(labels)


def test_token_classification_default_is_the_original_softmax_loss() -> None:
    model = build("token_classification")
    assert isinstance(model, TokenClassification) and model.loss == "softmax"
    base = caption_batch()
    # Label lists as the original's dataset gave them: caption tokens with repeats, specials and
    # padding (id 0); repeats count once, specials never.
    lists = [
        [VOCAB.sos, 7, VOCAB.unk, 7, 9, VOCAB.eos, VOCAB.pad],
        [VOCAB.sos, 11, VOCAB.mask, VOCAB.eos],
        [VOCAB.sos, 5, 6, 5, VOCAB.eos],
    ]
    labels = torch.zeros(3, VOCAB.size)
    labels[0, [7, 9]] = labels[1, [11]] = labels[2, [5, 6]] = 1.0  # what the dataset builds
    batch = TokenBatch(base.image_ids, base.images, base.tokens, base.lengths, token_labels=labels)
    with torch.no_grad():
        output = model(batch)
    assert output.logits is not None
    specials = {VOCAB.pad, VOCAB.unk, VOCAB.sos, VOCAB.eos, VOCAB.mask}
    expected = original_classification_loss(output.logits, lists, specials)
    assert output.loss.item() == pytest.approx(expected, rel=1e-5)
    # A special id set in the target by mistake still does not count.
    labels[1, VOCAB.unk] = 1.0
    with torch.no_grad():
        assert model(batch).loss.item() == pytest.approx(expected, rel=1e-5)


def test_multilabel_default_is_the_original_softmax_loss_one_label_cases() -> None:
    model = build("multilabel_classification", num_classes=6)
    assert isinstance(model, MultilabelClassification) and model.loss == "softmax"
    base = caption_batch()
    # Column 0 is the original's background (never a label); image 1 has one label only.
    lists = [[1, 4, 4, 0], [3], [1, 2, 3, 5, 0, 0]]
    labels = torch.zeros(3, 6)
    for row, ids in enumerate(lists):
        labels[row, [k for k in ids if k]] = 1.0
    batch = MultilabelBatch(base.image_ids, base.images, base.tokens, base.lengths, labels)
    with torch.no_grad():
        output = model(batch)
    assert output.logits is not None
    expected = original_classification_loss(output.logits, lists, {0})
    assert output.loss.item() == pytest.approx(expected, rel=1e-5)
    # One image, one label: plain cross-entropy.
    with torch.no_grad():
        single = model(
            MultilabelBatch(
                *(t[1:2] for t in (base.image_ids, base.images, base.tokens, base.lengths)),
                labels[1:2],
            )
        )
    scores = output.logits[1].double()
    assert single.loss.item() == pytest.approx(
        float(torch.logsumexp(scores, 0) - scores[3]), rel=1e-5
    )


def test_softmax_loss_skips_images_without_labels_and_backpropagates() -> None:
    from virtex_models.token_classification import softmax_multilabel_loss

    logits = torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.0, 0.0]], requires_grad=True)
    targets = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    lse = math.log(1 + math.e + math.e**2)
    expected = -((1.0 - lse) + (2.0 - lse)) / 2  # only image 0 counts
    assert softmax_multilabel_loss(logits, targets).item() == pytest.approx(expected, rel=1e-6)
    empty = softmax_multilabel_loss(logits, torch.zeros(2, 3))
    empty.backward()
    assert empty.item() == 0.0 and logits.grad is not None


def test_classification_loss_option_is_validated() -> None:
    with pytest.raises(ValueError, match="classification_loss"):
        ModelConfig.from_dict({"kind": "token_classification", "classification_loss": "hinge"})


def test_objectives_train_one_step() -> None:
    model = build("bicaptioning").train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = caption_batch()
    first = model(batch).loss
    first.backward()
    optimizer.step()
    assert torch.isfinite(first)
