"""bf16 switches of captioning: how ``auto`` resolves, that bf16 runs only when asked, and
that the fp32 path keeps its captions.

The fp32 captions are compared with the decoders run by hand on the plain fp32 grid (the code
path of the previous release, itself checked against full-recompute decoders in
test_decoding.py); bf16 is observed from inside the model (autocast state, memory format).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from virtex_models import Captioning, ModelConfig, VocabSpec, precision
from virtex_models.decoding import DecoderConfig, beam_search, greedy, legacy_beam_search, nucleus

V, SOS, EOS, PAD = 23, 2, 3, 0
VOCAB = VocabSpec(size=V, pad=PAD, unk=1, sos=SOS, eos=EOS, mask=4)


@pytest.fixture(scope="module")
def model() -> Captioning:
    config = ModelConfig.from_dict(
        {
            "kind": "bicaptioning",
            "visual": {"name": "resnet18"},
            "textual": {"layers": 1, "width": 32, "heads": 2, "ffn": 64, "max_length": 12},
        }
    )
    torch.manual_seed(0)
    built = config.build(VOCAB).eval()
    assert isinstance(built, Captioning)
    with torch.no_grad():  # varied captions that sometimes end early (ragged beams)
        built.textual.output.bias[EOS] += 2.0
    return built


@pytest.fixture(scope="module")
def images() -> Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))


@pytest.fixture
def no_native_bf16(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    yield


@pytest.fixture
def native_bf16(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    yield


class Spy:
    """Records, at each call of a module, autocast state and the input's memory format."""

    def __init__(self, module: nn.Module) -> None:
        self.calls: list[tuple[bool, bool]] = []
        self.handle = module.register_forward_pre_hook(self.hook)

    def hook(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0]
        channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
        self.calls.append((torch.is_autocast_enabled("cpu"), channels_last))


def test_fp32_generate_is_the_plain_decoders_on_the_fp32_grid(
    model: Captioning, images: Tensor, native_bf16: None
) -> None:
    # Even where bf16 is native, "off" (and the library default) must give today's captions.
    head = model.textual
    with torch.no_grad():
        grid = model.visual(images)
        special = {"sos": SOS, "eos": EOS}
        expected = {
            "beam": beam_search(head, head.start(grid, beams=3), **special, pad=PAD, max_steps=10),
            "greedy": greedy(head, head.start(grid), **special, pad=PAD, max_steps=10),
            "legacy": legacy_beam_search(
                head, head.start(grid), **special, beam_size=3, max_steps=10
            ),
            "nucleus": nucleus(
                head,
                head.start(grid),
                **special,
                pad=PAD,
                max_steps=10,
                top_p=0.9,
                generator=torch.Generator().manual_seed(7),
            ),
        }
        lengths = {len(row) for row in expected["beam"].tolist()}
        for mode, tokens in expected.items():
            for setting in ("off", None):  # explicit, and DecoderConfig's default
                got = model.generate(
                    images,
                    mode=mode,
                    beam_size=3,
                    max_steps=10,
                    visual_bf16=setting,
                    generator=torch.Generator().manual_seed(7),
                )
                assert torch.equal(got, tokens), (mode, setting)
    # The fixture is a real test of ragged hypotheses: some captions end before others.
    assert (expected["beam"] == EOS).any() or (expected["greedy"] == EOS).any(), lengths


def test_auto_follows_the_native_bf16_check(
    monkeypatch: pytest.MonkeyPatch, model: Captioning, images: Tensor
) -> None:
    spy = Spy(model.visual)
    try:
        for native, expect in ((False, (False, False)), (True, (True, True))):
            monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda n=native: n)
            spy.calls.clear()
            out = model.generate(images, mode="greedy", max_steps=4, visual_bf16="auto")
            assert spy.calls == [expect]
            assert out.shape[0] == 3 and out.dtype == torch.long
    finally:
        spy.handle.remove()


