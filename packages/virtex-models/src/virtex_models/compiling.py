"""``torch.compile`` that falls back to eager with one warning when it cannot run here.

Used by the training step (``train.compile``) and by caption decoding
(``model.decoder.compile``: :func:`compile_decoding`). Compilation is lazy (it happens at the
first call), so two things can stop it:

- the backend cannot run on this machine: TorchInductor needs a C++ compiler for CPU code and
  Triton for CUDA code. :func:`compile_unavailable` checks that up front;
- the backend fails on this model (an unsupported operation, a bug): the first call raises
  ``BackendCompilerFailed``, before any compiled code ran.

Either way :class:`CompiledOrEager` warns once (``UserWarning``, one line naming the switch)
and runs the function eagerly from then on: the results are those of eager mode.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import warnings
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["CompiledOrEager", "compile_decoding", "compile_unavailable"]


def compile_unavailable(
    device: torch.device | str, backend: str | Callable[..., Any] | None = None
) -> str | None:
    """Why ``torch.compile(backend=backend)`` cannot run for ``device`` here (``None``: it can).

    Only the default backend (``inductor``, also ``backend=None``) has requirements checked
    here: a C++ compiler (``$CXX``, ``c++``, ``g++`` or ``clang++``) for CPU code, Triton for
    CUDA code.
    """
    if backend not in (None, "inductor"):
        return None
    device_type = torch.device(device).type
    if device_type == "cpu":
        names = [os.environ.get("CXX", ""), "c++", "g++", "clang++"]
        if not any(name and shutil.which(name) for name in names):
            return "no C++ compiler found ($CXX, c++, g++, clang++) for TorchInductor's CPU code"
    elif device_type == "cuda" and importlib.util.find_spec("triton") is None:
        return "Triton is not installed (TorchInductor's CUDA code needs it)"
    return None


class CompiledOrEager:
    """``torch.compile(function)``, or ``function`` itself once compiling proved impossible.

    Args:
        function: a module or callable.
        what: the config switch named in the warning (e.g. ``train.compile``).
        device: where ``function`` runs (decides what :func:`compile_unavailable` checks).
        backend: ``torch.compile``'s backend (``None``: its default, ``inductor``).
        **options: more ``torch.compile`` arguments (``dynamic``, ``mode`` ...).

    Attributes:
        compiled: ``True`` while the compiled function is in use.
        reason: why it fell back to eager (``None`` while compiled).
    """

    def __init__(
        self,
        function: Callable[..., Any],
        *,
        what: str,
        device: torch.device | str = "cpu",
        backend: str | Callable[..., Any] | None = None,
        **options: Any,
    ) -> None:
        self.function = function
        self.what = what
        self.reason = compile_unavailable(device, backend)
        self._compiled: Callable[..., Any] | None = None
        self._proven = False  # one call succeeded: later errors are the model's, not compile's
        if self.reason is None:
            if backend is not None:
                options["backend"] = backend
            self._compiled = torch.compile(function, **options)
        else:
            self._warn()
        functools.update_wrapper(self, function, updated=())

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def _warn(self) -> None:
        warnings.warn(
            f"{self.what}: torch.compile is not available ({self.reason}); running eagerly",
            UserWarning,
            stacklevel=3,
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._compiled is None:
            return self.function(*args, **kwargs)
        if self._proven:
            return self._compiled(*args, **kwargs)
        try:
            result = self._compiled(*args, **kwargs)
        except torch._dynamo.exc.BackendCompilerFailed as error:
            # Raised while compiling, before the compiled graph ran: eager is a clean retry.
            inner = getattr(error, "inner_exception", None) or error
            message = (str(inner).splitlines() or [""])[0][:200]
            self.reason = f"the backend failed: {type(inner).__name__}: {message}"
            self._compiled = None
            self._warn()
            return self.function(*args, **kwargs)
        self._proven = True
        return result


def compile_decoding(
    model: torch.nn.Module,
    *,
    device: torch.device | str | None = None,
    backend: str | Callable[..., Any] | None = None,
) -> CompiledOrEager:
    """Compile the per-token decoding step of a captioning model (in place).

    Every decoder (:mod:`virtex_models.decoding`) calls ``model.textual.step`` once per token;
    this replaces that method on the instance by a :class:`CompiledOrEager` of it with
    ``dynamic=True`` (the key/value cache grows by one position per step: one graph serves every
    length). The decoding algorithms are unchanged; compiled and eager steps compute the same
    values up to floating-point reassociation.

    Args:
        model: a :class:`~virtex_models.Captioning` (anything with ``textual.step``).
        device: where decoding runs (default: the model's parameters' device).
        backend: ``torch.compile``'s backend (``None``: its default, ``inductor``).

    Returns:
        the wrapper now installed as ``model.textual.step``.
    """
    head = getattr(model, "textual", None)
    step = getattr(head, "step", None)
    if head is None or step is None:
        raise TypeError(f"compile_decoding: {type(model).__name__} has no textual.step to compile")
    if isinstance(step, CompiledOrEager):
        return step
    if device is None:
        device = next(model.parameters()).device
    wrapper = CompiledOrEager(
        step, what="model.decoder.compile", device=device, backend=backend, dynamic=True
    )
    # An instance attribute shadows the method; nn.Module.__setattr__ stores plain callables as is.
    object.__setattr__(head, "step", wrapper)
    return wrapper
