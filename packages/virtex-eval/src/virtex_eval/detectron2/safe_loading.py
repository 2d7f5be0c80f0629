"""Reading detectron2 configs and weights without running code from the files.

detectron2 would run code from two kinds of input file: its YAML loader falls back to
``yaml.unsafe_load`` when a file has a Python tag (``!!python/object/apply:os.system``), and its
checkpointer ``pickle.load``\\ s ``.pkl`` weights, which runs any ``__reduce__`` payload. Here:

- :func:`read_config_chain` parses a config and every ``_BASE_`` file it names with
  ``yaml.SafeLoader`` only, refusing tags, aliases (exponential expansion), remote and circular
  bases; the runner calls it before detectron2 sees the file, and detectron2 itself then gets
  ``allow_unsafe=False``.
- :func:`read_pickled_weights` reads a ``.pkl`` with an unpickler that admits only numpy arrays,
  numpy dtypes/scalars and plain containers (what detectron2's and Detectron's published model-zoo
  pickles hold); anything else is refused before it is built.
- :func:`load_weights_file` is what the runner's checkpointers use in place of detectron2's
  ``_load_file``: ``.pkl`` through the restricted unpickler, everything else through
  ``torch.load(weights_only=True)`` (whatever torch's default).

None of this imports detectron2.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

__all__ = [
    "UnsafeFileError",
    "detectron2_checkpoint",
    "load_weights_file",
    "read_config_chain",
    "read_pickled_weights",
]

#: ``_BASE_`` chains deeper than this are refused (detectron2's own configs use 1-2 levels).
MAX_BASE_DEPTH = 16

#: The globals a detectron2 / Detectron weight pickle may name: how numpy pickles an array
#: (``_reconstruct`` + ``ndarray`` + ``dtype``; ``_frombuffer`` at protocol 5; ``scalar`` for
#: numpy scalars; ``_codecs.encode`` for the raw bytes under protocol 2 written by Python 3) under
#: numpy 1 and 2 module names, and ``OrderedDict``. None of them runs anything but building that
#: value.
_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
        ("collections", "OrderedDict"),
    }
)


class UnsafeFileError(ValueError):
    """A config or weights file refused because reading it could run code (names the file)."""


# ----------------------------------------------------------------------------- configs
def _safe_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"detectron2 config {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: cannot read the detectron2 config ({error})") from None
    try:
        # Aliases first: a few hundred bytes of nested aliases expand to gigabytes when detectron2
        # merges (deep-copies) the result. Its configs never use them.
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                mark = event.start_mark
                line = f" line {mark.line + 1}" if mark is not None else ""
                raise ValueError(f"{path}:{line}: YAML aliases (*name) are not accepted")
        return yaml.load(text, Loader=yaml.SafeLoader)
    except yaml.constructor.ConstructorError as error:
        raise UnsafeFileError(
            f"{path}: refused: the YAML asks to construct a Python object "
            f"({error.problem or error}); detectron2 configs are plain YAML"
        ) from None
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({error})") from None


def _base_path(base: Any, child: Path) -> Path:
    if not isinstance(base, str) or not base:
        raise ValueError(f"{child}: _BASE_ must be a file path, got {type(base).__name__}")
    if "://" in base:
        raise ValueError(f"{child}: _BASE_ {base!r} is remote; download it and name the file")
    path = Path(base).expanduser()
    # As detectron2: a relative base is relative to the file that names it.
    return path if path.is_absolute() else child.parent / path


def read_config_chain(path: str | os.PathLike[str]) -> list[Path]:
    """Parse a detectron2 YAML and its ``_BASE_`` files safely; returns the chain, root first.

    Raises:
        UnsafeFileError: a file in the chain has a Python tag (naming the file).
        FileNotFoundError: the file or a base does not exist.
        ValueError: invalid YAML, aliases, a non-mapping file, a remote, circular or too deep
            ``_BASE_`` chain, naming the file.
    """
    chain: list[Path] = []
    current: Path | None = Path(path)
    while current is not None:
        resolved = current.resolve()
        if resolved in chain:
            raise ValueError(f"{current}: circular _BASE_ chain")
        if len(chain) >= MAX_BASE_DEPTH:
            raise ValueError(f"{path}: _BASE_ chain deeper than {MAX_BASE_DEPTH} files")
        if not resolved.is_file():
            what = "config" if not chain else f"_BASE_ of {chain[-1]}"
            raise FileNotFoundError(f"detectron2 {what} {current} does not exist")
        data = _safe_yaml(current)
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ValueError(f"{current}: a detectron2 config is a mapping of keys")
        chain.append(resolved)
        base = data.get("_BASE_")
        current = _base_path(base, current) if base is not None else None
    return chain[::-1]


# ----------------------------------------------------------------------------- weights
class _WeightsUnpickler(pickle.Unpickler):
    def __init__(self, handle: io.BufferedIOBase, source: Path) -> None:
        # latin1: Python 2 pickles (Detectron / Caffe2) store numpy buffers as 8-bit strings.
        super().__init__(handle, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise UnsafeFileError(
                f"{self.source}: refused: the pickle names {module}.{name}; weight .pkl files "
                "may hold only numpy arrays and plain containers (convert other checkpoints "
                "to a .pth state dict)"
            )
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeFileError(
            f"{self.source}: refused: the pickle uses persistent ids (a torch pickle?); "
            "give torch checkpoints as .pth"
        )


_PLAIN = (str, bytes, int, float, bool, type(None))


def _check_plain(value: Any, source: Path, where: str, depth: int = 0) -> None:
    if depth > 32:
        raise ValueError(f"{source}: nesting deeper than 32 levels at {where}")
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise ValueError(f"{source}: {where} is an object array; only numeric arrays load")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, _PLAIN):
                raise ValueError(f"{source}: {where} has a {type(key).__name__} key")
            _check_plain(item, source, f"{where}[{key!r}]", depth + 1)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_plain(item, source, f"{where}[{index}]", depth + 1)
    elif not isinstance(value, (*_PLAIN, np.generic)):
        raise ValueError(f"{source}: {where} is a {type(value).__name__}")


def read_pickled_weights(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The content of a ``.pkl`` weights file, read without running code from it.

    Only numpy arrays (numeric dtypes), numpy scalars, ``str``/``bytes``/numbers/``None`` and
    dict/list/tuple/``OrderedDict`` are built; any other class, ``__reduce__`` callable or
    persistent id in the pickle is refused before it is constructed.

    Raises:
        UnsafeFileError: the pickle names something else (the file and the name).
        ValueError: not a pickle, truncated, or not a dict at the top.
        FileNotFoundError: no such file.
    """
    source = Path(path)
    try:
        with source.open("rb") as handle:
            data = _WeightsUnpickler(handle, source).load()
    except FileNotFoundError:
        raise FileNotFoundError(f"weights file {source} does not exist") from None
    except UnsafeFileError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise ValueError(f"{source}: not a readable weights pickle ({error})") from None
    except (IndexError, KeyError, MemoryError, OverflowError, UnicodeDecodeError) as error:
        raise ValueError(f"{source}: not a readable weights pickle ({error!r})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{source}: a weights pickle holds a dict, got {type(data).__name__}")
    _check_plain(data, source, "the file")
    return data