def test_bf16_runs_only_when_asked(model: Captioning, images: Tensor, no_native_bf16: None) -> None:
    visual, step = Spy(model.visual), Spy(model.textual.transformer.layers[0])
    try:
        model.generate(images, mode="beam", beam_size=2, max_steps=4)  # default: off
        model.generate(images, mode="beam", beam_size=2, max_steps=4, visual_bf16="auto")
        assert visual.calls == [(False, False)] * 2
        assert not any(enabled for enabled, _ in step.calls)
        visual.calls.clear()
        step.calls.clear()
        # "on" forces bf16 even without native support; the decoder stays fp32 unless asked.
        out = model.generate(images, mode="legacy", beam_size=2, max_steps=4, visual_bf16="on")
        assert visual.calls == [(True, True)] and not any(e for e, _ in step.calls)
        step.calls.clear()
        out = model.generate(images, mode="greedy", max_steps=4, decoder_bf16=True)
        assert step.calls and all(enabled for enabled, _ in step.calls)
        assert out.dtype == torch.long and out.shape[0] == 3
        step.calls.clear()
        # A caller's own autocast (training-time validation) is left in force.
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model.generate(images, mode="greedy", max_steps=4)
        assert step.calls and all(enabled for enabled, _ in step.calls)
    finally:
        visual.handle.remove()
        step.handle.remove()


def test_bf16_grid_is_float32_and_close_to_fp32(model: Captioning, images: Tensor) -> None:
    with torch.no_grad():
        exact = model.visual_grid(images)
        reduced = model.visual_grid(images, bf16=True)
    assert reduced.dtype == torch.float32 and reduced.is_contiguous()
    # bf16 keeps 8 bits of mantissa: relative error ~2^-8 per product, a few times that after
    # the network; far below the grid's own scale.
    error = (reduced - exact).norm() / exact.norm()
    assert 0 < error < 0.05


def test_resolve_bf16_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.resolve_bf16("auto", "cpu") is False
    assert precision.resolve_bf16("on", "cpu") is True
    assert precision.resolve_bf16("off", "cpu") is False
    assert precision.resolve_bf16(True, "cpu") is True
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision.resolve_bf16("auto", "cpu") is True
    assert precision.resolve_bf16("off", "cpu") is False
    with pytest.raises(ValueError, match="auto"):
        precision.resolve_bf16("bf16", "cpu")
    with pytest.raises(ValueError, match="visual_bf16"):
        DecoderConfig(visual_bf16="maybe")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("capability", "flags", "native"),
    [
        ("AVX512", "fpu avx512f avx512_bf16 avx512_vnni", True),  # Zen 4 under torch 2.14
        ("AVX512", "fpu avx512f avx512_vnni", False),  # Ice Lake: emulated bf16
        ("AVX2", "fpu avx2 fma", False),
        ("AMX", "fpu", True),
        ("AVX512_BF16", "", True),
    ],
)
def test_cpu_native_bf16_reads_capability_and_cpu_flags(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capability: str, flags: str, native: bool
) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    real_path = Path

    def fake_path(name: str) -> Path:
        return cpuinfo if name == "/proc/cpuinfo" else real_path(name)

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(precision, "Path", fake_path)
    precision.cpu_has_native_bf16.cache_clear()
    try:
        assert precision.cpu_has_native_bf16() is native
    finally:
        precision.cpu_has_native_bf16.cache_clear()


def test_cpu_autocast_inference_attends_in_float32() -> None:
    from virtex_models.textual import Attention

    torch.manual_seed(0)
    attention = Attention(32, 4, dropout=0.0).eval()
    attention.out_proj = nn.Identity()  # type: ignore[assignment]  # see the product itself
    q, k, v = (torch.randn(3, 4, n, 8).bfloat16() for n in (1, 6, 6))
    # Independent: the attention product written out in float64.
    scores = (q.double() @ k.double().transpose(-1, -2)) / 8**0.5
    expected = (scores.softmax(-1) @ v.double()).transpose(1, 2).flatten(2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = attention.attend(q, k, v)
        attention.train()  # training keeps autocast's bf16 attention (fused kernels on GPU)
        trained = attention.attend(q, k, v)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)
    assert trained.dtype == torch.bfloat16
