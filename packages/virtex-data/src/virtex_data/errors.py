"""One-line command-line errors, bounded reprs, writable-output and device checks.

Every ``virtex-*`` command group uses :class:`OneLineErrors` as its click ``cls``: an exception
that escapes a command becomes ``Error: <what>, <which file/key>`` on stderr with exit status 1
and no traceback. ``--debug`` (before or after the subcommand: ``virtex-data --debug
build-lmdb ...``) or ``VIRTEX_DEBUG=1`` lets the traceback through instead. ``virtex_train`` and
``virtex_eval`` import this module (the lowest package both depend on); ``virtex_models`` keeps
its own tiny copy of :func:`one_line` because data and models never import each other.
"""

from __future__ import annotations

import errno
import os
import reprlib
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

__all__ = [
    "DEBUG_ENV",
    "OneLineErrors",
    "add_checks",
    "brief",
    "check_device",
    "check_writable",
    "debug_enabled",
    "device_option_callback",
    "output_dir_callback",
    "output_file_callback",
    "one_line",
]

#: Environment variable that shows tracebacks (``VIRTEX_DEBUG=1``).
DEBUG_ENV = "VIRTEX_DEBUG"
#: Longest message printed; a longer one (a huge value in a config, a path list) is cut.
MAX_MESSAGE = 600

_BRIEF = reprlib.Repr()
# Bounded work and output for any value, including a YAML alias bomb's shared lists: depth 3,
# a few items per container, long strings cut in the middle.
_BRIEF.maxlevel = 3
_BRIEF.maxlist = _BRIEF.maxtuple = _BRIEF.maxdict = _BRIEF.maxset = 4
_BRIEF.maxstring = _BRIEF.maxother = _BRIEF.maxlong = 60


#: Exception types that report bad input or a bad environment (files, values, formats); any
#: other type escaping a command is more likely a bug and is printed with its type name.
_EXPECTED = (OSError, ValueError, RuntimeError, LookupError, EOFError, MemoryError)


def brief(value: Any) -> str:
    """A ``repr`` of ``value`` of at most ~80 characters whose cost does not grow with it."""
    text = _BRIEF.repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def debug_enabled() -> bool:
    """``VIRTEX_DEBUG`` is set to something other than ``""``/``0``."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line, naming the file for ``OSError`` s.

    ``OSError`` s print as ``<strerror>: <file>`` (``No space left on device: out.lmdb``); a
    ``UnicodeDecodeError`` as "not UTF-8 text"; exceptions of other types than the usual
    expected ones keep their type name in front (they are likely bugs).
    """
    if isinstance(error, UnicodeDecodeError):
        text = (
            f"not UTF-8 text (byte {error.start}: {error.object[error.start : error.start + 1]!r})"
        )
    elif isinstance(error, OSError) and error.strerror:
        names = [str(n) for n in (error.filename, error.filename2) if n is not None]
        text = error.strerror + (f": {' -> '.join(names)}" if names else "")
        if error.errno == errno.ENOSPC:
            text += " (the disk is full: free space or choose another output)"
    else:
        text = str(error) or type(error).__name__
        if isinstance(error, KeyError) and error.args:
            text = f"missing key {brief(error.args[0])}"
        if not isinstance(error, _EXPECTED):
            text = f"{type(error).__name__}: {text}"
    text = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


