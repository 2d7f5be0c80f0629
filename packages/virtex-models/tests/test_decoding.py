"""Each KV-cached decoder returns exactly what a naive full-recompute decoder returns.

The naive decoders below re-run the whole head over the whole prefix at every step, one image
(and for beam search one hypothesis) at a time, with Python lists: a second algorithm.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from virtex_models import Captioning, ModelConfig, TextualConfig, TransformerTextualHead, VocabSpec
from virtex_models.decoding import beam_search, greedy, legacy_beam_search, nucleus

V, C, SOS, EOS, PAD = 23, 16, 2, 3, 0


def make_head(seed: int, norm_first: bool = False) -> TransformerTextualHead:
    """A head whose captions vary and sometimes end: the 0.02 init with a tied output layer
    mostly repeats its input token, which would make these comparisons weak."""
    torch.manual_seed(seed)
    config = TextualConfig(
        layers=2, width=32, heads=4, ffn=64, norm_first=norm_first, dropout=0.0, max_length=16
    )
    head = TransformerTextualHead(config, V, C, PAD).eval()
    with torch.no_grad():
        for name, parameter in head.named_parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, parameter.shape[1] ** -0.5)
            elif "norm" not in name:
                parameter.normal_(0.0, 0.5)
        head.output.weight = torch.nn.Parameter(torch.randn(V, 32) * 0.4)  # untied here
        head.output.bias[EOS] += 1.5
    return head


def next_log_probs(head: TransformerTextualHead, visual: Tensor, prefix: list[int]) -> Tensor:
    """Full recompute: log-probabilities ``(V,)`` after ``prefix`` for one image ``(C, h, w)``."""
    tokens = torch.tensor([prefix])
    logits = head(visual[None], tokens, torch.tensor([len(prefix)]))
    return torch.log_softmax(logits[0, -1].double(), dim=-1)


def until_eos(row: list[int]) -> list[int]:
    return row[: row.index(EOS) + 1] if EOS in row else row


def naive_greedy(head: TransformerTextualHead, visual: Tensor, steps: int, min_len: int) -> list:
    out = []
    for image in visual:
        words: list[int] = []
        for step in range(steps):
            log_probs = next_log_probs(head, image, [SOS, *words])
            if step < min_len:
                log_probs[EOS] = float("-inf")
            words.append(int(log_probs.argmax()))
            if words[-1] == EOS:
                break
        out.append(words)
    return out


def naive_beam(
    head: TransformerTextualHead, visual: Tensor, k: int, steps: int, min_len: int, alpha: float
) -> list:
    out = []
    for image in visual:
        hyps: list[tuple[list[int], float, bool]] = [([], 0.0, False)]
        for step in range(steps):
            candidates = []
            for words, score, done in hyps:
                if done:
                    candidates.append((words, score, True))
                    continue
                log_probs = next_log_probs(head, image, [SOS, *words])
                if step < min_len:
                    log_probs[EOS] = float("-inf")
                for token in range(V):
                    candidates.append(
                        (words + [token], score + float(log_probs[token]), token == EOS)
                    )
            hyps = sorted(candidates, key=lambda h: -h[1])[:k]
            if all(done for _, _, done in hyps):
                break
        best = max(hyps, key=lambda h: h[1] / (len(h[0]) ** alpha if alpha else 1.0))
        out.append(best[0])
    return out


def naive_nucleus(
    head: TransformerTextualHead,
    visual: Tensor,
    steps: int,
    min_len: int,
    top_p: float,
    temperature: float,
    generator: torch.Generator,
) -> list:
    rows = [[] for _ in range(visual.shape[0])]  # type: list[list[int]]
    done = [False] * visual.shape[0]
    for step in range(steps):
        table = torch.zeros(visual.shape[0], V)
        orders = []
        for row, image in enumerate(visual):
            prefix = [SOS] + [t for t in rows[row] if True]
            logits = head(image[None], torch.tensor([prefix]), torch.tensor([len(prefix)]))[0, -1]
            logits = logits.float() / temperature
            if step < min_len:
                logits[EOS] = float("-inf")
            probs = torch.softmax(logits, dim=-1)
            sorted_probs, order = probs.sort(descending=True)
            mass = 0.0
            for index, p in enumerate(sorted_probs.tolist()):
                if mass >= top_p:
                    sorted_probs[index] = 0.0
                mass += p
            table[row] = sorted_probs
            orders.append(order)
        drawn = torch.multinomial(table, 1, generator=generator)[:, 0]
        for row in range(visual.shape[0]):
            token = PAD if done[row] else int(orders[row][drawn[row]])
            rows[row].append(token)
            done[row] = done[row] or token == EOS
        if all(done):
            break
    return [until_eos(row) for row in rows]


def naive_legacy(head: TransformerTextualHead, visual: Tensor, k: int, steps: int) -> list:
    """The original decoder from its described semantics, re-running the model every step."""
    results = []
    beams_per_image = []
    for image in visual:
        first = next_log_probs(head, image, [SOS])
        top = first.topk(k)
        beams_per_image.append(
            [([int(t)], float(s)) for s, t in zip(top.values.tolist(), top.indices.tolist())]
        )
    for _ in range(steps - 1):
        if all(words[-1] == EOS for beams in beams_per_image for words, _ in beams):
            break
        for index, image in enumerate(visual):
            candidates = []
            for words, score in beams_per_image[index]:
                log_probs = next_log_probs(head, image, words)  # no [SOS]: generated tokens only
                log_probs[words[-1]] = -10000.0
                if words[-1] == EOS:
                    candidates.append((words + [EOS], score))
                    continue
                top = log_probs.topk(2)
                for value, token in zip(top.values.tolist(), top.indices.tolist()):
                    candidates.append((words + [token], score + value))
            beams_per_image[index] = sorted(candidates, key=lambda h: -h[1])[:k]
    for beams in beams_per_image:
        results.append(max(beams, key=lambda h: h[1])[0])
    return results


def rows_until_eos(tokens: Tensor) -> list[list[int]]:
    return [until_eos(row) for row in tokens.tolist()]


def assert_padded_after_eos(tokens: Tensor, fill: int) -> None:
    for row in tokens.tolist():
        if EOS in row:
            assert all(t == fill for t in row[row.index(EOS) + 1 :])


@pytest.fixture(scope="module")
def visual() -> Tensor:
    return torch.randn(3, C, 2, 2, generator=torch.Generator().manual_seed(5))


def test_fixture_heads_make_varied_captions(visual: Tensor) -> None:
    with torch.no_grad():
        rows = [row for seed in (0, 1, 7) for row in naive_greedy(make_head(seed), visual, 12, 0)]
    assert any(row[-1] == EOS and len(row) > 2 for row in rows)
    assert len({token for row in rows for token in row}) > 8


@pytest.mark.parametrize(("seed", "min_len"), [(0, 0), (1, 3), (7, 0)])
def test_greedy_equals_full_recompute(visual: Tensor, seed: int, min_len: int) -> None:
    head = make_head(seed, norm_first=bool(seed))
    with torch.no_grad():
        cached = greedy(
            head, head.start(visual), sos=SOS, eos=EOS, pad=PAD, max_steps=12, min_length=min_len
        )
        expected = naive_greedy(head, visual, 12, min_len)
    assert rows_until_eos(cached) == expected
    assert_padded_after_eos(cached, PAD)
    assert all(len(row) > min_len for row in expected)


@pytest.mark.parametrize(
    ("seed", "k", "min_len", "alpha"), [(0, 3, 0, 0.0), (1, 4, 2, 1.0), (7, 3, 0, 0.0)]
)
def test_beam_search_equals_full_recompute(
    visual: Tensor, seed: int, k: int, min_len: int, alpha: float
) -> None:
    head = make_head(seed)
    with torch.no_grad():
        cached = beam_search(
            head,
            head.start(visual, beams=k),
            sos=SOS,
            eos=EOS,
            pad=PAD,
            max_steps=10,
            min_length=min_len,
            length_penalty=alpha,
        )
        expected = naive_beam(head, visual, k, 10, min_len, alpha)
    assert rows_until_eos(cached) == expected
    assert_padded_after_eos(cached, PAD)


def test_beam_search_finds_a_caption_at_least_as_likely_as_greedy(visual: Tensor) -> None:
    """Log-likelihoods by full recompute (length penalty 0: beam search ranks by the sum).

    On these heads every beam caption is at least as likely as the greedy one, finished or cut
    at ``max_steps`` (a sum over the same kind of prefix), and strictly more likely for most:
    a beam search that kept its worst hypothesis, or never left the greedy path, fails."""
    compared = both_finished = better = 0
    for seed in (0, 3, 7):
        head = make_head(seed)

        def score(words: list[int], image: Tensor, head: TransformerTextualHead = head) -> float:
            prefix, total = [SOS], 0.0
            for token in words:
                total += float(next_log_probs(head, image, prefix)[token])
                prefix.append(token)
            return total

        with torch.no_grad():
            best = rows_until_eos(
                beam_search(
                    head, head.start(visual, beams=5), sos=SOS, eos=EOS, pad=PAD, max_steps=8
                )
            )
            plain = rows_until_eos(
                greedy(head, head.start(visual), sos=SOS, eos=EOS, pad=PAD, max_steps=8)
            )
            for image, a, b in zip(visual, best, plain):
                beam_score, greedy_score = score(a, image), score(b, image)
                assert beam_score >= greedy_score - 1e-6, (seed, a, b)
                compared += 1
                both_finished += a[-1] == EOS and b[-1] == EOS
                better += beam_score > greedy_score + 1e-3
    # The fixtures exercise what the test claims: finished captions on both sides, and gains.
    assert compared == 9 and both_finished >= 2 and better >= 6


@pytest.mark.parametrize(("top_p", "temperature"), [(0.9, 1.0), (0.5, 0.7)])
def test_nucleus_equals_full_recompute_with_the_same_seed(
    visual: Tensor, top_p: float, temperature: float
) -> None:
    head = make_head(4)
    with torch.no_grad():
        cached = nucleus(
            head,
            head.start(visual),
            sos=SOS,
            eos=EOS,
            pad=PAD,
            max_steps=12,
            min_length=2,
            top_p=top_p,
            temperature=temperature,
            generator=torch.Generator().manual_seed(11),
        )
        expected = naive_nucleus(
            head, visual, 12, 2, top_p, temperature, torch.Generator().manual_seed(11)
        )
        again = nucleus(
            head,
            head.start(visual),
            sos=SOS,
            eos=EOS,
            pad=PAD,
            max_steps=12,
            top_p=top_p,
            temperature=temperature,
            generator=torch.Generator().manual_seed(12),
        )
    assert rows_until_eos(cached) == expected
    assert_padded_after_eos(cached, PAD)
    assert all(len(row) > 2 for row in expected)
    assert again.shape[0] == 3  # another seed runs too (and usually differs)


def test_nucleus_with_tiny_top_p_is_greedy(visual: Tensor) -> None:
    head = make_head(5)
    with torch.no_grad():
        sampled = nucleus(
            head,
            head.start(visual),
            sos=SOS,
            eos=EOS,
            pad=PAD,
            max_steps=10,
            top_p=1e-6,
            generator=torch.Generator().manual_seed(0),
        )
        argmax = greedy(head, head.start(visual), sos=SOS, eos=EOS, pad=PAD, max_steps=10)
    assert rows_until_eos(sampled) == rows_until_eos(argmax)


@pytest.mark.parametrize(("seed", "k"), [(0, 3), (1, 1), (7, 5), (3, 4)])
def test_legacy_beam_search_equals_its_described_semantics(
    visual: Tensor, seed: int, k: int
) -> None:
    head = make_head(seed)
    with torch.no_grad():
        cached = legacy_beam_search(
            head, head.start(visual), sos=SOS, eos=EOS, beam_size=k, max_steps=12
        )
        expected = naive_legacy(head, visual, k, 12)
    assert rows_until_eos(cached) == [until_eos(row) for row in expected]
    assert_padded_after_eos(cached, EOS)
    for row in cached.tolist():  # no immediate repeats before the end
        body = until_eos(row)
        assert all(a != b for a, b in zip(body, body[1:]))


def test_decoders_refuse_more_steps_than_positions(visual: Tensor) -> None:
    head = make_head(0)
    with pytest.raises(ValueError, match="positions"):
        greedy(head, head.start(visual), sos=SOS, eos=EOS, pad=PAD, max_steps=17)


def test_generate_routes_modes_and_defaults() -> None:
    vocab = VocabSpec(size=V, pad=PAD, unk=1, sos=SOS, eos=EOS, mask=4)
    config = ModelConfig.from_dict(
        {
            "kind": "captioning",
            "visual": {"name": "resnet18"},
            "textual": {"layers": 1, "width": 32, "heads": 2, "ffn": 64, "max_length": 12},
            "decoder": {"beam_size": 3, "max_steps": 6},
        }
    )
    torch.manual_seed(0)
    model = config.build(vocab).eval()
    assert isinstance(model, Captioning)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        grid = model.visual(images)
        head = model.textual
        default = model.generate(images)
        assert torch.equal(
            default,
            beam_search(head, head.start(grid, beams=3), sos=SOS, eos=EOS, pad=PAD, max_steps=6),
        )
        assert torch.equal(
            model.generate(images, beam_size=1),
            greedy(head, head.start(grid), sos=SOS, eos=EOS, pad=PAD, max_steps=6),
        )
        legacy = model.generate(images, mode="legacy", beam_size=2, max_steps=5)
        assert torch.equal(
            legacy,
            legacy_beam_search(head, head.start(grid), sos=SOS, eos=EOS, beam_size=2, max_steps=5),
        )
        sampled = model.generate(images, nucleus=0.8, generator=torch.Generator().manual_seed(1))
        assert torch.equal(
            sampled,
            nucleus(
                head,
                head.start(grid),
                sos=SOS,
                eos=EOS,
                pad=PAD,
                max_steps=6,
                top_p=0.8,
                generator=torch.Generator().manual_seed(1),
            ),
        )
    assert default.dtype == torch.long and default.shape[0] == 2 and default.shape[1] <= 6
    with pytest.raises(ValueError, match="mode"):
        model.generate(images, mode="sample")
