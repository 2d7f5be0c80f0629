"""Original VirTex checkpoints: loss and captions equal to an independent re-implementation.

``Original`` below is written in these tests from the documented facts of the original code
(names of its state dict, vocabulary layout pad = unk = 0, embedding ``dropout(layernorm(word +
position)) * (tokens != 0)``, cross-entropy ignoring id 0, key padding by lengths, pre-norm
stack without a final LayerNorm, reversed captions, decoder semantics), with PyTorch building
blocks (``nn.TransformerDecoder``); it is not the original code. Its state dict, saved the way
the original saved checkpoints (shared tensors included), is loaded by ``load_original``.
Captions contain [UNK] (id 0) and the weights make the decoders generate it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from models_testing import Batch, MultilabelBatch, TokenBatch
from torch import Tensor, nn

from virtex_models import Captioning, MultilabelClassification, TokenClassification
from virtex_models.legacy import load_original, parse_textual_name, parse_visual_name

V, H, A, F_, L, MAX_LEN = 40, 32, 4, 64, 2, 12
SOS, EOS, PAD = 1, 2, 0


class OriginalEmbedding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.words = nn.Embedding(V, H, padding_idx=PAD)
        self.positions = nn.Embedding(MAX_LEN, H)
        self.layer_norm = nn.LayerNorm(H, eps=1e-8)
        self.dropout = nn.Dropout(0.1)

    def forward(self, tokens: Tensor) -> Tensor:
        positions = torch.arange(tokens.shape[1])[None, :]
        x = self.dropout(self.layer_norm(self.words(tokens) + self.positions(positions)))
        return x * (tokens != PAD).unsqueeze(-1).float()


class OriginalTextual(nn.Module):
    def __init__(self, channels: int, prenorm: bool) -> None:
        super().__init__()
        self.visual_projection = nn.Linear(channels, H)
        self.embedding = OriginalEmbedding()
        layer = nn.TransformerDecoderLayer(
            H, A, F_, dropout=0.1, activation="gelu", norm_first=prenorm
        )
        self.transformer = nn.TransformerDecoder(layer, L)  # no final norm, pre-norm included
        self.output = nn.Linear(H, V)
        self.output.weight = self.embedding.words.weight

    def forward(self, grid: Tensor, tokens: Tensor, lengths: Tensor | None = None) -> Tensor:
        memory = self.visual_projection(grid.flatten(2).permute(2, 0, 1))  # (S, B, H)
        x = self.embedding(tokens).transpose(0, 1)  # (L, B, H), sequence-first
        causal = torch.ones(tokens.shape[1], tokens.shape[1], dtype=torch.bool).triu(1)
        if lengths is None:  # decoding: every position is a real token, [UNK] included
            lengths = torch.full((tokens.shape[0],), tokens.shape[1])
        padding = torch.arange(tokens.shape[1])[None, :] >= lengths[:, None]
        x = self.transformer(x, memory, tgt_mask=causal, tgt_key_padding_mask=padding)
        return self.output(x.transpose(0, 1))


class OriginalVisual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cnn = torchvision.models.resnet18(weights=None)
        del self.cnn.fc  # the original state dict has no fc
        self.cnn.fc = nn.Identity()

    def forward(self, images: Tensor) -> Tensor:
        cnn = self.cnn
        x = cnn.maxpool(cnn.relu(cnn.bn1(cnn.conv1(images))))
        return cnn.layer4(cnn.layer3(cnn.layer2(cnn.layer1(x))))


class Original(nn.Module):
    def __init__(self, bidirectional: bool, prenorm: bool) -> None:
        super().__init__()
        self.visual = OriginalVisual()
        self.textual = OriginalTextual(512, prenorm)
        if bidirectional:
            self.backward_textual = OriginalTextual(512, prenorm)
            self.backward_textual.visual_projection = self.textual.visual_projection
            self.backward_textual.embedding = self.textual.embedding
            self.backward_textual.output = self.textual.output
        self.bidirectional = bidirectional

    def loss(self, images: Tensor, tokens: Tensor, lengths: Tensor) -> Tensor:
        grid = self.visual(images)
        criterion = nn.CrossEntropyLoss(ignore_index=PAD)
        logits = self.textual(grid, tokens, lengths)
        loss = criterion(logits[:, :-1].reshape(-1, V), tokens[:, 1:].reshape(-1))
        if self.bidirectional:
            backward = tokens.clone()
            for row, length in enumerate(lengths.tolist()):
                backward[row, :length] = tokens[row, :length].flip(0)
            logits = self.backward_textual(grid, backward, lengths)
            loss = loss + criterion(logits[:, :-1].reshape(-1, V), backward[:, 1:].reshape(-1))
        return loss

    def caption(self, images: Tensor, beam_size: int, max_steps: int) -> list[list[int]]:
        """The original decoder, re-running the model over the whole input at every step."""
        grid = self.visual(images)
        out = []
        for image in grid:

            def log_probs(inputs: list[int], image: Tensor = image) -> Tensor:
                logits = self.textual(image[None], torch.tensor([inputs]))
                return torch.log_softmax(logits[0, -1], dim=-1)

            first = log_probs([SOS]).topk(beam_size)
            beams = [([int(t)], float(s)) for s, t in zip(first.values, first.indices)]
            for _ in range(max_steps - 1):
                if all(words[-1] == EOS for words, _ in beams):
                    break
                candidates = []
                for words, score in beams:
                    if words[-1] == EOS:
                        candidates.append((words + [EOS], score))
                        continue
                    scores = log_probs(words)  # generated tokens only, no [SOS]
                    scores[words[-1]] = -10000.0
                    top = scores.topk(2)
                    candidates += [(words + [int(t)], score + float(s)) for s, t in zip(*top)]
                beams = sorted(candidates, key=lambda b: -b[1])[:beam_size]
            out.append(beams[0][0])
        return out


def original_sample(
    original: Original, images: Tensor, top_p: float, max_steps: int
) -> list[list[int]]:
    """The original nucleus sampler (global random source), re-running the model over
    ``[SOS]`` and every generated token at each step."""
    grid = original.visual(images)
    rows = images.shape[0]
    predictions = [torch.full((rows,), SOS)]
    for _ in range(max_steps):
        last = predictions[-1]
        if bool((last == EOS).all()):
            break
        logits = original.textual(grid, torch.stack(predictions, dim=1))[:, -1]
        sorted_logits, order = torch.sort(logits, descending=True)
        mass = torch.cumsum(torch.softmax(sorted_logits, dim=-1), dim=-1)
        remove = mass > top_p
        remove[:, 1:] = remove[:, :-1].clone()  # the mass BEFORE a token decides
        remove[:, 0] = False
        for row in range(rows):
            logits[row, order[row][remove[row]]] = -1e12
            logits[row, last[row]] = -1e12  # never the previous token
        token = torch.multinomial(torch.softmax(logits, dim=-1), 1).view(rows)
        token[last == EOS] = EOS
        predictions.append(token)
    return torch.stack(predictions[1:], dim=1).tolist()


def randomise(model: nn.Module, seed: int, unk_bias: float = 0.0) -> None:
    """Weights far from the 0.02 init so that captions vary (the tie stays a tie). The pad/unk
    row of the word embedding stays zero, as in every trained original checkpoint (it has no
    gradient); a high output bias of id 0 makes the decoders generate [UNK]."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.startswith("visual."):
                continue
            if parameter.dim() > 1:
                parameter.normal_(0.0, parameter.shape[1] ** -0.5)
            elif "norm" not in name:
                parameter.normal_(0.0, 0.5)
        for head in ("textual", "backward_textual"):
            if hasattr(model, head):
                getattr(model, head).embedding.words.weight[PAD].zero_()
                getattr(model, head).output.bias[PAD] = unk_bias