class OneLineErrors(click.Group):
    """A click group whose commands' exceptions print as one ``Error:`` line (exit 1).

    Adds a ``--debug`` option to the group (tracebacks, as ``VIRTEX_DEBUG=1`` does), also
    accepted after the subcommand.
    ``click`` errors (usage, ``ClickException``), ``SystemExit`` and ``KeyboardInterrupt`` pass
    through unchanged.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.append(
            click.Option(
                ["--debug"],
                is_flag=True,
                expose_value=False,
                is_eager=True,
                callback=_set_debug,
                help=f"Show tracebacks instead of one-line errors (also {DEBUG_ENV}=1).",
            )
        )

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # --debug is accepted after the subcommand too (`virtex-train pretrain ... --debug`).
        end = args.index("--") if "--" in args else len(args)
        if "--debug" in args[1:end]:
            position = args.index("--debug", 1)
            args = [*args[:position], *args[position + 1 :]]
            ctx.meta[_DEBUG_KEY] = True
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as error:
            if ctx.meta.get(_DEBUG_KEY) or debug_enabled():
                raise
            context = getattr(error, "__notes__", None)
            message = one_line(error)
            if context:
                message = f"{message} ({'; '.join(map(str, context))})"
            if not isinstance(error, _EXPECTED):  # likely a bug: say how to see where
                message += " (unexpected: rerun with --debug for the traceback)"
            raise click.ClickException(message) from None


_DEBUG_KEY = "virtex.debug"  # in ctx.meta: this invocation only, not the process environment


def _set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        ctx.meta[_DEBUG_KEY] = True


def check_writable(path: str | os.PathLike[str], what: str = "output folder") -> Path:
    """Create folder ``path`` if needed and check a file can be created in it, before any work.

    Args:
        path: the folder (for an output file, pass its parent).
        what: how the message names it (``--output-dir``, ``output folder`` ...).

    Raises:
        OSError: the folder cannot be created or written, naming it (``EACCES``, ``EROFS``,
            ``ENOTDIR`` ...).
    """
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        reason = error.strerror or str(error)
        raise OSError(error.errno, f"{what} is not writable ({reason})", str(folder)) from None
    return folder


def check_device(device: str | None, option: str = "--device") -> str | None:
    """Check that ``device`` (``cpu``, ``cuda``, ``cuda:1``, ``mps``, ``auto``/``None``) exists.

    Returns ``device`` unchanged. Raises ``click.ClickException`` (one line) naming the device
    and what this machine has, instead of torch's traceback ending in "Found no NVIDIA driver".
    """
    if device is None or device in ("auto", "cpu"):
        return device
    import torch

    available = _available_devices()
    kind, _, index = device.partition(":")
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count and (not index or (index.isdigit() and int(index) < count)):
            return device
    elif kind == "mps" and "mps" in available:
        return device
    note = "; this torch is a CPU-only build" if torch.version.cuda is None else ""
    raise click.ClickException(
        f"{option} {device}: not available on this machine (available: "
        f"{', '.join(available)}{note})"
    )


def _available_devices() -> Sequence[str]:
    import torch

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


def output_file_callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """``callback=`` for output-file options: the file's folder must be writable, at parse time
    (before a model is loaded or any image is read)."""
    if value is not None and value != "-":
        check_writable(Path(value).absolute().parent, f"folder of {param.opts[-1]} {value}")
    return value


def output_dir_callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """``callback=`` for output-folder options: created if needed and writable, at parse time."""
    if value is not None:
        check_writable(value, f"{param.opts[-1]} {value}")
    return value


#: Option names :func:`add_checks` recognises.
_OUTPUT_FILES = ("output", "out", "metrics_path", "per_image_path", "predictions_path", "save")
_OUTPUT_DIRS = ("output_dir",)


def add_checks(command: click.Command) -> click.Command:
    """Give ``command``'s ``--device`` and output options their parse-time checks.

    ``--device``: :func:`check_device`; ``--output``/``--out``: the folder is writable;
    ``--output-dir``: created and writable. Options that have a callback keep it. Applied by each
    package's command group to every command it registers, so the commands need not repeat it.
    """
    for param in command.params:
        if not isinstance(param, click.Option) or param.callback is not None:
            continue
        if param.name == "device":
            param.callback = device_option_callback
        elif param.name in _OUTPUT_FILES:
            param.callback = output_file_callback
        elif param.name in _OUTPUT_DIRS:
            param.callback = output_dir_callback
    return command


def device_option_callback(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> str | None:
    """``callback=`` for ``--device`` options: :func:`check_device` at parse time."""
    return check_device(value, option="--device")