def detectron2_checkpoint(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    """What detectron2's checkpointer makes of a ``.pkl``'s content (its two model-zoo formats).

    detectron2 model zoo: ``{"model": {name: array}, "__author__": ...}`` as it is. Detectron /
    Caffe2: the arrays (under ``"blobs"`` for detection models) without ``*_momentum`` and with
    ``"__author__": "Caffe2"`` (detectron2 then renames Caffe2 names). Every weight must be an
    array (detectron2 refuses anything else later, less clearly).

    Raises:
        ValueError: a weight that is not an array, naming the key.
    """
    if "model" in data and "__author__" in data:
        checkpoint = dict(data)
        model = checkpoint["model"]
    else:
        model = data.get("blobs", data)
        if not isinstance(model, Mapping):
            raise ValueError(f"{source}: 'blobs' is not a mapping of weights")
        model = {k: v for k, v in model.items() if not str(k).endswith("_momentum")}
        checkpoint = {"model": model, "__author__": "Caffe2", "matching_heuristics": True}
    if not isinstance(model, Mapping):
        raise ValueError(f"{source}: 'model' is not a mapping of weights")
    for key, value in model.items():
        if not isinstance(value, np.ndarray | torch.Tensor):
            raise ValueError(f"{source}: weight {key!r} is a {type(value).__name__}, not an array")
    return checkpoint


def load_weights_file(filename: str) -> dict[str, Any]:
    """A safe stand-in for ``DetectionCheckpointer._load_file`` (same results, no code run).

    ``.pkl``: :func:`read_pickled_weights` then :func:`detectron2_checkpoint`. Anything else
    (``.pth``, detectron2's own checkpoints): ``torch.load(weights_only=True)``, wrapped as
    ``{"model": ...}`` with ``matching_heuristics`` as detectron2 does.
    """
    if filename.endswith(".pkl"):
        return detectron2_checkpoint(read_pickled_weights(filename), filename)
    try:
        loaded = torch.load(filename, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's message advises weights_only=False, which is exactly what must not be done:
        # keep only the line that names what was rejected.
        lines = [line.strip() for line in str(error).splitlines()]
        named = next((line for line in lines if "Unsupported" in line), "")
        raise UnsafeFileError(
            f"{filename}: refused: not a plain weights file ({named or 'it holds objects'}); "
            "weights files hold tensors and plain containers only"
        ) from None
    if not isinstance(loaded, dict):
        raise ValueError(f"{filename}: a checkpoint holds a dict, got {type(loaded).__name__}")
    if "model" not in loaded:
        loaded = {"model": loaded}
    loaded["matching_heuristics"] = True
    return loaded