CONFIG_BASE = """\
DATA:
  VOCAB_SIZE: {V}
  UNK_INDEX: 0
  SOS_INDEX: 1
  EOS_INDEX: 2
  MASK_INDEX: 3
  MAX_CAPTION_LENGTH: {MAX_LEN}
MODEL:
  NAME: virtex
  VISUAL:
    NAME: "torchvision::resnet50"
  DECODER:
    NAME: beam_search
    BEAM_SIZE: 5
    MAX_DECODING_STEPS: 10
"""

CONFIG = """\
_BASE_: base.yaml
MODEL:
  NAME: {name}
  VISUAL:
    NAME: "torchvision::resnet18"
  TEXTUAL:
    NAME: "{family}::L{L}_H{H}_A{A}_F{F_}"
  DECODER:
    BEAM_SIZE: 3
"""


def write_original(
    tmp_path: Path, bidirectional: bool, prenorm: bool
) -> tuple[Original, Path, Path]:
    torch.manual_seed(0)
    original = Original(bidirectional, prenorm)
    # Output bias of id 0 (pad = unk) high enough that the decoders generate [UNK] but not only
    # [UNK]; the pre-norm stack (no final LayerNorm) has larger logits.
    randomise(original, 1, unk_bias=4.0 if prenorm else 1.5)
    original.eval()
    checkpoint = tmp_path / "checkpoint_5000.pth"
    torch.save(
        {
            "model": original.state_dict(),
            "optimizer": {"state": {}},
            "scheduler": {"last": 3},
            "scaler": {},
            "iteration": 5000,
        },
        checkpoint,
    )
    (tmp_path / "base.yaml").write_text(CONFIG_BASE.format(V=V, MAX_LEN=MAX_LEN))
    config = tmp_path / "config.yaml"
    config.write_text(
        CONFIG.format(
            name="virtex" if bidirectional else "captioning",
            family="transdec_prenorm" if prenorm else "transdec_postnorm",
            L=L,
            H=H,
            A=A,
            F_=F_,
        )
    )
    return original, checkpoint, config


