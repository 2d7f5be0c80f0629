"""What the GPU path relies on, checked on the CPU.

- causal self-attention reaches ``F.scaled_dot_product_attention`` as ``is_causal=True`` with
  no materialised mask (a mask rules out the flash kernels);
- ``compile_decoding`` / ``CompiledOrEager``: compiled decoding returns eager's captions, and
  a compile that cannot run falls back to eager with one warning.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from models_testing import Batch, random_captions

from virtex_models import Captioning, ModelConfig, VocabSpec, compiling
from virtex_models.compiling import CompiledOrEager, compile_decoding

VOCAB = VocabSpec(size=30, pad=0, unk=1, sos=2, eos=3, mask=4)
TINY = {
    "visual": {"name": "resnet18"},
    "textual": {"layers": 1, "width": 32, "heads": 2, "ffn": 64, "max_length": 12},
}


def build(kind: str, layers: int = 1) -> Captioning:
    torch.manual_seed(0)
    textual = {**TINY["textual"], "layers": layers}
    model = ModelConfig.from_dict({**TINY, "textual": textual, "kind": kind}).build(VOCAB)
    assert isinstance(model, Captioning)
    return model


def caption_batch() -> Batch:
    # Caption length 7 != the 1 x 1 grid of a 32 px image: self- and cross-attention calls differ
    # in their key length.
    tokens, lengths = random_captions([7, 5, 3], VOCAB.size, 2, 3, 0, first_word=5, seed=1)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    return Batch(image_ids=torch.arange(3), images=images, tokens=tokens, lengths=lengths)


@pytest.fixture
def sdpa_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """Every call of ``F.scaled_dot_product_attention``: its mask, ``is_causal`` and shapes."""
    calls: list[dict[str, Any]] = []
    original = F.scaled_dot_product_attention

    def recording(q: Any, k: Any, v: Any, *args: Any, **kwargs: Any) -> Any:
        mask = kwargs.get("attn_mask", args[0] if args else None)
        calls.append(
            {
                "mask": mask,
                "is_causal": kwargs.get("is_causal", False),
                "q_len": q.shape[-2],
                "k_len": k.shape[-2],
            }
        )
        return original(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    yield calls


@pytest.mark.parametrize(("kind", "decoders"), [("captioning", 1), ("bicaptioning", 2)])
@pytest.mark.parametrize("layers", [1, 2])
def test_training_forward_attention_is_causal_without_a_mask(
    sdpa_calls: list[dict[str, Any]], kind: str, decoders: int, layers: int
) -> None:
    model = build(kind, layers).train()
    batch = caption_batch()
    model(batch).loss.backward()
    length = batch.tokens.shape[1]
    self_calls = [c for c in sdpa_calls if c["k_len"] == length and c["q_len"] == length]
    cross_calls = [c for c in sdpa_calls if c["k_len"] == 1]  # the 1 x 1 grid
    # One self-attention and one cross-attention per layer and decoder, nothing else.
    assert len(self_calls) == decoders * layers
    assert len(cross_calls) == decoders * layers
    assert len(sdpa_calls) == 2 * decoders * layers
    for call in self_calls:
        assert call["mask"] is None, "a materialised mask reached the causal self-attention"
        assert call["is_causal"] is True
    for call in cross_calls:
        assert call["mask"] is None and call["is_causal"] is False


def test_incremental_steps_pass_no_mask(sdpa_calls: list[dict[str, Any]]) -> None:
    model = build("captioning").eval()
    model.generate(caption_batch().images, mode="beam", beam_size=2, max_steps=4)
    assert sdpa_calls and all(call["mask"] is None for call in sdpa_calls)
    # One query token attends to the whole cache: is_causal would be wrong for a 1 x T product
    # (PyTorch aligns its mask to the top-left); only the first, 1 x 1, step may say causal.
    assert all(not call["is_causal"] for call in sdpa_calls if call["k_len"] > 1)


# ------------------------------------------------------------------------------ compile
def _failing_backend(graph: Any, example_inputs: Any) -> Any:
    raise RuntimeError("planted backend failure")


def test_compile_falls_back_to_eager_with_one_warning_when_the_backend_fails() -> None:
    calls = []

    def function(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return x * 2 + 1

    with pytest.warns(UserWarning, match=r"^train\.compile: torch\.compile is not available"):
        wrapped = CompiledOrEager(function, what="train.compile", backend=_failing_backend)
        assert wrapped.compiled  # nothing is known to fail before the first call
        out = wrapped(torch.ones(3))
    torch.testing.assert_close(out, torch.full((3,), 3.0))
    assert not wrapped.compiled and "planted backend failure" in str(wrapped.reason)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        torch.testing.assert_close(wrapped(torch.zeros(2)), torch.ones(2))


def test_compile_without_a_cxx_compiler_runs_eagerly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compiling.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    assert "C++ compiler" in str(compiling.compile_unavailable("cpu", "inductor"))
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler"):
        wrapped = CompiledOrEager(torch.sin, what="model.decoder.compile", device="cpu")
    assert not wrapped.compiled
    torch.testing.assert_close(wrapped(torch.zeros(2)), torch.zeros(2))
    # Other backends have no requirement checked here.
    assert compiling.compile_unavailable("cpu", "aot_eager") is None


def test_errors_of_the_model_are_not_swallowed_after_compiling_worked() -> None:
    def function(x: torch.Tensor) -> torch.Tensor:
        return x.view(2, 3)

    wrapped = CompiledOrEager(function, what="train.compile", backend="eager")
    wrapped(torch.zeros(6))
    with pytest.raises(RuntimeError):
        wrapped(torch.zeros(5))


@pytest.mark.parametrize("mode", ["beam", "greedy"])
def test_compiled_decoding_returns_eager_captions(mode: str) -> None:
    # aot_eager traces and runs the step graph exactly as inductor would receive it, without
    # generating C++ (seconds instead of a minute); the inductor run is the slow test below.
    model = build("captioning").eval()
    images = caption_batch().images
    eager = model.generate(images, mode=mode, beam_size=3, max_steps=8)
    wrapper = compile_decoding(model, backend="aot_eager")
    assert model.textual.step is wrapper and wrapper.compiled
    assert compile_decoding(model) is wrapper  # idempotent
    compiled = model.generate(images, mode=mode, beam_size=3, max_steps=8)
    assert wrapper.compiled
    assert torch.equal(eager, compiled)


def test_decoder_config_switch_installs_the_compiled_step(monkeypatch: pytest.MonkeyPatch) -> None:
    config = ModelConfig.from_dict({**TINY, "kind": "captioning", "decoder": {"compile": True}})
    assert config.decoder.compile
    model = config.build(VOCAB).eval()
    assert not isinstance(model.textual.step, CompiledOrEager)  # nothing compiled before use
    backends = []
    real = compiling.compile_decoding

    def spy(model: Any, **kwargs: Any) -> Any:
        backends.append(kwargs)
        return real(model, backend="aot_eager")

    # (by module object: ``virtex_models.objectives`` is also a function of the package)
    module = importlib.import_module("virtex_models.objectives.captioning")
    monkeypatch.setattr(module, "compile_decoding", spy)
    model.generate(caption_batch().images, max_steps=3)
    assert isinstance(model.textual.step, CompiledOrEager) and backends


@pytest.mark.slow
def test_inductor_compiled_decoding_matches_eager() -> None:
    model = build("captioning").eval()
    images = caption_batch().images
    eager = model.generate(images, mode="beam", beam_size=3, max_steps=8)
    wrapper = compile_decoding(model)
    compiled = model.generate(images, mode="beam", beam_size=3, max_steps=8)
    assert wrapper.compiled, wrapper.reason
    assert torch.equal(eager, compiled)
