"""Atomic checkpoint files, the ``latest`` pointer, pruning, and RNG state as plain tensors.

Every file is written to a temporary name in the same folder, flushed and ``fsync``-ed, then
renamed over the final name (``os.replace`` is atomic on POSIX), and the folder is ``fsync``-ed:
a crash or a full disk at any point leaves either the previous file or the new one, never a
truncated one. The ``latest`` pointer is updated only after its checkpoint is complete.

Checkpoints load with ``torch.load(weights_only=True)``: everything in them is a tensor, a
number, a string, ``None`` or a list/tuple/dict of those (RNG states included; no NumPy objects).

The layout is :mod:`virtex_models.pretrained`'s (``FORMAT_VERSION``, :class:`ModelCheckpoint`);
:func:`training_checkpoint` adds the trainer state to it, :func:`load_checkpoint` reads it back
through :func:`virtex_models.pretrained.read_checkpoint_file`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import random
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from virtex_models.atomic_file import atomic_link, atomic_write
from virtex_models.pretrained import FORMAT_VERSION, ModelCheckpoint, read_checkpoint_file

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "CheckpointManager",
    "atomic_save",
    "atomic_write_text",
    "load_checkpoint",
    "package_versions",
    "rng_state",
    "set_rng_state",
    "training_checkpoint",
]

_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the file."""


def _atomic(path: Path, write: Callable[[Any], object]) -> None:
    def wrap(error: Exception, written: int) -> CheckpointError:
        return CheckpointError(f"could not write {path}: {error} ({_space(written, path.parent)})")

    atomic_write(path, write, wrap_error=wrap)


def _space(written: int, directory: Path) -> str:
    # A full disk reaches torch.save as an opaque "unexpected pos A vs B": say what was free.
    mib = 2**20
    try:
        free = f"{shutil.disk_usage(directory).free / mib:.0f} MiB free there"
    except OSError:
        free = "free space unknown"
    return f"{written / mib:.1f} MiB written before the failure, {free}"


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save(obj)`` to ``path`` atomically (temporary file, fsync, rename).

    Raises:
        CheckpointError: the write or the rename failed (the previous file is intact and no
            temporary file is left behind).
    """
    _atomic(Path(path), lambda handle: torch.save(obj, handle))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    _atomic(Path(path), lambda handle: handle.write(text.encode("utf-8")))


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with errors naming the file.

    Raises:
        CheckpointError: the file is missing, unreadable or not a checkpoint dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        checkpoint = read_checkpoint_file(path, map_location=map_location)
    except ValueError as error:  # says what the file is instead, never "weights_only=False"
        raise CheckpointError(str(error)) from None
    version = checkpoint.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {version!r} is not {FORMAT_VERSION}")
    return checkpoint


def training_checkpoint(model: ModelCheckpoint, trainer_state: Mapping[str, Any]) -> dict[str, Any]:
    """What a training run writes: ``model`` plus the trainer state and package versions.

    Args:
        model: the model part (weights, spec, preprocessing, tokenizer, config YAML in ``extra``).
        trainer_state: :meth:`Trainer.state_dict` without ``model`` (optimizer, scaler, step,
            sampler, RNG ...).
    """
    return {**model.to_dict(), **trainer_state, "versions": package_versions()}


# ----------------------------------------------------------------------------- RNG state
def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) generator states as tensors and plain numbers."""
    version, internal, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {
            "version": int(version),
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss": gauss,
        },
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    python = state["python"]
    random.setstate((python["version"], tuple(int(v) for v in python["state"]), python["gauss"]))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["name"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def package_versions() -> dict[str, str]:
    """Versions of Python, torch and our packages (for the checkpoint's ``versions`` entry)."""
    versions = {"python": platform.python_version(), "torch": str(torch.__version__)}
    for module in ("virtex_data", "virtex_models", "virtex_train", "torchvision"):
        try:
            versions[module] = str(importlib.import_module(module).__version__)
        except Exception:
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                versions[module] = importlib.metadata.version(module.replace("_", "-"))
    return versions


# ----------------------------------------------------------------------------- files
class CheckpointManager:
    """``DIR/step_0000100.pt`` files, a ``DIR/latest`` pointer and ``DIR/final.pt``.

    Args:
        directory: the run's ``checkpoints`` folder.
        keep_last: how many ``step_*.pt`` files to keep (older ones are deleted after a
            successful save; ``final.pt`` is never deleted).
    """

    def __init__(self, directory: str | os.PathLike[str], keep_last: int = 3) -> None:
        if keep_last < 1:
            raise ValueError(f"train.keep_last must be at least 1, got {keep_last}")
        self.directory = Path(directory)
        self.keep_last = keep_last

    def path_for(self, step: int) -> Path:
        return self.directory / f"step_{step:07d}.pt"

    def steps(self) -> list[int]:
        """Steps of the ``step_*.pt`` files present, ascending."""
        if not self.directory.is_dir():
            return []
        found = (_STEP_FILE.match(p.name) for p in self.directory.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def save(self, checkpoint: Mapping[str, Any], step: int) -> Path:
        """Write ``step_{step}.pt`` atomically, point ``latest`` at it, prune old ones.

        Raises:
            CheckpointError: the write failed; ``latest`` and older files are untouched.
        """
        path = self.path_for(step)
        atomic_save(dict(checkpoint), path)
        atomic_write_text(self.directory / "latest", path.name + "\n")
        for old in self.steps()[: -self.keep_last]:
            with contextlib.suppress(OSError):
                self.path_for(old).unlink()
        return path

    def latest(self) -> Path | None:
        """The checkpoint ``latest`` names, or the newest ``step_*.pt`` if it is missing."""
        pointer = self.directory / "latest"
        if pointer.is_file():
            try:
                name = pointer.read_text(encoding="utf-8").strip()
            except (UnicodeDecodeError, OSError) as error:
                raise CheckpointError(f"{pointer}: unreadable pointer ({error})") from None
            # A pointer names a file of this folder, never a path: "../../x.pt" or "/x.pt"
            # would make --resume read a checkpoint from outside the run.
            if name and (Path(name).name != name or name in (".", "..")):
                raise CheckpointError(
                    f"{pointer} names {name[:100]!r}, which is outside {self.directory}: a "
                    "pointer holds the name of a checkpoint in its own folder (step_NNNNNNN.pt)"
                )
            if name and (self.directory / name).is_file():
                return self.directory / name
        steps = self.steps()
        return self.path_for(steps[-1]) if steps else None

    def finalize(self, path: Path) -> Path:
        """Make ``final.pt`` the same file as ``path`` (hard link; copy where links fail)."""
        return atomic_link(path, self.directory / "final.pt")