def captions_batch() -> Batch:
    generator = torch.Generator().manual_seed(3)
    lengths = torch.tensor([7, 4, 5])
    tokens = torch.zeros(3, 7, dtype=torch.long)
    for row, length in enumerate(lengths.tolist()):
        tokens[row, 0], tokens[row, length - 1] = SOS, EOS
        tokens[row, 1 : length - 1] = torch.randint(4, V, (length - 2,), generator=generator)
    tokens[0, 2] = tokens[0, 5] = tokens[2, 1] = 0  # [UNK] inside captions (pad = unk = 0)
    images = torch.randn(3, 3, 64, 64, generator=generator)
    return Batch(image_ids=torch.arange(3), images=images, tokens=tokens, lengths=lengths)


def until_eos(row: list[int]) -> list[int]:
    return row[: row.index(EOS) + 1] if EOS in row else row


@pytest.mark.parametrize(("bidirectional", "prenorm"), [(True, False), (False, True)])
def test_loaded_original_has_the_same_loss_and_captions(
    tmp_path: Path, bidirectional: bool, prenorm: bool
) -> None:
    original, checkpoint, config = write_original(tmp_path, bidirectional, prenorm)
    model, spec = load_original(checkpoint, config)
    assert isinstance(model, Captioning)
    assert spec.config.kind == ("bicaptioning" if bidirectional else "captioning")
    assert spec.vocab.pad == spec.vocab.unk == 0 and spec.vocab.size == V
    assert spec.config.textual.norm_first is prenorm
    assert spec.config.decoder.mode == "legacy" and spec.config.decoder.beam_size == 3
    assert spec.config.decoder.max_steps == 10
    batch = captions_batch()
    with torch.no_grad():
        expected = original.loss(batch.images, batch.tokens, batch.lengths)
        ours = model(batch)
        assert ours.loss.item() == pytest.approx(expected.item(), rel=1e-5)
        for beam_size in (3, 1):
            theirs = original.caption(batch.images, beam_size, max_steps=10)
            generated = (
                model.generate(batch.images)
                if beam_size == 3
                else model.generate(batch.images, beam_size=1)
            )
            assert [until_eos(row) for row in generated.tolist()] == [until_eos(r) for r in theirs]
            assert any(0 in until_eos(row) for row in theirs)  # [UNK] was generated
    assert len({t for row in theirs for t in row}) > 3  # captions are not degenerate


def test_nucleus_config_samples_as_the_original(tmp_path: Path) -> None:
    original, checkpoint, config = write_original(tmp_path, True, False)
    config.write_text(
        config.read_text().replace(
            "  DECODER:\n    BEAM_SIZE: 3\n",
            "  DECODER:\n    NAME: nucleus_sampling\n    NUCLEUS_SIZE: 0.8\n",
        )
    )
    model, spec = load_original(checkpoint, config)
    assert spec.config.decoder.mode == "legacy_nucleus" and spec.config.decoder.top_p == 0.8
    images = captions_batch().images
    repeats = unknown = 0
    for seed in range(4):
        torch.manual_seed(seed)
        with torch.no_grad():
            theirs = original_sample(original, images, 0.8, max_steps=10)
            ours = model.generate(images, generator=torch.Generator().manual_seed(seed))
        assert ours.tolist() == theirs
        for row in theirs:
            row = until_eos(row)
            unknown += row.count(0)
            assert all(a != b for a, b in zip(row, row[1:]))  # the no-repeat rule
    assert unknown > 0  # [UNK] was sampled (and then fed back as a zero embedding)
    # Our own nucleus mode on the same model, for contrast, does repeat tokens.
    for seed in range(4):
        with torch.no_grad():
            plain = model.generate(
                images, mode="nucleus", nucleus=0.8, generator=torch.Generator().manual_seed(seed)
            )
        for row in plain.tolist():
            row = until_eos(row)
            repeats += sum(a == b for a, b in zip(row, row[1:]))
    assert repeats > 0


def test_shape_mismatch_names_the_keys(tmp_path: Path) -> None:
    _, checkpoint, config = write_original(tmp_path, True, False)
    config.write_text(config.read_text().replace(f"_H{H}_", "_H64_"))
    with pytest.raises(ValueError, match=r"shape mismatch: .*textual\.embedding\.words\.weight"):
        load_original(checkpoint, config)


def test_unknown_original_key_is_named(tmp_path: Path) -> None:
    original, checkpoint, config = write_original(tmp_path, False, False)
    state = original.state_dict()
    state["textual.extra.weight"] = torch.zeros(1)
    state["visual.cnn.layer9.weight"] = torch.zeros(1)
    torch.save({"model": state}, checkpoint)
    with pytest.raises(ValueError, match=r"unexpected keys: .*visual\.layer9\.weight"):
        load_original(checkpoint, config)
    torch.save({"model": {"heads.x": torch.zeros(1)}}, checkpoint)
    with pytest.raises(ValueError, match="unexpected key 'heads.x'"):
        load_original(checkpoint, config)


def test_name_parsers() -> None:
    textual = parse_textual_name("transdec_postnorm::L1_H2048_A32_F8192", 0.1, 30)
    assert (textual.layers, textual.width, textual.heads, textual.ffn) == (1, 2048, 32, 8192)
    assert not textual.norm_first
    assert parse_textual_name("transdec_prenorm::L4_H1024_A16_F4096", 0.1, 30).norm_first
    assert parse_visual_name("torchvision::wide_resnet50_2").name == "wide_resnet50_2"
    with pytest.raises(ValueError, match="missing field"):
        parse_textual_name("transdec_postnorm::L1_H2048_A32", 0.1, 30)
    with pytest.raises(ValueError, match="cannot read field 'X3'"):
        parse_textual_name("transdec_postnorm::L1_H2048_A32_F8_X3", 0.1, 30)
    with pytest.raises(ValueError, match="not supported"):
        parse_visual_name("blind")


@pytest.mark.parametrize(
    ("name", "outputs", "cls"),
    [("token_classification", V, TokenClassification), ("multilabel_classification", 81, None)],
)
def test_classification_checkpoints_load(
    tmp_path: Path, name: str, outputs: int, cls: type | None
) -> None:
    torch.manual_seed(0)
    visual = OriginalVisual()
    head = nn.Linear(512, outputs)
    state = {f"visual.{k}": v for k, v in visual.state_dict().items()}
    state |= {f"textual.output.{k}": v for k, v in head.state_dict().items()}
    torch.save({"model": state}, tmp_path / "c.pth")
    (tmp_path / "base.yaml").write_text(CONFIG_BASE.format(V=V, MAX_LEN=MAX_LEN))
    (tmp_path / "c.yaml").write_text(
        f"_BASE_: base.yaml\nMODEL:\n  NAME: {name}\n  VISUAL:\n    NAME: torchvision::resnet18\n"
        "  TEXTUAL:\n    NAME: none\n"
    )
    model, spec = load_original(tmp_path / "c.pth", tmp_path / "c.yaml")
    if cls is None:
        assert isinstance(model, MultilabelClassification) and spec.num_classes == 81
    else:
        assert isinstance(model, cls)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        pooled = visual.eval()(images).mean(dim=(2, 3))
        logits = head(pooled)
        torch.testing.assert_close(model.textual(model.visual(images)), logits)
    # The loss on a fixed batch, against the original's loop written from its description:
    # per image, minus the mean log-softmax of the unique labels outside its ignore list.
    lists = [[1, 7, 0, 7, 9, 2], [5, 3, 12, 0]] if cls else [[4, 4, 17, 0], [80, 0, 0]]
    ignore = {0, 1, 2, 3} if cls else {0}
    expected = 0.0
    for row, ids in enumerate(lists):
        unique = sorted(set(ids) - ignore)
        log_probs = torch.log_softmax(logits[row].double(), 0)
        expected -= float(log_probs[unique].mean())
    expected /= len(lists)
    targets = torch.zeros(2, outputs)
    for row, ids in enumerate(lists):
        targets[row, [k for k in ids if k not in ignore]] = 1.0
    fields = (torch.arange(2), images, torch.ones(2, 2, dtype=torch.long), torch.tensor([2, 2]))
    batch = TokenBatch(*fields, targets) if cls else MultilabelBatch(*fields, targets)
    with torch.no_grad():
        assert model(batch).loss.item() == pytest.approx(expected, rel=1e-4)
